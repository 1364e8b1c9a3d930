"""Distillation: one plain sentence-transformers model trained to reproduce a combined model's vectors.

The student loads anywhere (no ``trust_remote_code``; Text Embeddings Inference reads its modules) and runs at
the cost of one part. :func:`distill_model` is the API behind ``concat-embed distill``.
"""

from hub_export.distill.train import DistillOptions, distill_model

__all__ = ["DistillOptions", "distill_model"]
