"""``concat-embed embed``: embed a corpus into resumable, sharded Parquet files.

Records are read in order from JSON lines (``.jsonl`` / ``.jsonl.gz``) or Parquet; valid
records are cut into shards of ``shard_size``; each shard is written to a temporary name and
renamed when complete, so a rerun skips finished shards and reproduces the uninterrupted result.
Bad records (missing or non-string id / text fields, duplicate ids) are counted, listed in
``rejected.jsonl`` and skipped. Engines: ``local`` (one process, or sentence-transformers'
multi-process pool over ``devices``) and ``ray`` (Ray Data ``map_batches`` with an actor pool).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hub_export.evaluation import open_text
from hub_export.modeling import RUNTIME_QUANTIZATION

if TYPE_CHECKING:
    from hub_export.quantize import PartLayout

logger = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "int8")
ENGINES = ("local", "ray")


@dataclass
class EmbedJob:
    """What to embed and how; the part of it that shapes the output is pinned in ``manifest.json``."""

    model: str
    input: str
    output: str
    id_field: str = "_id"
    text_fields: list[str] = field(default_factory=lambda: ["title", "text"])
    shard_size: int = 10_000
    dtype: str = "float32"
    prompt_name: str = "document"
    batch_size: int = 32
    revision: str | None = None
    engine: str = "local"
    devices: list[str] = field(default_factory=list)
    ray_address: str | None = None
    ray_workers: int = 1
    quantization: str | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the valid choices for every bad setting."""
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {list(DTYPES)}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; valid: {list(ENGINES)}")
        if self.quantization not in RUNTIME_QUANTIZATION:
            raise ValueError(f"unknown quantization {self.quantization!r}; valid: {list(RUNTIME_QUANTIZATION)}")
        if self.shard_size <= 0 or self.batch_size <= 0 or self.ray_workers <= 0:
            raise ValueError("shard_size, batch_size and ray_workers must be positive")
        if not self.text_fields:
            raise ValueError("text_fields must name at least one field")
        if not Path(self.input).is_file():
            raise ValueError(f"input {self.input!r} is not a file")
        if not self.input.endswith((".jsonl", ".jsonl.gz", ".parquet")):
            raise ValueError(f"input {self.input!r}: expected .jsonl, .jsonl.gz or .parquet")

    def manifest(self, dimension: int, model_revision: str) -> dict[str, Any]:
        """The settings a resumed run must share with the run that started the output."""
        keys = ("model", "input", "id_field", "text_fields", "shard_size", "dtype", "prompt_name", "quantization")
        return {key: asdict(self)[key] for key in keys} | {"dimension": dimension, "model_revision": model_revision}


def iter_records(path: str | Path) -> Iterator[Any]:
    """Records of a JSON-lines (optionally gzipped) or Parquet file, in order."""
    path = str(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
        return
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    yield {"__invalid__": f"line {line_number}: invalid JSON ({error.msg})"}


def count_records(path: str | Path) -> int:
    """Number of records (non-empty lines, or Parquet rows), for the progress bar's ETA."""
    path = str(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open_text(path) as handle:
        return sum(1 for line in handle if line.strip())


def check_record(record: Any, id_field: str, text_fields: Sequence[str]) -> tuple[str | None, str | None, str | None]:
    """``(id, text, None)`` for a valid record, else ``(id or None, None, reason)``.

    Ids may be strings or integers (stored as strings); each present text field must be a string
    and at least one must be present; the text is the present fields joined by a space.
    """
    if not isinstance(record, dict):
        return None, None, f"record is {type(record).__name__}, not an object"
    if "__invalid__" in record:
        return None, None, record["__invalid__"]
    raw_id = record.get(id_field)
    if raw_id is None:
        return None, None, f"missing id field {id_field!r}"
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return None, None, f"id field {id_field!r} is {type(raw_id).__name__}, expected str"
    record_id = str(raw_id)
    present = [name for name in text_fields if record.get(name) is not None]
    if not present:
        return record_id, None, f"missing text fields {list(text_fields)}"
    if bad := [name for name in present if not isinstance(record[name], str)]:
        return record_id, None, f"text field(s) {bad} are not strings"
    return record_id, " ".join(record[name] for name in present).strip(), None


def shard_path(output: Path, index: int) -> Path:
    """The final name of shard ``index``."""
    return output / f"shard-{index:05d}.parquet"


def iter_shards(
    job: EmbedJob, rejected: Callable[[str | None, str], None]
) -> Iterator[tuple[int, list[str], list[str]]]:
    """``(shard index, ids, texts)`` over the valid records; bad ones go to ``rejected(id, reason)``."""
    seen: set[str] = set()
    ids: list[str] = []
    texts: list[str] = []
    index = 0
    for record in iter_records(job.input):
        record_id, text, reason = check_record(record, job.id_field, job.text_fields)
        if reason is None and record_id in seen:
            reason = "duplicate id"
        if reason is not None:
            rejected(record_id, reason)
            continue
        seen.add(record_id)
        ids.append(record_id)
        texts.append(text)
        if len(ids) == job.shard_size:
            yield index, ids, texts
            index, ids, texts = index + 1, [], []
    if ids:
        yield index, ids, texts


def write_shard(path: Path, ids: list[str], vectors: np.ndarray, metadata: dict[str, str]) -> None:
    """Write ``id`` + fixed-size-list ``vector`` to ``path`` through a temporary file and a rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(vectors.reshape(-1))
    table = pa.table(
        {"id": pa.array(ids, pa.string()), "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}
    )
    table = table.replace_schema_metadata({key: str(value) for key, value in metadata.items()})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def model_revision(job: EmbedJob) -> str:
    """The model's revision for provenance: the pinned revision, or a content hash of a local folder."""
    if job.revision:
        return job.revision
    if Path(job.model).is_dir():
        from hub_export.files import content_hash

        return "sha256:" + content_hash(job.model)
    return "unpinned"


class _Encoder:
    """Turns texts into output rows (float32 / float16 / calibrated int8) with the job's model."""

    def __init__(self, job: EmbedJob) -> None:
        from sentence_transformers import SentenceTransformer

        self.job = job
        model_kwargs = {"quantization": job.quantization} if job.quantization else None
        self.model = SentenceTransformer(
            job.model, trust_remote_code=True, revision=job.revision, device="cpu", model_kwargs=model_kwargs
        )
        self.layouts = None
        if job.dtype == "int8":
            from hub_export.quantize import part_layouts

            self.layouts = part_layouts(self.model[0].specs, "int8")
        self.pool = None
        if job.engine == "local" and job.devices:
            self.pool = self.model.start_multi_process_pool(target_devices=job.devices)

    @property
    def dimension(self) -> int:
        if self.layouts is not None:
            from hub_export.quantize import bytes_per_vector

            return bytes_per_vector(self.layouts, "int8")
        return self.model.get_sentence_embedding_dimension()

    def __call__(self, texts: list[str]) -> np.ndarray:
        kwargs = {"pool": self.pool} if self.pool is not None else {}
        embeddings = self.model.encode(
            texts, prompt_name=self.job.prompt_name, batch_size=self.job.batch_size, convert_to_numpy=True, **kwargs
        )
        return to_dtype(embeddings, self.job.dtype, self.layouts)

    def close(self) -> None:
        if self.pool is not None:
            self.model.stop_multi_process_pool(self.pool)


def to_dtype(embeddings: np.ndarray, dtype: str, layouts: Sequence[PartLayout] | None = None) -> np.ndarray:
    """Model output as stored: float32, float16, or int8 codes with the model's calibrated ranges."""
    if dtype == "int8":
        from hub_export.quantize import quantize

        return quantize(embeddings, layouts, "int8")
    return np.asarray(embeddings, dtype=np.dtype(dtype))


class RayEmbedActor:
    """Ray Data actor: loads the model once and embeds ``{"text"}`` batches into ``{"vector"}``."""

    def __init__(self, job: dict[str, Any]) -> None:
        from hub_export.fast import keep_freed_memory

        keep_freed_memory()  # the actor's process exists to embed
        self.encoder = _Encoder(EmbedJob(**job | {"engine": "ray", "devices": []}))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"position": batch["position"], "vector": self.encoder(list(batch["text"]))}


def _ray_shard_encoder(job: EmbedJob) -> Callable[[list[str]], np.ndarray]:
    import ray

    if not ray.is_initialized():
        ray.init(address=job.ray_address, include_dashboard=False, log_to_driver=False)

    def encode(texts: list[str]) -> np.ndarray:
        dataset = ray.data.from_items([{"position": i, "text": t} for i, t in enumerate(texts)])
        result = dataset.map_batches(
            RayEmbedActor,
            fn_constructor_kwargs={"job": asdict(job)},
            batch_size=job.batch_size * 4,
            concurrency=job.ray_workers,
            batch_format="numpy",
        ).take_all()
        result.sort(key=lambda row: row["position"])
        return np.stack([row["vector"] for row in result])

    return encode


def run_embed(job: EmbedJob, progress: bool = True) -> dict[str, Any]:
    """Embed ``job.input`` into ``job.output``; resume if the output already holds finished shards.

    Returns:
        Counts: ``{"shards", "written", "skipped", "embedded", "rejected", "seconds"}``.

    Raises:
        ValueError: On invalid settings, or an output folder started with different settings.
    """
    import time

    from tqdm.auto import tqdm

    job.validate()
    output = Path(job.output)
    output.mkdir(parents=True, exist_ok=True)
    encoder = _Encoder(job)
    manifest = job.manifest(encoder.dimension, model_revision(job))
    manifest_path = output / "manifest.json"
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if diff := {k: (previous.get(k), v) for k, v in manifest.items() if previous.get(k) != v}:
            raise ValueError(f"{output} was started with other settings {diff} (old, new); use a new --output")
    else:
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    encode = _ray_shard_encoder(job) if job.engine == "ray" else encoder
    metadata = {"model": job.model, "model_revision": manifest["model_revision"], "dtype": job.dtype,
                "prompt_name": job.prompt_name, "dimension": manifest["dimension"]}  # fmt: skip
    counts = {"shards": 0, "written": 0, "skipped": 0, "embedded": 0, "rejected": 0}
    rejected_tmp = output / "rejected.jsonl.tmp"
    started = time.perf_counter()
    with (
        open(rejected_tmp, "w", encoding="utf-8") as rejected_file,
        tqdm(
            desc="embedding", unit="text", disable=not progress, total=count_records(job.input) if progress else None
        ) as bar,
    ):

        def reject(record_id: str | None, reason: str) -> None:
            bar.update(1)
            counts["rejected"] += 1
            rejected_file.write(json.dumps({"id": record_id, "reason": reason}) + "\n")

        try:
            for index, ids, texts in iter_shards(job, reject):
                counts["shards"] += 1
                path = shard_path(output, index)
                if path.is_file():
                    counts["skipped"] += 1
                    bar.update(len(ids))
                    continue
                vectors = np.concatenate([encode(texts[i : i + 1024]) for i in range(0, len(texts), 1024)])
                write_shard(path, ids, vectors, metadata | {"shard": index})
                counts["written"] += 1
                counts["embedded"] += len(ids)
                bar.update(len(ids))
        finally:
            encoder.close()
    os.replace(rejected_tmp, output / "rejected.jsonl")
    counts["seconds"] = round(time.perf_counter() - started, 3)
    if counts["rejected"]:
        logger.warning("%d bad records skipped; ids and reasons in %s", counts["rejected"], output / "rejected.jsonl")
    return counts


def read_output(output: str | Path) -> tuple[list[str], np.ndarray]:
    """All ids and vectors of an output folder, in shard order."""
    import pyarrow.parquet as pq

    ids, vectors = [], []
    for path in sorted(Path(output).glob("shard-*.parquet")):
        table = pq.read_table(path)
        ids += table.column("id").to_pylist()
        vectors.append(np.stack(table.column("vector").to_numpy(zero_copy_only=False)))
    return ids, np.concatenate(vectors) if vectors else np.empty((0, 0))
