"""The dev data ``select`` chooses on, split into a choosing half and a held-out half (seeded).

Three kinds: STS pairs with gold scores (split by pair), a BEIR folder (split by query; every document is a
candidate answer), or a plain corpus without labels. For a corpus, one sentence of each document is its pseudo
query (seeded), and by default (``reference="source"``) the document it came from is the relevant one, encoded
with that sentence taken out (the inverse cloze task: finding a passage's context, which no model solves by
matching the sentence itself); ``reference="concat"`` instead keeps the documents whole and takes the top 10 of
the candidates' equal-weight concatenation as relevant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hub_export.data import (
    MIN_SENTENCE_WORDS,
    corpus_documents,
    document_text,
    load_beir,
    load_sts,
    split_sentences,
)
from hub_export.folder import file_sha256

KINDS = ("sts", "beir", "corpus")
REFERENCES = ("source", "concat")  # a corpus' pseudo relevance: each sentence's own document, or the consensus


@dataclass
class DevSet:
    """Texts to encode and how to score them; ``choose`` / ``held_out`` index the units (pairs or queries)."""

    kind: str
    name: str
    identity: dict
    documents: list[str] = field(default_factory=list)  # beir / corpus: every candidate answer
    queries: list[str] = field(default_factory=list)  # beir / corpus: the questions (pseudo queries for corpus)
    first: list[str] = field(default_factory=list)  # sts: the pairs
    second: list[str] = field(default_factory=list)
    gold: np.ndarray | None = None  # sts: the pairs' scores
    relevant: list[set[int]] = field(default_factory=list)  # beir / corpus-source: each query's relevant documents
    reference: str | None = None  # corpus: "source" or "concat" (REFERENCES)
    choose: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    held_out: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    @property
    def units(self) -> int:
        """How many pairs (sts) or queries (beir, corpus) there are."""
        return len(self.first) if self.kind == "sts" else len(self.queries)


def check_holdout(holdout: float) -> float:
    """Refuse a held-out share outside (0, 1)."""
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise ValueError(f"holdout = {holdout!r}: expected a share strictly between 0 and 1, e.g. 0.5")
    if not math.isfinite(holdout):
        raise ValueError(f"holdout = {holdout!r}: expected a share strictly between 0 and 1, e.g. 0.5")
    return float(holdout)


def split(units: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``units`` into (choosing, held-out) index arrays, each non-empty."""
    order = np.random.default_rng(seed).permutation(units)
    held = min(units - 1, max(1, round(units * holdout)))
    return np.sort(order[held:]), np.sort(order[:held])


def cloze(path: str, limit: int | None, seed: int, whole: bool = False) -> tuple[list[str], list[str], list[set[int]]]:
    """Documents, one pseudo query per document that has a sentence of six words or more (drawn with ``seed``),
    and each query's relevant document: its own, with the sentence taken out (kept in with ``whole``)."""
    rng = np.random.default_rng(seed)
    documents, queries, relevant = [], [], []
    for doc in corpus_documents(path, limit):
        pieces = split_sentences(doc["text"])
        usable = [i for i, piece in enumerate(pieces) if len(piece.split()) >= MIN_SENTENCE_WORDS]
        if usable:
            chosen = usable[int(rng.integers(len(usable)))]
            queries.append(pieces[chosen])
            relevant.append({len(documents)})
            if not whole:
                doc = doc | {"text": " ".join(piece for i, piece in enumerate(pieces) if i != chosen)}
        documents.append(document_text(doc))
    if not documents:
        raise ValueError(f"{path}: no texts found")
    return documents, queries, relevant


def load_devset(
    sts: str | None = None,
    beir: str | None = None,
    corpus: str | None = None,
    limit: int | None = None,
    holdout: float = 0.5,
    seed: int = 0,
    reference: str = "source",
) -> DevSet:
    """Read exactly one of ``sts`` / ``beir`` / ``corpus`` and split it.

    Raises:
        ValueError: If not exactly one is given, the data has fewer than 2 usable pairs or queries, or as the
            readers (file and line named).
    """
    holdout = check_holdout(holdout)
    given = [(kind, path) for kind, path in zip(KINDS, (sts, beir, corpus)) if path]
    if len(given) != 1:
        raise ValueError("give exactly one of sts (pairs with scores), beir (a folder) or corpus (texts, no labels)")
    kind, path = given[0]
    if kind == "sts":
        first, second, gold = load_sts(path, limit)
        data = DevSet(kind, Path(path).name, {"sts": file_sha256(path)}, first=first, second=second, gold=gold)
    elif kind == "beir":
        docs, queries, qrels = load_beir(path, max_queries=limit)
        ids = list(docs)
        position = {doc_id: i for i, doc_id in enumerate(ids)}
        asked = [q for q in queries if any(d in position and score > 0 for d, score in qrels[q].items())]
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        data = DevSet(
            kind,
            Path(path).name,
            {f.relative_to(path).as_posix(): file_sha256(f) for f in files},
            documents=[document_text(docs[d]) for d in ids],
            queries=[queries[q] for q in asked],
            relevant=[{position[d] for d, score in qrels[q].items() if d in position and score > 0} for q in asked],
        )
    else:
        if reference not in REFERENCES:
            raise ValueError(f"reference = {reference!r}: expected one of {list(REFERENCES)}")
        documents, queries, relevant = cloze(path, limit, seed, whole=reference == "concat")
        identity = {"corpus": file_sha256(path), "seed": seed, "reference": reference}
        data = DevSet(kind, Path(path).name, identity, documents=documents, queries=queries, reference=reference)
        data.relevant = relevant if reference == "source" else []
    if data.units < 2:
        what = "pairs" if kind == "sts" else "queries with a relevant document" if kind == "beir" else "sentences"
        raise ValueError(f"{path}: {data.units} usable {what}; select needs at least 2 (half are held out)")
    data.identity |= {"kind": kind, "limit": limit}  # what the vectors depend on (the split does not)
    data.choose, data.held_out = split(data.units, holdout, seed)
    return data
