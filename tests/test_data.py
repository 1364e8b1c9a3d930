"""Corpus readers of hub_export.data: sentences and titles as pseudo queries."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from hub_export.data import pseudo_query_sources, read_corpus_sentences

BODIES = [
    "Short one. This first sentence has exactly six words! Is this second sentence long enough to count?",
    "Results. 42. Too short here.",  # no piece of six words or more: no pseudo query
    "A single long sentence without any final punctuation mark at all",
]


def write_corpus(path, bodies: list[str]) -> None:
    lines = [
        json.dumps({"_id": str(i), "title": f"Title number {i} of the corpus", "text": body})
        for i, body in enumerate(bodies)
    ]
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")


def independent_sentences(body: str) -> list[str]:
    """Split by hand: after . ! ? and white space; at least six words."""
    pieces, current = [], ""
    for token in re.findall(r"\S+\s*", body.strip()):
        current += token
        if token.rstrip()[-1] in ".!?" and token != token.rstrip():
            pieces.append(current.strip())
            current = ""
    pieces.append(current.strip())
    return [piece for piece in pieces if len(piece.split()) >= 6]


def test_every_sentence_of_each_document_body_never_the_title(tmp_path) -> None:
    corpus = tmp_path / "corpus.jsonl.gz"
    write_corpus(corpus, BODIES)
    assert independent_sentences(BODIES[0]) == [
        "This first sentence has exactly six words!",
        "Is this second sentence long enough to count?",
    ]
    sentences = read_corpus_sentences(corpus)  # the second document has no sentence of six words
    assert sentences == [*independent_sentences(BODIES[0]), BODIES[2]]
    assert not any("Title" in sentence for sentence in sentences)
    assert read_corpus_sentences(corpus, limit=1) == sentences[:2]
    assert read_corpus_sentences(corpus, per_document=5) == sentences  # fewer than asked: all, no draw


def test_one_seeded_sentence_per_document(tmp_path) -> None:
    corpus = tmp_path / "corpus.jsonl.gz"
    write_corpus(corpus, BODIES)
    sentences = read_corpus_sentences(corpus, per_document=1)
    assert len(sentences) == 2
    assert sentences[0] in independent_sentences(BODIES[0])
    assert sentences[1] == BODIES[2]
    assert read_corpus_sentences(corpus, per_document=1) == sentences  # same seed, same draw
    draws = {read_corpus_sentences(corpus, seed=seed, per_document=1)[0] for seed in range(20)}
    assert draws == set(independent_sentences(BODIES[0]))  # both sentences are drawn across seeds


def test_sentences_drawn_per_document_keep_their_order(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    numbered = [f"Sentence number {i} of this long body." for i in range(5)]
    corpus.write_text(" ".join(numbered) + "\n")
    draws = set()
    for seed in range(30):
        drawn = read_corpus_sentences(corpus, seed=seed, per_document=2)
        assert len(drawn) == 2 and set(drawn) <= set(numbered)
        assert drawn == sorted(drawn, key=numbered.index)
        draws.add(tuple(drawn))
    assert len(draws) > 5  # different pairs across seeds, not always the first two
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match=rf"^sentences per document {bad!r}: give an integer >= 1, or None"):
            read_corpus_sentences(corpus, per_document=bad)


def test_plain_text_corpus_lines_are_bodies(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(BODIES) + "\n")
    assert read_corpus_sentences(corpus) == [*independent_sentences(BODIES[0]), BODIES[2]]
    sentences = read_corpus_sentences(corpus, seed=3, per_document=1)
    assert len(sentences) == 2 and sentences[1] == BODIES[2]
    assert sentences[0] in independent_sentences(BODIES[0])


def read_pseudo_queries(*args, **kwargs) -> list[str]:
    """The texts of :func:`pseudo_query_sources`, without their documents' positions."""
    return [text for _, text in pseudo_query_sources(*args, **kwargs)]


def test_pseudo_query_sources_and_bad_input(tmp_path) -> None:
    corpus = tmp_path / "corpus.jsonl.gz"
    write_corpus(corpus, BODIES)
    assert read_pseudo_queries(corpus, "sentences") == read_corpus_sentences(corpus)
    assert read_pseudo_queries(corpus, "sentences", per_document=1) == read_corpus_sentences(corpus, per_document=1)
    assert read_pseudo_queries(corpus, "titles", per_document=1) == read_pseudo_queries(corpus, "titles")
    assert read_pseudo_queries(corpus, "titles") == [f"Title number {i} of the corpus" for i in range(3)]
    assert read_pseudo_queries(corpus, "titles", limit=0) == read_pseudo_queries(corpus, "titles")  # 0: all
    assert read_pseudo_queries(corpus, "titles", limit=2) == [
        "Title number 0 of the corpus",
        "Title number 1 of the corpus",
    ]
    assert read_pseudo_queries(corpus, "none") == []
    assert [p for p, _ in pseudo_query_sources(corpus, "titles", limit=2)] == [0, 1]  # each with its document
    assert {p for p, _ in pseudo_query_sources(corpus, "sentences")} == {0, 2}  # the second has no sentence
    valid = r"valid: \['sentences', 'titles', 'none'\]$"
    with pytest.raises(ValueError, match=rf"^unknown pseudo_queries 'claims'; {valid}"):
        read_pseudo_queries(corpus, "claims")
    with pytest.raises(ValueError, match=r"corpus '.*missing.jsonl' is not a file"):
        read_corpus_sentences(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "1", "text": "fine text with enough words to be one sentence"}\n{"_id": "2", "text": 7}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: field 'text' must be a string \(int\)"):
        read_corpus_sentences(bad)
    assert read_pseudo_queries(corpus, "sentences", limit=0) == read_corpus_sentences(corpus)  # 0: all
