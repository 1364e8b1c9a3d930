"""Build, verify and publish sentence-transformers models that concatenate normalized embeddings."""

__version__ = "0.1.0"
