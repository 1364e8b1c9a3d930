"""LlamaIndex and mteb on a built model, compared with the model's own encode (offline)."""

from __future__ import annotations

import mteb
import numpy as np
import pytest
from scipy.stats import spearmanr

from hub_export.data import document_text, load_beir, load_sts
from hub_export.quality.evaluation import retrieval_metrics
from hub_export.quality.mteb_tasks import beir_retrieval_task, sts_task
from hub_export.vectors import cosine_rows, unit_rows
from tests.constants import DATA, QUERY_PROMPT

TEXTS = ["what is snowflake?", "Snowflake is a cloud data platform.", ""]


def test_llamaindex_matches_encode_query_and_document(built_model, loaded_model) -> None:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    # docs/integrations.md snippet: query_instruction restores the saved query prompt (LlamaIndex replaces the
    # model's prompts with its own); normalize=False keeps the concatenation as the model returns it.
    embed_model = HuggingFaceEmbedding(
        model_name=str(built_model),
        trust_remote_code=True,
        query_instruction=QUERY_PROMPT,
        text_instruction="",
        normalize=False,
        device="cpu",
    )
    query = np.array(embed_model.get_query_embedding(TEXTS[0]))
    np.testing.assert_allclose(query, loaded_model.encode_query([TEXTS[0]])[0], atol=1e-5)
    texts = np.array(embed_model.get_text_embedding_batch(TEXTS))
    np.testing.assert_allclose(texts, loaded_model.encode_document(TEXTS), atol=1e-5)
    single = np.array(embed_model.get_text_embedding(TEXTS[1]))
    np.testing.assert_allclose(single, loaded_model.encode_document([TEXTS[1]])[0], atol=1e-5)


def test_mteb_retrieval_equals_direct_computation(loaded_model) -> None:
    limits = {"max_queries": 30, "max_docs": 300}
    task = beir_retrieval_task(DATA / "scifact", name="SciFactLocal", **limits)
    result = mteb.evaluate(loaded_model, task, cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]

    corpus, queries, qrels = load_beir(DATA / "scifact", **limits)
    doc_ids, query_ids = list(corpus), list(queries)
    docs = loaded_model.encode_document([document_text(corpus[d]) for d in doc_ids])
    q = loaded_model.encode_query([queries[i] for i in query_ids])
    direct = retrieval_metrics(unit_rows(q) @ unit_rows(docs).T, query_ids, doc_ids, qrels)
    ndcg, recall = direct["ndcg@10"], direct["recall@100"]
    assert scores["ndcg_at_10"] == pytest.approx(ndcg, abs=1e-5)
    assert scores["recall_at_100"] == pytest.approx(recall, abs=1e-5)


def test_mteb_sts_equals_direct_computation(loaded_model) -> None:
    path = DATA / "stsb" / "test.tsv.gz"
    result = mteb.evaluate(loaded_model, sts_task(path, limit=300), cache=None, show_progress_bar=False)
    first, second, gold = load_sts(path, limit=300)
    direct = spearmanr(cosine_rows(loaded_model.encode(first), loaded_model.encode(second)), gold).statistic
    assert result.task_results[0].scores["test"][0]["cosine_spearman"] == pytest.approx(direct, abs=1e-6)
