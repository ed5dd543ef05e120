"""The scene branch: camera frames with any number of signs (GTSDB, a manifest of frames,
synthetic street scenes), read into one box table, split by frame, and the detector that finds
the signs for the crop model to name."""
