"""Per-category FAISS indexes of product embeddings, versioned on disk."""
