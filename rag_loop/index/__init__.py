"""Embedders (embedders), the Chroma vector store (chroma), index versions (versions)."""
