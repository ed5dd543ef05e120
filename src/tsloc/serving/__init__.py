"""Running trained models: one place that turns any model file into a callable (`backend`), predict
on crops, detect on street frames (`find`, `namer`, `detect`), the Python API (`tsloc.load`), the
HTTP server and its page, and the ready models shipped in the package. No module here imports
torch at import time: ONNX files run on ONNX Runtime alone."""
