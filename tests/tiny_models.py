"""Tiny random BERT models and an independent plain-transformers reference for the tests."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a is what of to and in for on snow flake ##flake ##s ##ing ##ed search query passage represent "
    "this sentence relevant passages document cat dog sat mat fox jump over lazy quick brown hello world "
    "model embed ##ding ##dings vector text long short : ? . , ! é ü 日 本"
).split()
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


def make_tokenizer(variant: str) -> BertTokenizerFast:
    """Two different WordPiece vocabularies: ``"a"`` (lower-cased) and ``"b"`` (cased, reordered, larger)."""
    if variant == "a":
        tokens = SPECIAL + WORDS + CHARS
        lower = True
    elif variant == "b":
        tokens = SPECIAL + CHARS[::-1] + WORDS[::-1] + [w.capitalize() for w in WORDS if w.isalpha()]
        lower = False
    else:
        raise ValueError(f"unknown tokenizer variant {variant!r}; valid: 'a', 'b'")
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizerFast(vocab=vocab, do_lower_case=lower, model_max_length=64)


def make_tiny_bert(path: Path, hidden: int, tokenizer: str, seed: int) -> Path:
    """Save a randomly initialised BERT (2 layers) with its tokenizer as a plain transformers folder."""
    tok = make_tokenizer(tokenizer)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(config, add_pooling_layer=False).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def reference_part(
    path: Path,
    texts: list[str],
    pooling: str,
    prompt: str = "",
    max_length: int = 64,
    truncate_dim: int | None = None,
    weight: float = 1.0,
) -> torch.Tensor:
    """One part's embedding computed with plain transformers: pool, normalize, truncate, weight."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(
        [prompt + t for t in texts], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.inference_mode():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
    if pooling == "cls":
        pooled = tokens[:, 0]
    elif pooling == "mean":
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    elif pooling == "lasttoken":
        last = batch["attention_mask"].sum(1) - 1
        pooled = tokens[torch.arange(tokens.shape[0]), last]
    else:
        raise ValueError(f"reference has no pooling {pooling!r}; valid: cls, mean, lasttoken")
    pooled = F.normalize(pooled, dim=-1)
    if truncate_dim is not None:
        pooled = F.normalize(pooled[:, :truncate_dim], dim=-1)
    return pooled * weight


def built_model_reference(tiny_parts: dict[str, Path], texts: list[str], query: bool) -> torch.Tensor:
    """The expected output of the conftest ``built_model`` (alpha cls, beta mean/16d/0.5/own prompt, gamma
    lasttoken/32 tokens), from plain transformers."""
    from tests.constants import QUERY_PROMPT

    prompt = QUERY_PROMPT if query else ""
    return torch.cat(
        [
            reference_part(tiny_parts["a"], texts, "cls", prompt),
            reference_part(tiny_parts["b"], texts, "mean", "find: " if query else "", truncate_dim=16, weight=0.5),
            reference_part(tiny_parts["a2"], texts, "lasttoken", prompt, max_length=32),
        ],
        dim=-1,
    )
