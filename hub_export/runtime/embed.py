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
import signal
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hub_export.data import INVALID, count_records, iter_records
from hub_export.folder import file_sha256, has_projection, int8_ranges, load_model, read_json, write_json
from hub_export.runtime.choice import Runtime, loaded_label
from hub_export.runtime.devices import check_devices

if TYPE_CHECKING:
    from hub_export.quality.codes import PartLayout

logger = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "int8")
ENGINES = ("local", "ray")
LOCK_FILE = ".embed.lock"
REJECTED_TMP = "rejected.jsonl.tmp"
# Test hook: the process kills itself (SIGKILL) once this many shards were renamed into place, so a
# test interrupts a run at a deterministic point instead of racing a clock.
CRASH_AFTER_SHARDS_ENV = "CONCAT_EMBED_TEST_CRASH_AFTER_SHARDS"


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
    backend: str = "torch"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the valid choices for every bad setting."""
        from hub_export.modeling import BACKENDS, WEIGHT_QUANTIZATION

        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {list(DTYPES)}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; valid: {list(ENGINES)}")
        if self.quantization not in WEIGHT_QUANTIZATION:
            raise ValueError(f"unknown quantization {self.quantization!r}; valid: {list(WEIGHT_QUANTIZATION)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; valid: {list(BACKENDS)}")
        if self.backend != "torch" and (self.devices or self.engine == "ray"):
            raise ValueError(f"backend {self.backend!r} runs in this process; use it without --devices / --engine ray")
        for name in ("shard_size", "batch_size", "ray_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} = {value!r}: expected a positive integer")
        if not self.id_field or not self.text_fields or not all(self.text_fields):
            raise ValueError("id_field and text_fields must name fields (e.g. --id-field _id --text-fields title,text)")
        if not Path(self.input).is_file():
            raise ValueError(f"input {self.input!r} is not a file")
        if not self.input.endswith((".jsonl", ".jsonl.gz", ".parquet")):
            raise ValueError(f"input {self.input!r}: expected .jsonl, .jsonl.gz or .parquet")
        if Path(self.output).exists() and not Path(self.output).is_dir():
            raise ValueError(f"output {self.output!r} is a file; give a folder")
        check_devices(self.devices)

    def manifest(self, dimension: int, model_revision: str, source: dict[str, Any], runtime: str) -> dict[str, Any]:
        """The settings and input identity a resumed run must share with the run that started the output.

        ``runtime`` is what the model resolved to run on (e.g. ``onnx:onnx/model_quint8_avx2.onnx``): a
        resume on a machine where ``auto`` picks another path, whose vectors differ slightly, is refused.
        """
        keys = ("model", "input", "id_field", "text_fields", "shard_size", "dtype", "prompt_name", "quantization")
        return {key: asdict(self)[key] for key in keys} | {
            "runtime": runtime,
            "dimension": dimension,
            "model_revision": model_revision,
            "input_size": source["size"],
            "input_sha256": source["sha256"],
        }


def input_identity(path: str | Path) -> dict[str, Any]:
    """Size and streamed sha256 of an input file: what a resumed run must find unchanged."""
    return {"size": Path(path).stat().st_size, "sha256": file_sha256(path)}


def check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse to resume an output folder whose ``manifest.json`` differs from this run's.

    Raises:
        ValueError: Saying whether the input file changed or which settings differ.
    """
    previous = read_json(path)
    if not isinstance(previous, dict):
        raise ValueError(f"{path}: expected a JSON object; use a new --output")
    if previous.get("input_sha256") is None:
        raise ValueError(
            f"{path.parent} was started without pinning its input (an older concat-embed); use a new --output"
        )
    if (previous.get("input_size"), previous["input_sha256"]) != (manifest["input_size"], manifest["input_sha256"]):
        raise ValueError(
            f"{path.parent}: the input {manifest['input']} changed since this output was started "
            f"(size {previous.get('input_size')} -> {manifest['input_size']} bytes, sha256 "
            f"{str(previous['input_sha256'])[:12]}... -> {manifest['input_sha256'][:12]}...); "
            "resuming would mix old and new records: use a new --output"
        )
    if diff := {k: (previous.get(k), v) for k, v in manifest.items() if previous.get(k) != v}:
        raise ValueError(f"{path.parent} was started with other settings {diff} (old, new); use a new --output")


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` for one run; a second run into the same folder is refused.

    The lock (``flock`` on ``.embed.lock``) is released by the system when the process ends,
    even when it is killed, so a resumed run is never blocked by a crashed one.
    """
    import fcntl

    handle = open(output / LOCK_FILE, "a+")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another `concat-embed embed` run is writing to {output} (it holds {output / LOCK_FILE}); "
                "wait for it to finish or use another --output"
            ) from None
        yield
    finally:
        handle.close()


def check_record(record: Any, id_field: str, text_fields: Sequence[str]) -> tuple[str | None, str | None, str | None]:
    """``(id, text, None)`` for a valid record, else ``(id or None, None, reason)``.

    Ids may be strings or integers (stored as strings); each present text field must be a string
    and at least one must be present; the text is the present fields joined by a space.
    """
    if not isinstance(record, dict):
        return None, None, f"record is {type(record).__name__}, not an object"
    if INVALID in record:
        return None, None, record[INVALID]
    raw_id = record.get(id_field)
    if raw_id is None:
        return None, None, f"missing id field {id_field!r}"
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return None, None, f"id field {id_field!r} is {type(raw_id).__name__}, expected str"
    record_id = str(raw_id)
    if not record_id.strip():
        return None, None, f"id field {id_field!r} is empty"
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
        from hub_export.folder import content_hash

        return "sha256:" + content_hash(job.model)
    return "unpinned"


class _Encoder:
    """Turns texts into output rows (float32 / float16 / calibrated int8) with the job's model."""

    def __init__(self, job: EmbedJob) -> None:
        self.job = job
        runtime = Runtime(job.backend, job.quantization)
        self.model = load_model(job.model, revision=job.revision, device="cpu", **runtime.load_kwargs())
        self.layouts, self.ranges = None, None
        if job.dtype == "int8" and has_projection(self.model):  # compressed: whole-vector per-dimension ranges
            self.ranges = int8_ranges(Path(job.model), self.dimension)
            if self.ranges is None:
                raise ValueError(f"{job.model} is compressed and has no int8 ranges: run `concat-embed calibrate`")
        elif job.dtype == "int8":
            from hub_export.quality.codes import part_layouts

            self.layouts = part_layouts(self.model[0].specs, "int8")
        self.pool = None
        if job.engine == "local" and job.devices:
            self.pool = self.model.start_multi_process_pool(target_devices=job.devices)

    @property
    def dimension(self) -> int:
        if self.layouts is not None:
            from hub_export.quality.codes import bytes_per_vector

            return bytes_per_vector(self.layouts, "int8")
        from hub_export.modeling import embedding_dimension_of

        return embedding_dimension_of(self.model)

    def __call__(self, texts: list[str]) -> np.ndarray:
        kwargs = {"pool": self.pool} if self.pool is not None else {}
        embeddings = self.model.encode(
            texts, prompt_name=self.job.prompt_name, batch_size=self.job.batch_size, convert_to_numpy=True, **kwargs
        )
        if self.ranges is not None:
            from hub_export.quality.codes import dimension_codes

            return dimension_codes(embeddings, *self.ranges)
        return to_dtype(embeddings, self.job.dtype, self.layouts)

    def close(self) -> None:
        if self.pool is not None:
            self.model.stop_multi_process_pool(self.pool)


def to_dtype(embeddings: np.ndarray, dtype: str, layouts: Sequence[PartLayout] | None = None) -> np.ndarray:
    """Model output as stored: float32, float16, or int8 codes with the model's calibrated ranges."""
    if dtype == "int8":
        from hub_export.quality.codes import encode_codes

        return encode_codes(embeddings, layouts, "int8")
    return np.asarray(embeddings, dtype=np.dtype(dtype))


class RayEmbedActor:
    """Ray Data actor: loads the model once and embeds ``{"text"}`` batches into ``{"vector"}``."""

    def __init__(self, job: dict[str, Any]) -> None:
        from hub_export.runtime.memory import keep_freed_memory

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

    Everything is validated before anything is written: the settings, the devices, the prompt
    name, a previous run's ``manifest.json`` (settings and the input's size + sha256 must be
    unchanged) and the lock that keeps a second run out of the folder. The manifest is written
    with the first shard; a run in which every record is rejected is an error and leaves nothing.

    Returns:
        Counts: ``{"shards", "written", "skipped", "embedded", "rejected", "seconds"}``.

    Raises:
        ValueError: On invalid settings, an output folder started with other settings or another
            input, an output folder in use by another run, or an input without any valid record.
    """
    import time

    from tqdm.auto import tqdm

    job.validate()
    output = Path(job.output)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        with output_lock(output):
            counts = _run_locked(job, output, progress, time.perf_counter, tqdm)
    except BaseException:
        leftovers = {LOCK_FILE, REJECTED_TMP}
        if created and {p.name for p in output.iterdir()} <= leftovers:  # nothing of value was written
            for name in leftovers:
                (output / name).unlink(missing_ok=True)
            output.rmdir()
        raise
    if counts["rejected"]:
        logger.warning("%d bad records skipped; ids and reasons in %s", counts["rejected"], output / "rejected.jsonl")
    return counts


def _run_locked(job: EmbedJob, output: Path, progress: bool, clock: Callable[[], float], tqdm: Any) -> dict[str, Any]:
    """The body of :func:`run_embed`, run while holding the output folder's lock."""
    started = clock()
    encoder = _Encoder(job)
    manifest_path = output / "manifest.json"
    try:
        if job.prompt_name not in encoder.model.prompts:
            valid = sorted(encoder.model.prompts)
            raise ValueError(f"unknown prompt name {job.prompt_name!r} for {job.model}; valid prompt names: {valid}")
        runtime = loaded_label(encoder.model)
        manifest = job.manifest(encoder.dimension, model_revision(job), input_identity(job.input), runtime)
        if manifest_path.is_file():
            check_manifest(manifest_path, manifest)
        encode = _ray_shard_encoder(job) if job.engine == "ray" else encoder
        metadata = {"model": job.model, "model_revision": manifest["model_revision"], "dtype": job.dtype,
                    "prompt_name": job.prompt_name, "dimension": manifest["dimension"]}  # fmt: skip
        # Texts per encode call: enough for length-sorted batches inside it, few enough for a moving bar.
        step = 1024 if job.engine == "ray" or job.devices else max(job.batch_size, 256)
        crash_after = int(os.environ.get(CRASH_AFTER_SHARDS_ENV, "0") or 0)
        counts = {"shards": 0, "written": 0, "skipped": 0, "embedded": 0, "rejected": 0}
        reasons: Counter[str] = Counter()
        rejected_tmp = output / REJECTED_TMP
        total = count_records(job.input) if progress else None
        with (
            open(rejected_tmp, "w", encoding="utf-8") as rejected_file,
            tqdm(desc="embedding", unit="text", disable=not progress, total=total) as bar,
        ):

            def reject(record_id: str | None, reason: str) -> None:
                bar.update(1)
                counts["rejected"] += 1
                reasons[reason.split(":")[0] if reason.startswith("line ") else reason] += 1
                rejected_file.write(json.dumps({"id": record_id, "reason": reason}) + "\n")

            for index, ids, texts in iter_shards(job, reject):
                if not manifest_path.is_file():
                    write_json(manifest_path, manifest)
                counts["shards"] += 1
                path = shard_path(output, index)
                if path.is_file():
                    counts["skipped"] += 1
                    bar.update(len(ids))
                    continue
                vectors = []
                for start in range(0, len(texts), step):
                    vectors.append(encode(texts[start : start + step]))
                    bar.update(len(vectors[-1]))
                write_shard(path, ids, np.concatenate(vectors), metadata | {"shard": index})
                counts["written"] += 1
                counts["embedded"] += len(ids)
                if crash_after and counts["written"] == crash_after:
                    os.kill(os.getpid(), signal.SIGKILL)
    finally:
        encoder.close()
    if counts["shards"] == 0:
        rejected_tmp.unlink(missing_ok=True)
        common = reasons.most_common(1)[0][0] if reasons else "the file holds no records"
        raise ValueError(
            f"no valid record in {job.input}: {counts['rejected']} rejected, most often for {common!r}; "
            f"check --id-field ({job.id_field!r}) and --text-fields ({','.join(job.text_fields)!r})"
        )
    os.replace(rejected_tmp, output / "rejected.jsonl")
    counts["seconds"] = round(clock() - started, 3)
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
