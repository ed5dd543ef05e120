"""The crop branch: a network that names the one sign of a crop and boxes it (the notebook's task).
Its model and losses, augmentation and batches, the training loop (one process or torchrun's ranks),
the checkpoint file, evaluation, the ONNX export and the PyTorch backend serving runs a `.pt` with."""
