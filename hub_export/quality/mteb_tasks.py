"""mteb tasks built from local files: a BEIR-layout retrieval folder and an STS-B style TSV.

Requires ``mteb`` (``pip install mteb``). The tasks read ``../shared/data``-style files, so
evaluation runs offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from hub_export.data import load_beir, load_sts

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
