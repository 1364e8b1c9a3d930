"""Encode throughput of the demo model against what users run today (a script, not a test).

Configurations, each loaded in its own process (load time and peak memory are its own):
  a  two separate SentenceTransformer models + numpy concat (what users do today)
  b  the published card's AutoModel-style loop: batch 32, fp32 weights + autocast
  c  our default (exact)
  d* fast paths: bf16 weights, int8 dynamic quantization, token-budget batching
  *-malloc  the same with glibc malloc told to keep freed memory (an environment setting; CPU)
  e*  exported runtimes (``concat-embed export-backends``, made here if missing): ONNX Runtime and
      OpenVINO, fp32 and int8 (the ONNX int8 file of this CPU's family)
Text sets: SciFact passages (title + abstract), STS-B sentences, SciFact claims as queries with the
query prompt. The sets are timed round-robin over the configurations (``--rounds``, best round
counts), so a slow spell of a shared machine slows every configuration alike. Prints texts/s (best
round), the median of the per-round ratios to (a) with their range, single-query latency (p50 / p90
of ``encode_query`` on one text), STS-B Spearman, peak RSS and load time; on CUDA also the FLOP
ceiling (2 x params x tokens). ``--busy N`` times everything again while N busy-loop processes share
the cores (they stop by themselves) and prints the share of its idle rate each configuration keeps.
The CPU (torch's capability level, ISA flags) heads every table.

    python benchmarks/encode_bench.py --quick            # < 3 min on 2 CPU cores (2 rounds; 2 min 45 s here)
    python benchmarks/encode_bench.py --quick --busy 2 --configs a,c,d-int8-budget,e-onnx-int8
    python benchmarks/encode_bench.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("CONCAT_EMBED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CONFIGS = {
    "a": "2 x SentenceTransformer + concat",
    "b": "card AutoModel loop (bs32, autocast)",
    "c": "ours, default",
    "d-bf16": "ours, bf16 weights",
    "d-int8": "ours, int8 dynamic (CPU)",
    "d-int8-budget": "ours, int8 + token budget",
    "d-bf16-budget": "ours, bf16 + token budget",
    "d-fp16": "ours, fp16 weights (CUDA)",
    "a-malloc": "(a), glibc malloc tuned (CPU)",
    "d-int8-budget-malloc": "ours, int8 + budget, malloc tuned",
    "e-onnx": "ours, ONNX Runtime fp32",
    "e-onnx-int8": "ours, ONNX Runtime int8 (this CPU's file)",
    "e-onnx-int8-budget": "ours, ONNX Runtime int8 + token budget",
    "e-openvino": "ours, OpenVINO fp32",
    "e-openvino-int8": "ours, OpenVINO int8 (NNCF)",
    "e-auto": "ours, quantization='auto' (torch)",
}
# "-malloc" configurations run with glibc told never to mmap or trim: large tensors are then reused
# from the heap instead of page-faulted in anew on every forward. An environment setting, not ours.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}
NOT_DEFAULT = {"d-bf16-budget", "e-onnx-int8-budget", "e-auto"}
LATENCY_QUERIES = 40  # single-query calls per latency measurement
ANSWER = "@@bench "  # prefix of a worker's answer lines; anything else on stdout is library chatter
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def text_sets(quick: bool) -> dict[str, list[str]]:
    """Passages, sentences and queries from the shared data."""
    from hub_export.data import document_text, load_sts, read_jsonl

    n_passages, n_short = (64, 256) if quick else (512, 2048)
    corpus = read_jsonl(DATA / "scifact" / "corpus.jsonl.gz")[:n_passages]
    queries = read_jsonl(DATA / "scifact" / "queries.jsonl.gz")[:n_short]
    sentences, _, _ = load_sts(DATA / "stsb" / "test.tsv.gz", n_short)
    return {
        "passages": [document_text(d) for d in corpus],
        "sentences": sentences,
        "queries": [q["text"] for q in queries],
    }


def build_encoder(config: str, device: str, model_dir: Path) -> tuple[Callable[[list[str], bool], np.ndarray], int]:
    """Return ``encode(texts, is_query) -> np.ndarray`` for a configuration, and its parameter count."""
    import torch
    from sentence_transformers import SentenceTransformer

    from hub_export.runtime.batching import encode_with_token_budget

    part_dirs = [model_dir / "minilm_l6", model_dir / "minilm_l3"]
    if config == "a":
        models = [SentenceTransformer(str(p), device=device) for p in part_dirs]

        def encode(texts, is_query):
            name = "query" if is_query else "document"
            return np.concatenate([m.encode(texts, prompt_name=name, batch_size=32) for m in models], axis=1)

        return encode, params_of(models)
    if config == "b":
        from transformers import AutoModel, AutoTokenizer

        parts = []
        for path, max_length in zip(part_dirs, (256, 128)):
            model = AutoModel.from_pretrained(str(path)).to(device).eval()
            parts.append((AutoTokenizer.from_pretrained(str(path)), model, max_length))
        autocast_dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16

        @torch.no_grad()
        def encode(texts, is_query):
            out = []
            for start in range(0, len(texts), 32):
                batch, blocks = texts[start : start + 32], []
                for tokenizer, model, max_length in parts:
                    tokens = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                    tokens = tokens.to(device)
                    with torch.autocast(device.split(":")[0], dtype=autocast_dtype):
                        hidden = model(**tokens).last_hidden_state
                    mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1)
                    blocks.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
                out.append(torch.cat(blocks, dim=-1).cpu().numpy())
            return np.concatenate(out)

        return encode, sum(p.numel() for _, m, _ in parts for p in m.parameters())
    config = config.removesuffix("-malloc")
    model_kwargs, backend = {}, "torch"
    if config.startswith("e-") and config != "e-auto":
        from hub_export.modeling import ONNX_INT8_FILES, OPENVINO_INT8_FILE, cpu_family

        backend = "openvino" if "openvino" in config else "onnx"
        if "int8" in config:
            model_kwargs["file_name"] = OPENVINO_INT8_FILE if backend == "openvino" else ONNX_INT8_FILES[cpu_family()]
    if config == "e-auto":
        model_kwargs["quantization"] = "auto"
    if "bf16" in config:
        model_kwargs["torch_dtype"] = torch.bfloat16
    if "fp16" in config:
        model_kwargs["torch_dtype"] = torch.float16
    if "int8" in config and backend == "torch":
        model_kwargs["quantization"] = "int8-dynamic"
    model = SentenceTransformer(
        str(model_dir), trust_remote_code=True, device=device, model_kwargs=model_kwargs, backend=backend
    )

    def encode(texts, is_query):
        name = "query" if is_query else "document"
        if config.endswith("budget"):
            return encode_with_token_budget(model, texts, max_tokens=2048, prompt_name=name).astype(np.float32)
        return model.encode(texts, prompt_name=name, batch_size=32, convert_to_numpy=True).astype(np.float32)

    return encode, params_of([model])


def params_of(models: list) -> int:
    """Parameter count of the models."""
    return sum(p.numel() for m in models for p in m.parameters())


def count_tokens(texts: list[str], max_lengths: tuple[int, ...] = (256, 128)) -> int:
    """Tokens processed per part on average (each part truncates at its own limit)."""
    from transformers import AutoTokenizer

    from hub_export import demo

    tokenizer = AutoTokenizer.from_pretrained(str(demo.l6_folder()))
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    return sum(min(n, limit) for n in lengths for limit in max_lengths) // len(max_lengths)


class Worker:
    """One configuration in its own process, encoding on request so that configurations interleave."""

    def __init__(self, config: str, device: str, quick: bool, model_dir: Path) -> None:
        command = [sys.executable, __file__, "--worker", config, "--device", device, "--model-dir", str(model_dir)]
        command += ["--quick"] if quick else []
        self.config = config
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = os.environ | (MALLOC_ENV if config.endswith("-malloc") else {})
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env
        )
        self.info: dict = {}

    def ask(self, request: str | None) -> dict:
        """Send a request line (None: only read the next answer) and return the worker's answer."""
        if request is not None:
            self.process.stdin.write(request + "\n")
            self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(ANSWER):
                return json.loads(line[len(ANSWER) :])
        self.stderr.seek(0)
        raise SystemExit(f"{self.config} failed:\n{self.stderr.read()[-3000:]}")


def serve(config: str, device: str, quick: bool, model_dir: Path) -> None:
    """Worker loop: import, then answer ``load``, ``time SET`` (seconds), ``sts`` and ``stats``; ``quit`` ends."""
    import sentence_transformers  # noqa: F401  (imports happen before the timed load, in parallel)
    import torch
    import transformers  # noqa: F401

    from hub_export.data import load_sts
    from hub_export.vectors import cosine_rows

    def answer(data: dict) -> None:
        sys.stdout.write(ANSWER + json.dumps(data) + "\n")
        sys.stdout.flush()

    def synchronize() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sets = text_sets(quick)
    answer({})  # imported
    for request in sys.stdin:
        command, _, name = request.strip().partition(" ")
        if command == "load":
            started = time.perf_counter()
            encode, n_params = build_encoder(config, device, model_dir)
            load_s = time.perf_counter() - started
            encode(sets["sentences"][:8], False)  # warm-up
            answer({"load_s": load_s, "params": n_params})
        elif command == "time":
            synchronize()
            start = time.perf_counter()
            encode(sets[name], name == "queries")
            synchronize()
            answer({"seconds": time.perf_counter() - start})
        elif command == "latency":
            queries = sets["queries"][:LATENCY_QUERIES]
            encode(queries[:2], True)
            times = []
            for query in queries:
                synchronize()
                start = time.perf_counter()
                encode([query], True)
                synchronize()
                times.append(time.perf_counter() - start)
            answer({"p50_ms": 1000 * float(np.percentile(times, 50)), "p90_ms": 1000 * float(np.percentile(times, 90))})
        elif command == "sts":
            from scipy.stats import spearmanr

            first, second, gold = load_sts(DATA / "stsb" / "test.tsv.gz", 300 if quick else None)
            cosines = cosine_rows(encode(first, False), encode(second, False))
            answer({"sts": 100 * float(spearmanr(cosines, gold).statistic)})
        elif command == "stats":
            stats = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            if device.startswith("cuda"):
                stats |= {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20, "gpu": torch.cuda.get_device_name()}
            answer(stats)
        else:
            return


def busy_loops(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` processes that spin on a core each and exit by themselves after ``seconds``."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def timed_rounds(workers: list[Worker], sets: list[str], rounds: int) -> dict:
    """Per (config, set): the seconds of each round; per config: single-query latency."""
    seconds = {(w.config, name): [] for w in workers for name in sets}
    for _ in range(rounds):
        for name in sets:
            for w in workers:
                seconds[w.config, name].append(w.ask(f"time {name}")["seconds"])
    return {"seconds": seconds, "latency": {w.config: w.ask("latency") for w in workers}}


def measure(configs: list[str], device: str, quick: bool, rounds: int, model_dir: Path, busy: int = 0) -> list[dict]:
    """Load each configuration in its own process, then time the text sets round-robin.

    Every round times each set once per configuration, one process at a time, so that a slow
    spell of a shared machine hits all configurations alike; a configuration's rate is its
    best round, and its per-round speed ratios to the first configuration (timed in the same
    round, moments apart) are kept in ``ratios``. With ``busy``, the rounds run again while that
    many busy-loop processes share the cores (``busy_rates``, ``busy_latency``).
    """
    workers = [Worker(config, device, quick, model_dir) for config in configs]  # import in parallel
    for w in workers:
        w.ask(None)
    for w in workers:  # load one after another, so that load times are each its own
        w.info = w.ask("load")
    texts = text_sets(quick)
    sets = list(texts)
    idle = timed_rounds(workers, sets, rounds)
    loaded = None
    if busy:
        loops = busy_loops(busy, seconds=1800)
        try:
            loaded = timed_rounds(workers, sets, rounds)
        finally:
            for loop in loops:
                loop.kill()
    on_cuda = device.startswith("cuda")
    tokens_per_text = {name: count_tokens(texts[name]) / len(texts[name]) for name in sets} if on_cuda else {}
    base = workers[0].config
    results = []
    for w in workers:
        seconds = idle["seconds"]
        rates = {name: len(texts[name]) / min(seconds[w.config, name]) for name in sets}
        ratios = {
            name: [ours / theirs for ours, theirs in zip(seconds[base, name], seconds[w.config, name])] for name in sets
        }
        result = {"config": w.config, "load_s": w.info["load_s"], "params": w.info["params"], "rates": rates}
        result |= {"ratios": ratios, "latency": idle["latency"][w.config]}
        if loaded is not None:
            busy_rates = {name: len(texts[name]) / min(loaded["seconds"][w.config, name]) for name in sets}
            result |= {"busy_rates": busy_rates, "busy_latency": loaded["latency"][w.config]}
        result |= w.ask("sts") | w.ask("stats") | {"tokens_per_text": tokens_per_text}
        w.process.communicate("quit\n")
        results.append(result)
    return results


def ensure_exports(configs: list[str], model_dir: Path) -> None:
    """Export the demo model's parts for the ``e-*`` configurations that need files it lacks."""
    from hub_export.modeling import ONNX_INT8_FILES, OPENVINO_INT8_FILE, cpu_family
    from hub_export.publish.backends import export_backends

    onnx = any(c.startswith("e-onnx") for c in configs)
    openvino = any(c.startswith("e-openvino") for c in configs)
    needed = (["onnx/model.onnx", ONNX_INT8_FILES[cpu_family()]] if onnx else []) + (
        ["openvino/openvino_model.xml", OPENVINO_INT8_FILE] if openvino else []
    )
    if any(not (model_dir / "minilm_l6" / name).is_file() for name in needed):
        export_backends(model_dir, onnx=onnx, openvino=openvino, int8=True)


def main() -> None:
    """Measure every configuration and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small text sets (< 3 min on 2 CPU cores)")
    parser.add_argument("--rounds", type=int, help="timed rounds per set, the best counts (default 2 quick, 3 full)")
    parser.add_argument("--configs", default=None, help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--busy", type=int, default=0, help="time again with this many busy-loop processes")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args.worker, args.device, args.quick, Path(args.model_dir))
        return
    on_cuda = args.device.startswith("cuda")
    cpu_only = ("d-int8", "-malloc")
    default = [
        c
        for c in CONFIGS
        if c not in NOT_DEFAULT and (c != "d-fp16" or on_cuda) and not (on_cuda and any(k in c for k in cpu_only))
    ]
    configs = args.configs.split(",") if args.configs else default
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    configs.sort(key=lambda c: c != "a")  # (a) first: every round's ratios are taken against it
    rounds = args.rounds or (2 if args.quick else 3)
    from hub_export import demo

    model_dir = demo.demo_model_dir()  # built once here; the workers load this folder
    if any(c.startswith("e-") for c in configs):
        ensure_exports(configs, model_dir)
    results = measure(configs, args.device, args.quick, rounds, model_dir, args.busy)
    base = results[0]
    sets = list(base["rates"])
    header = (
        f"{'config':<56}"
        + "".join(f"{s + ' /s':>14}{'x(a)':>6}" for s in sets)
        + f"{'1q p50 ms':>10}{'p90':>6}{'x(a)':>6}{'STS-B':>7}{'RSS MB':>8}{'load s':>7}"
    )
    from hub_export.runtime.choice import cpu_summary

    lines = [cpu_summary(), f"device {args.device}, {'quick' if args.quick else 'full'} sets", header]
    for r in results:
        cells = "".join(f"{r['rates'][s]:14.1f}{np.median(r['ratios'][s]):6.2f}" for s in sets)
        p50, p90 = r["latency"]["p50_ms"], r["latency"]["p90_ms"]
        cells += f"{p50:10.1f}{p90:6.1f}{p50 / base['latency']['p50_ms']:6.2f}"
        label = f"{r['config']} {CONFIGS[r['config']]}"
        lines.append(f"{label:<56}{cells}{r['sts']:7.2f}{r['peak_rss_mb']:8.0f}{r['load_s']:7.1f}")
    lines.append(f"x(a): median over {rounds} rounds of the speed ratio to {base['config']} in the same round; range:")
    for r in results[1:]:
        spread = ", ".join(f"{s} {min(r['ratios'][s]):.2f}-{max(r['ratios'][s]):.2f}" for s in sets)
        lines.append(f"  {r['config']}: {spread}")
    if args.busy:
        lines.append(f"with {args.busy} busy-loop processes on the cores: texts/s, share of its own idle rate kept")
        columns = "".join(f"{s + ' /s':>14}{'kept':>6}" for s in sets)
        lines.append(f"{'config':<56}{columns}{'1q p50 ms':>10}{'x(a)':>6}")
        for r in results:
            cells = "".join(f"{r['busy_rates'][s]:14.1f}{r['busy_rates'][s] / r['rates'][s]:6.0%}" for s in sets)
            p50 = r["busy_latency"]["p50_ms"]
            cells += f"{p50:10.1f}{p50 / base['busy_latency']['p50_ms']:6.2f}"
            lines.append(f"{r['config'] + ' ' + CONFIGS[r['config']]:<56}{cells}")
    if on_cuda:
        gpu = results[0].get("gpu", "")
        peak = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
        for r in results:
            achieved = {s: 2 * r["params"] * r["tokens_per_text"][s] * r["rates"][s] for s in sets}
            note = ", ".join(
                f"{s} {v / 1e12:.1f} TFLOP/s" + (f" ({v / peak:.1%} of {gpu})" if peak else "")
                for s, v in achieved.items()
            )
            lines.append(f"  {r['config']}: {note}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
