"""mteb tasks built from local files: a BEIR-layout retrieval folder and an STS-B style TSV.

Requires ``mteb`` (``pip install mteb``). The tasks read ``../shared/data``-style files, so
evaluation runs offline.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from hub_export.evaluation import load_sts

_COMMON = {
    "reference": "https://github.com/embeddings-benchmark/mteb",
    "dataset": {"path": "local", "revision": "local"},
    "category": "t2t",
    "eval_splits": ["test"],
    "eval_langs": ["eng-Latn"],
    "date": ("2020-01-01", "2020-12-31"),
    "dialect": ["Written"],
    "domains": [],
    "task_subtypes": [],
    "license": "cc-by-4.0",
    "annotations_creators": "derived",
    "modalities": ["text"],
    "sample_creation": "found",
    "bibtex_citation": "",
}


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_beir(folder: str | Path, split: str = "test", max_queries: int | None = None, max_docs: int | None = None):
    """Read a BEIR folder: ``(corpus {id: {"title", "text"}}, queries {id: text}, qrels {qid: {did: score}})``.

    ``max_queries`` keeps the first queries of the split; ``max_docs`` keeps their relevant
    documents plus the first other documents up to that many.
    """
    folder = Path(folder)
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8") as handle:
        qrels: dict[str, dict[str, int]] = {}
        for row in csv.DictReader(handle, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    if max_queries:
        qrels = dict(list(qrels.items())[:max_queries])
    queries_file = next(folder.glob("queries.jsonl*"))
    queries = {q["_id"]: q["text"] for q in _read_jsonl(queries_file) if q["_id"] in qrels}
    docs = _read_jsonl(next(folder.glob("corpus.jsonl*")))
    if max_docs:
        relevant = {d for rels in qrels.values() for d in rels}
        keep = [d for d in docs if d["_id"] in relevant]
        keep += [d for d in docs if d["_id"] not in relevant][: max(0, max_docs - len(keep))]
        docs = keep
    corpus = {d["_id"]: {"title": d.get("title", ""), "text": d["text"]} for d in docs}
    return corpus, queries, qrels


def beir_retrieval_task(folder: str | Path, name: str = "LocalRetrieval", **limits: Any) -> AbsTaskRetrieval:
    """An mteb retrieval task (nDCG@10 main score) over a local BEIR folder."""
    corpus, queries, qrels = load_beir(folder, **limits)

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            type="Retrieval", name=name, main_score="ndcg_at_10", description=f"{folder}", **_COMMON
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            split = RetrievalSplitData(
                corpus=Dataset.from_list(
                    [{"id": i, "title": d["title"], "text": d["text"]} for i, d in corpus.items()]
                ),
                queries=Dataset.from_list([{"id": i, "text": t} for i, t in queries.items()]),
                relevant_docs=qrels,
                top_ranked=None,
            )
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return LocalRetrieval()


def sts_task(path: str | Path, name: str = "LocalSTS", limit: int | None = None) -> AbsTaskSTS:
    """An mteb STS task (cosine Spearman main score) over an STS-B style TSV."""
    first, second, scores = load_sts(path, limit)

    class LocalSTS(AbsTaskSTS):
        metadata = TaskMetadata(type="STS", name=name, main_score="cosine_spearman", description=f"{path}", **_COMMON)
        min_score = 0
        max_score = 5

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            data = {"sentence1": first, "sentence2": second, "score": scores.tolist()}
            self.dataset = DatasetDict({"test": Dataset.from_dict(data)})
            self.data_loaded = True

    return LocalSTS()
