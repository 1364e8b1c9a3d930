"""The model card (``README.md``) of a combined model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub_export.folder import read_json

CARD_TEMPLATE = """---
{metadata}
---

# {title}

A combination of {n_parts} embedding models: each part's embedding is L2-normalized{shaping}, then
the parts are concatenated into one **{dimension}-dimensional** vector{norm_note}. Built with
[concat-embed](https://pypi.org/project/concat-embed/); loads with `trust_remote_code=True`.

## Parts

| part | source | revision | dims | pooling | max tokens | weight | truncate | prompts | runs own code |
|---|---|---|---|---|---|---|---|---|---|
{part_rows}

Model-wide prompts: {prompts}

## Usage

### sentence-transformers

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{repo_id}", trust_remote_code=True)
queries = model.encode_query(["what is snowflake?"])
documents = model.encode_document(["Snowflake is a cloud data platform."])
print(model.similarity(queries, documents))
```

### transformers (AutoModel)

{auto_model}

### LangChain

```python
from langchain_huggingface import HuggingFaceEmbeddings

embeddings = HuggingFaceEmbeddings(
    model_name="{repo_id}",
    model_kwargs={{"trust_remote_code": True}},
    query_encode_kwargs={{"prompt_name": "query"}},
)
vector = embeddings.embed_query("what is snowflake?")
```

### LlamaIndex

```python
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

embed_model = HuggingFaceEmbedding(
    model_name="{repo_id}", trust_remote_code=True, query_instruction={query_prompt!r}, text_instruction=""
)
vector = embed_model.get_query_embedding("what is snowflake?")
```

{compression}{backends}## Verification

{verification}
"""

COMPRESSION_SECTION = """## Compression

The concatenation ({source_dimension}-d) is projected to **{dimension} dimensions** by a `{method}`
projection (`Dense` + `Normalize` after the parts), fitted on `{corpus}` ({texts} texts, sha256
`{sha}`){anchors}. It is Matryoshka-ordered: cut it with sentence-transformers' `truncate_dim`
(`SentenceTransformer(..., truncate_dim=96)` or `encode(..., truncate_dim=96)`) to any of
{dims}; the first dimensions matter most.

| dims | similarity fidelity (Pearson r of pairwise cosines vs the full concatenation, held-out corpus) |
|---|---|
{rows}

"""

AUTO_MODEL_USAGE = """All parts share one tokenizer, so the model also loads without sentence-transformers
(apply the query prompt yourself):

```python
import torch
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
texts = [{query_prompt!r} + "what is snowflake?"]
tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt", return_token_type_ids=False)
with torch.no_grad():
    embeddings = model(**tokens)  # [batch, {dimension}]
```"""

BACKENDS_SECTION = """## Exported runtimes

Every part also ships ONNX / OpenVINO files (`concat-embed export-backends`), checked against the torch
part on probe texts. Load them with
`SentenceTransformer("{repo_id}", trust_remote_code=True, backend="onnx", model_kwargs={{"file_name": FILE}})`
(`backend="openvino"` for the OpenVINO files; `model_kwargs={{"quantization": "auto"}}` picks the int8 file
for the CPU it runs on).

| file (in each part) | backend | int8 | max abs diff vs torch | STS-B Spearman change |
|---|---|---|---|---|
{rows}

"""

NO_AUTO_MODEL = (
    "Not available for this model: its parts use different tokenizers, token limits or per-part prompts "
    "(so one `AutoTokenizer` cannot feed them), or it is compressed. Use sentence-transformers."
)


def _read_json(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def diff_cell(diff: object) -> str:
    """A recorded verification difference as printed in the report and the card (a number or ``non-finite``)."""
    return f"{diff:.2e}" if isinstance(diff, (int, float)) else str(diff)


def _anchor_text(compression: dict[str, Any]) -> str:
    """What besides the documents trained the projection (queries, corpus sentences or titles as pseudo queries)."""
    used = []
    if isinstance(queries := compression.get("queries"), dict) and queries.get("texts"):
        used.append(f"{queries['texts']} queries from `{queries.get('name')}`")
    if isinstance(pseudo := compression.get("pseudo_queries"), dict) and pseudo.get("texts"):
        used.append(f"{pseudo['texts']} corpus {pseudo.get('source')} as pseudo queries")
    return f", trained with {' and '.join(used)}" if used else ""


def _backend_row(name: str, entry: Any) -> str:
    """One row of the exported-runtimes table (``backends.json`` entries are read as untrusted)."""
    entry = entry if isinstance(entry, dict) else {}
    int8 = f"yes ({entry['cpu']})" if entry.get("cpu") else "yes" if entry.get("int8") else "no"
    change = entry.get("sts_change")
    change = f"{change:+.2f}" if isinstance(change, float) else "not measured"
    return f"| {name} | {entry.get('backend')} | {int8} | {diff_cell(entry.get('max_abs_diff'))} | {change} |"


def _yaml_list(key: str, values: list[str]) -> str:
    if not values:
        return ""
    return f"{key}:\n" + "".join(f"- {value}\n" for value in values)


def render_card(model_dir: str | Path, repo_id: str | None = None) -> str:
    """Render the model card of ``model_dir`` from its configuration and verification files."""
    model_dir = Path(model_dir)
    config = read_json(model_dir / "concat_config.json")
    st_config = _read_json(model_dir / "config_sentence_transformers.json") or {}
    verification = _read_json(model_dir / "verification.json")
    parts = config["parts"]
    prompts = st_config.get("prompts", {})
    repo_id = repo_id or model_dir.name
    from hub_export.modeling import parse_concat_config  # torch comes with it: only when a card is rendered

    dimension = sum(spec.output_dimension for spec in parse_concat_config(config, "concat_config.json")[0])
    hub_parts = [p["source"] for p in parts if p.get("revision")]
    licenses = sorted({p["license"] for p in parts if p.get("license")})
    metadata = (
        "library_name: sentence-transformers\npipeline_tag: sentence-similarity\n"
        + (f"license: {licenses[0]}\n" if len(licenses) == 1 else "license: other\n" if licenses else "")
        + _yaml_list("base_model", hub_parts)
        + _yaml_list("tags", ["sentence-transformers", "feature-extraction", "sentence-similarity", "concat-embed"])
    ).rstrip()
    rows = []
    for p in parts:
        own_prompts = ", ".join(f"{k}={v!r}" for k, v in p["prompts"].items()) or "model-wide"
        rows.append(
            f"| {p['name']} | {p['source'] or ''} | {(p.get('revision') or 'local')[:12]} | {p['dimension']} | "
            f"{p['pooling']} | {p['max_seq_length']} | {p['weight']} | {p['truncate_dim'] or '-'} | {own_prompts} | "
            f"{'yes (trust_remote_code)' if p.get('trust_remote_code') else 'no'} |"
        )
        if p.get("license"):
            rows[-1] = rows[-1].replace(f"| {p['source']} |", f"| {p['source']} ({p['license']}) |", 1)
    if verification is None:
        verification_text = "Not verified yet: run `concat-embed verify` on this folder."
    else:
        lines = [
            f"`concat-embed verify` compared this model with each part loaded on its own "
            f"({verification['probes']} probe texts, query and document): "
            f"**{'passed' if verification['passed'] else 'FAILED'}** at tolerance {verification['tolerance']:g}.",
            "",
            "| check | max abs diff |",
            "|---|---|",
        ]
        lines += [f"| {name} | {diff_cell(diff)} |" for name, diff in verification["max_abs_diff"].items()]
        verification_text = "\n".join(lines)
    query_prompt = prompts.get("query", "")
    shaping = (
        ""
        if not any(p["truncate_dim"] or p["weight"] != 1.0 for p in parts)
        else " (then truncated/weighted as listed)"
    )
    compression = _read_json(model_dir / "compression.json")
    compression_text = ""
    if compression is not None:
        dimension = compression["dims"][0]
        compression_text = COMPRESSION_SECTION.format(
            source_dimension=compression["source_dimension"],
            dimension=dimension,
            method=compression["method"],
            corpus=compression["corpus"]["name"],
            texts=compression["corpus"]["texts"],
            sha=compression["corpus"]["sha256"][:12],
            anchors=_anchor_text(compression),
            dims=", ".join(map(str, compression["dims"])),
            rows="\n".join(f"| {k} | {v:.4f} |" for k, v in compression["similarity_fidelity"].items()),
        )
    backends = _read_json(model_dir / "backends.json")
    backends_text = ""
    if backends is not None:
        rows = [_backend_row(name, entry) for name, entry in backends.get("files", {}).items()]
        backends_text = BACKENDS_SECTION.format(repo_id=repo_id, rows="\n".join(rows))
    return CARD_TEMPLATE.format(
        compression=compression_text,
        backends=backends_text,
        metadata=metadata,
        title=repo_id.split("/")[-1],
        n_parts=len(parts),
        shaping=shaping,
        dimension=dimension,
        norm_note=", L2-normalized again" if config.get("normalize_output") else "",
        part_rows="\n".join(rows),
        prompts=", ".join(f"`{k}` = {v!r}" for k, v in prompts.items()) or "none",
        repo_id=repo_id,
        query_prompt=query_prompt,
        auto_model=AUTO_MODEL_USAGE.format(repo_id=repo_id, query_prompt=query_prompt, dimension=dimension)
        if (model_dir / "config.json").is_file()
        else NO_AUTO_MODEL,
        verification=verification_text,
    )


def write_card(model_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write ``README.md`` into ``model_dir``."""
    path = Path(model_dir) / "README.md"
    path.write_text(render_card(model_dir, repo_id), encoding="utf-8")
    return path
