"""Turn a part source (a sentence-transformers folder or a plain transformers folder) into a pipeline."""

from __future__ import annotations

import logging
from pathlib import Path

from sentence_transformers import SentenceTransformer
from torch import nn

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
except ImportError:  # sentence-transformers 5.x
    from sentence_transformers.models import Normalize, Pooling, Transformer

from hub_export.modeling import POOLING_MODES, embedding_dimension_of, pooling_mode_of

logger = logging.getLogger(__name__)


def load_source(path: str | Path, pooling: str | None = None, trust_remote_code: bool = False) -> nn.Sequential:
    """Load a part as Transformer + Pooling (+ Dense...) + Normalize.

    A sentence-transformers folder (with ``modules.json``) keeps its own pooling and dense
    layers and gets a Normalize appended if it lacks one. A plain transformers folder (with
    ``config.json``) gets ``pooling`` (default ``cls``) and a Normalize.

    Args:
        path: The local folder.
        pooling: Pooling mode for a plain transformers folder; for a sentence-transformers
            folder it must match the folder's own pooling when given.
        trust_remote_code: Let the folder's own code (``auto_map``) run; off unless asked for.

    Raises:
        ValueError: If the folder is neither kind, the pooling is unknown or conflicts, or the
            pipeline has modules a part cannot hold.
    """
    path = Path(path)
    if pooling is not None and pooling not in POOLING_MODES:
        raise ValueError(f"{path}: unknown pooling {pooling!r}; valid modes: {list(POOLING_MODES)}")
    if (path / "modules.json").is_file():
        modules = list(SentenceTransformer(str(path), device="cpu", trust_remote_code=trust_remote_code))
        names = [type(module).__name__ for module in modules]
        if len(modules) < 2 or names[0] != "Transformer" or names[1] != "Pooling":
            raise ValueError(f"{path}/modules.json: a part must start with Transformer, Pooling; got {names}")
        if unsupported := [name for name in names[2:] if name not in ("Dense", "Normalize")]:
            raise ValueError(
                f"{path}/modules.json: unsupported modules {unsupported}; allowed after Pooling: Dense, Normalize"
            )
        mode = pooling_mode_of(modules[1])
        if pooling is not None and pooling != mode:
            raise ValueError(f"{path}: --pooling {pooling!r} conflicts with the folder's own pooling {mode!r}")
        modules = [module for module in modules if not isinstance(module, Normalize)] + [Normalize()]
        return nn.Sequential(*modules)
    if (path / "config.json").is_file():
        transformer = Transformer.load(str(path), trust_remote_code=trust_remote_code)
        mode = pooling or "cls"
        return nn.Sequential(transformer, Pooling(embedding_dimension_of(transformer), pooling_mode=mode), Normalize())
    raise ValueError(f"{path}: not a model folder (no modules.json or config.json)")
