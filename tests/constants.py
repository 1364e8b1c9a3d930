"""Constants the tests share: the query prompt of the test models and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

QUERY_PROMPT = "Represent this sentence for searching relevant passages: "
# ../shared/data beside the checkout, unless CONCAT_EMBED_DATA points elsewhere.
DATA = Path(os.environ.get("CONCAT_EMBED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
