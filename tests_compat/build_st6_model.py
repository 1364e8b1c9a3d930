"""Build a tiny model under sentence-transformers 6 and save its query embeddings (for the compat run)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub_export.publish.build import PartOptions, build_model  # noqa: E402
from tests.tiny_models import make_tiny_bert  # noqa: E402

TEXTS = ["what is snowflake?", "Snowflake is a cloud data platform.", ""]

if __name__ == "__main__":
    from sentence_transformers import SentenceTransformer

    root = Path(sys.argv[1])
    a, b = make_tiny_bert(root / "a", 32, "a", 1), make_tiny_bert(root / "b", 40, "b", 3)
    parts = [PartOptions("a", str(a)), PartOptions("b", str(b), pooling="mean", prompts={"query": "find: "})]
    folder = build_model(parts, root / "model", prompts={"query": "Represent this sentence for searching: "})
    model = SentenceTransformer(str(folder), trust_remote_code=True)
    np.save(root / "reference_query.npy", model.encode_query(TEXTS))
    sys.stdout.write(f"{folder}\n")
