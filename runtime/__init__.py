"""The torch-free runtime: decoding, preprocessing, ONNX sessions, the encoders and their
artifacts, and the small file helpers (atomic writes, progress) every layer above uses."""
