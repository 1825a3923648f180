"""The HTTP service: FastAPI app over the ONNX encoders and the FAISS indexes (no torch)."""
