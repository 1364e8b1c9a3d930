"""Readers of the data files the commands take: JSON lines, plain text, STS-B TSV and BEIR folders.

Everything read is untrusted: a bad file raises ``ValueError`` naming the file, the line and what
was expected. Gzipped files (``.gz``) are read transparently; truncated or corrupt gzip data is
reported as such. :func:`iter_records` is the lenient reader of ``embed``: it turns a bad line
into a record marked invalid (so the job can reject that line) instead of failing.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
INVALID = "__invalid__"  # key of the record iter_records yields for a line it could not read
PSEUDO_QUERY_SOURCES = ("sentences", "titles", "none")  # what of a corpus can stand in for its queries
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MIN_SENTENCE_WORDS = 6  # shorter pieces (headings, "Results.", numbers) are not query-like


def open_binary(path: str | Path) -> BinaryIO:
    """Open a file for reading bytes, gunzipping ``.gz`` files."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, None)`` for each non-blank line; ``(line number, None, reason)`` for a non-UTF-8 one.

    Raises:
        ValueError: If the file is truncated or corrupt gzip data.
    """
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    number = 0
    try:
        with open_binary(path) as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    reason = (
                        f"line {number}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})"
                    )
                    yield number, None, reason
                    continue
                if text.strip():
                    yield number, text, None
    except GZIP_ERRORS as error:
        detail = str(error) or type(error).__name__
        raise ValueError(f"{path}: truncated or corrupt gzip data after line {number} ({detail})") from None


def iter_records(path: str | Path) -> Iterator[Any]:
    """Decoded records of a JSON-lines (optionally gzipped) or Parquet file, in order.

    A line that is not UTF-8 or not JSON yields ``{INVALID: "line N: ..."}`` instead of a record.
    """
    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
        return
    for number, text, reason in iter_lines(path):
        if reason is not None:
            yield {INVALID: reason}
            continue
        try:
            yield json.loads(text)
        except json.JSONDecodeError as error:
            yield {INVALID: f"line {number}: invalid JSON at column {error.colno} ({error.msg})"}


def count_records(path: str | Path) -> int:
    """Number of records (non-blank lines, or Parquet rows), for a progress bar's total."""
    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return sum(1 for _ in iter_lines(path))


def numbered_objects(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every line of a ``.jsonl`` or ``.jsonl.gz`` file.

    Raises:
        ValueError: Naming the file and line of the first line that is not a UTF-8 JSON object.
    """
    records = []
    for number, text, reason in iter_lines(path):
        if reason is not None:
            raise ValueError(f"{path}: {reason}")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {number}: invalid JSON at column {error.colno} ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    return records


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All JSON objects of a ``.jsonl`` or ``.jsonl.gz`` file (errors as :func:`numbered_objects`)."""
    return [record for _, record in numbered_objects(path)]


def document_text(doc: dict[str, Any]) -> str:
    """``title text`` of a BEIR document, as mteb joins them."""
    return f"{doc.get('title') or ''} {doc['text']}".strip()


def checked_documents(path: str | Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file, each with string ``fields`` (``title`` a string or absent).

    Raises:
        ValueError: Naming the file, line and field of the first record that lacks one.
    """
    docs = []
    for number, doc in numbered_objects(path):
        for name in fields:
            if not isinstance(doc.get(name), str):
                found = "missing" if name not in doc else type(doc[name]).__name__
                raise ValueError(f"{path}: line {number}: field {name!r} must be a string ({found})")
        if doc.get("title") is not None and not isinstance(doc["title"], str):
            raise ValueError(f"{path}: line {number}: field 'title' must be a string or absent")
        docs.append(doc)
    return docs


def corpus_documents(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` documents of a corpus file (0 or None: all), as JSON objects.

    A JSON-lines file gives its objects (each with a string ``text``, ``title`` a string or
    absent); any other file gives ``{"text": line}`` for each non-blank line.

    Raises:
        ValueError: For a missing file or a bad line (named).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"corpus {str(path)!r} is not a file")
    if ".jsonl" in path.name:
        docs = checked_documents(path, ("text",))
    else:
        docs = []
        for _, text, reason in iter_lines(path):
            if reason is not None:
                raise ValueError(f"{path}: {reason}")
            docs.append({"text": text.strip()})
    return docs[:limit] if limit else docs


def read_corpus_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Texts of a corpus file (``title text`` for JSON lines; see :func:`corpus_documents`).

    Raises:
        ValueError: For a missing file, a bad line (named), or a file without any text.
    """
    texts = [document_text(doc) for doc in corpus_documents(path, limit)]
    if not texts:
        raise ValueError(f"{path}: no texts found")
    return texts


def read_corpus_titles(path: str | Path, limit: int | None = None, exclude: Collection[int] = ()) -> list[str]:
    """The non-empty titles among the first ``limit`` documents of a corpus ([] for plain text), but for the
    documents at the positions in ``exclude``.

    Raises:
        ValueError: As :func:`corpus_documents`.
    """
    return [title for _, title in _titles(path, limit, exclude)]


def _titles(path: str | Path, limit: int | None, exclude: Collection[int]) -> list[tuple[int, str]]:
    """:func:`read_corpus_titles` with each title's document position."""
    exclude = set(exclude)
    return [
        (position, title)
        for position, doc in enumerate(corpus_documents(path, limit))
        if position not in exclude and (title := (doc.get("title") or "").strip())
    ]


def split_sentences(text: str) -> list[str]:
    """A text's pieces, split after ``.``, ``!`` or ``?`` followed by white space (each kept as written)."""
    return SENTENCE_END.split(text.strip())


def read_corpus_sentences(
    path: str | Path,
    limit: int | None = None,
    seed: int = 0,
    per_document: int | None = None,
    exclude: Collection[int] = (),
) -> list[str]:
    """The sentences of the first ``limit`` documents of a corpus: all of them, or ``per_document`` drawn from each.

    A document's body (a JSON line's ``text``, not its title; or a plain line) is split after
    ``.``, ``!`` or ``?`` followed by white space; pieces under six words are passed over, and a
    document without a longer one gives none. Single sentences of the corpus look like the claims
    and questions users type, and every corpus has them (titles are often missing). With
    ``per_document`` (>= 1), a document with more sentences gives that many, drawn with ``seed``
    and kept in their order; ``None`` keeps them all (no draw). Documents at the positions in
    ``exclude`` give none (texts held out of a training set keep their sentences out too).

    Raises:
        ValueError: As :func:`corpus_documents`, or for ``per_document`` below 1.
    """
    return [sentence for _, sentence in _sentences(path, limit, seed, per_document, exclude)]


def _sentences(
    path: str | Path, limit: int | None, seed: int, per_document: int | None, exclude: Collection[int]
) -> list[tuple[int, str]]:
    """:func:`read_corpus_sentences` with each sentence's document position."""
    if per_document is not None and (isinstance(per_document, bool) or per_document < 1):
        raise ValueError(f"sentences per document {per_document!r}: give an integer >= 1, or None for all")
    rng = np.random.default_rng(seed)
    sentences, exclude = [], set(exclude)
    for position, doc in enumerate(corpus_documents(path, limit)):
        if position in exclude:
            continue
        pieces = [piece for piece in split_sentences(doc["text"]) if len(piece.split()) >= MIN_SENTENCE_WORDS]
        if per_document == 1 and pieces:
            chosen = [pieces[int(rng.integers(len(pieces)))]]  # the draw of the one-per-document default
        elif per_document is not None and len(pieces) > per_document:
            chosen = [pieces[i] for i in sorted(rng.choice(len(pieces), per_document, replace=False))]
        else:
            chosen = pieces
        sentences.extend((position, piece) for piece in chosen)
    return sentences


def check_pseudo_queries(source: str) -> None:
    """Refuse a ``source`` that is not one of :data:`PSEUDO_QUERY_SOURCES` (the valid ones listed)."""
    if source not in PSEUDO_QUERY_SOURCES:
        raise ValueError(f"unknown pseudo_queries {source!r}; valid: {list(PSEUDO_QUERY_SOURCES)}")


def pseudo_query_sources(
    path: str | Path,
    source: str,
    limit: int | None = None,
    seed: int = 0,
    per_document: int | None = None,
    exclude: Collection[int] = (),
) -> list[tuple[int, str]]:
    """The texts of a corpus that stand in for its queries, each with the position of the document it comes from:
    ``source`` is one of :data:`PSEUDO_QUERY_SOURCES`.

    ``per_document`` applies to ``sentences`` (see :func:`read_corpus_sentences`); documents at the positions in
    ``exclude`` give none.

    Raises:
        ValueError: For an unknown source, or as the readers above.
    """
    check_pseudo_queries(source)
    if source == "sentences":
        return _sentences(path, limit, seed, per_document, exclude)
    return _titles(path, limit, exclude) if source == "titles" else []


def load_sts(path: str | Path, limit: int | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """Read an STS-B style ``score<TAB>sentence1<TAB>sentence2`` file with a header (gzip or plain).

    Raises:
        ValueError: For a missing header column, a row without both sentences or a finite score
            (file and line named), or a file without pairs.
    """
    lines = []
    for number, text, reason in iter_lines(path):
        if reason is not None:
            raise ValueError(f"{path}: {reason}")
        lines.append((number, text))
    if not lines:
        raise ValueError(f"{path}: no sentence pairs (empty file)")
    reader = csv.DictReader(io.StringIO("".join(text for _, text in lines)), delimiter="\t", quoting=csv.QUOTE_NONE)
    required = ["score", "sentence1", "sentence2"]
    if missing := [name for name in required if name not in (reader.fieldnames or [])]:
        raise ValueError(f"{path}: header lacks {missing}; expected tab-separated columns {required}")
    first, second, scores = [], [], []
    for (number, _), row in zip(lines[1:], reader):
        try:
            score = float(row["score"])
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score) or not isinstance(row["sentence1"], str) or not isinstance(row["sentence2"], str):
            raise ValueError(f"{path}: line {number}: expected a finite score and two sentences separated by tabs")
        first.append(row["sentence1"])
        second.append(row["sentence2"])
        scores.append(score)
    if not scores:
        raise ValueError(f"{path}: no sentence pairs (only a header)")
    if limit:
        first, second, scores = first[:limit], second[:limit], scores[:limit]
    return first, second, np.array(scores)


def _one_file(folder: Path, stem: str) -> Path:
    found = sorted(folder.glob(f"{stem}.jsonl*"))
    if not found:
        raise ValueError(f"{folder}: no {stem}.jsonl[.gz]; expected a BEIR folder (corpus, queries, qrels/test.tsv)")
    return found[0]


def load_beir(
    folder: str | Path, split: str = "test", max_queries: int | None = None, max_docs: int | None = None
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """Read a BEIR folder: ``(corpus {id: {"title", "text"}}, queries {id: text}, qrels {qid: {did: score}})``.

    ``max_queries`` keeps the first queries of the split; ``max_docs`` keeps their relevant
    documents plus the first other documents up to that many.

    Raises:
        ValueError: For a missing file, a malformed line (file and line named), or an empty
            corpus, query set or qrels.
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise ValueError(f"{folder}: no qrels/{split}.tsv; expected a BEIR folder (corpus, queries, qrels/{split}.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8", errors="strict") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if missing := [c for c in ("query-id", "corpus-id", "score") if c not in (reader.fieldnames or [])]:
            raise ValueError(f"{qrels_path}: header lacks {missing}; expected query-id, corpus-id, score")
        for number, row in enumerate(reader, 2):
            try:
                score = int(row["score"])
            except (TypeError, ValueError):
                raise ValueError(f"{qrels_path}: line {number}: score {row['score']!r} is not an integer") from None
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = score
    if not qrels:
        raise ValueError(f"{qrels_path}: no relevance judgements")
    if max_queries:
        qrels = dict(list(qrels.items())[:max_queries])
    queries_path, corpus_path = _one_file(folder, "queries"), _one_file(folder, "corpus")
    queries = {q["_id"]: q["text"] for q in checked_documents(queries_path, ("_id", "text")) if q["_id"] in qrels}
    if not queries:
        raise ValueError(f"{queries_path}: none of the queries in qrels/{split}.tsv is present")
    docs = checked_documents(corpus_path, ("_id", "text"))
    if not docs:
        raise ValueError(f"{corpus_path}: no documents")
    if max_docs:
        relevant = {d for rels in qrels.values() for d in rels}
        keep = [d for d in docs if d["_id"] in relevant]
        keep += [d for d in docs if d["_id"] not in relevant][: max(0, max_docs - len(keep))]
        docs = keep
    corpus = {d["_id"]: {"title": d.get("title") or "", "text": d["text"]} for d in docs}
    return corpus, queries, qrels
