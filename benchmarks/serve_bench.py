"""Load test of ``concat-embed serve`` against in-process encoding (a script, not a test).

Starts the server (local engine) on a free port of 127.0.0.1 for the demo model, then drives it
with a short asyncio load generator (a minimal keep-alive HTTP/1.1 client): concurrency 1, 8
and 64, single-query requests (SciFact claims with the query prompt) and 32-passage requests
(SciFact abstracts). Each cell sends a bounded number of requests and stops by itself. Prints
p50 / p99 latency, texts/s and the ratio to the in-process ceiling (``model.encode`` of the
same texts in one batched call; one ``encode_query`` of one text for latency), for the default
and the int8 path, idle and with two busy-loop processes on the cores. Only 127.0.0.1 is
contacted.

    python benchmarks/serve_bench.py --quick      # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("CONCAT_EMBED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def say(line: str) -> None:
    """One line of the report on stdout, flushed."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def texts(n_queries: int, n_passages: int) -> tuple[list[str], list[str]]:
    """SciFact claims and abstracts."""
    from hub_export.data import document_text, read_jsonl

    queries = [q["text"] for q in read_jsonl(DATA / "scifact" / "queries.jsonl.gz")[:n_queries]]
    passages = [document_text(d) for d in read_jsonl(DATA / "scifact" / "corpus.jsonl.gz")[:n_passages]]
    return queries, passages


def start_server(model: str, quantization: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """``concat-embed serve --quantization Q`` on a free port; returns once it announced its address."""
    args = [sys.executable, "-m", "hub_export", "serve", model, "--port", "0", "--quantization", quantization, *extra]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in process.stderr:  # library warnings may come first
        if line.startswith("serving "):
            break
    else:
        process.kill()
        raise RuntimeError(f"server did not start: {process.stderr.read()[-2000:]}")
    return process, line.split(" on ")[1].split()[0]


async def post_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, body: bytes) -> bytes:
    """One HTTP/1.1 keep-alive POST of ``/v1/embeddings`` on an open connection; the response body.

    A minimal client, so that the load generator spends little of the cores it shares with the server.
    """
    writer.write(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"server answered {status!r}")
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


async def drive(url: str, requests: list[dict], concurrency: int, max_seconds: float) -> tuple[list[float], int, float]:
    """Send ``requests`` with ``concurrency`` in flight (stops after ``max_seconds``); latencies, texts, wall time."""
    import json
    from urllib.parse import urlsplit

    address = urlsplit(url)
    latencies: list[float] = []
    sent = 0
    queue = [(json.dumps(body).encode(), len(body["input"])) for body in reversed(requests)]
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        try:
            while queue and time.perf_counter() - started < max_seconds:
                body, texts = queue.pop()
                begin = time.perf_counter()
                await post_json(reader, writer, address.netloc, body)
                latencies.append(time.perf_counter() - begin)
                sent += texts
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, sent, time.perf_counter() - started


def in_process(model_dir: str, quantization: str, queries: list[str], passages: list[str]) -> dict[str, float]:
    """The ceiling: batched ``encode`` throughput and single-query ``encode_query`` latency in this process,
    on the runtime the server resolves for the same ``--quantization`` (``--backend auto``)."""
    from sentence_transformers import SentenceTransformer

    from hub_export.runtime.choice import choose_runtime

    kwargs = choose_runtime(model_dir, "auto", quantization).load_kwargs()
    model = SentenceTransformer(model_dir, trust_remote_code=True, device="cpu", **kwargs)
    model.encode_query(queries[:8])
    single = []
    for text in queries[:50]:
        begin = time.perf_counter()
        model.encode_query([text])
        single.append(time.perf_counter() - begin)
    begin = time.perf_counter()
    model.encode_query(queries, batch_size=64)
    query_rate = len(queries) / (time.perf_counter() - begin)
    begin = time.perf_counter()
    model.encode_document(passages, batch_size=32)
    passage_rate = len(passages) / (time.perf_counter() - begin)
    del model
    return {"single_p50_ms": 1000 * float(np.median(single)), "queries/s": query_rate, "passages/s": passage_rate}


def busy_loops(n: int) -> list[subprocess.Popen]:
    """``n`` processes that spin until killed (a busy machine)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    """Run every cell and print one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests per cell")
    parser.add_argument("--model", default=None, help="model folder (default: the demo model)")
    parser.add_argument(
        "--quantization", default="none,auto", help="comma-separated --quantization values: none, auto, int8-dynamic"
    )
    parser.add_argument("--modes", default="idle,busy", help="idle and/or busy (two busy-loop processes)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="upper bound per cell")
    parser.add_argument("--kinds", default="query,passages", help="which requests: query and/or passages")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--serve-args", default="", help="extra options for `concat-embed serve`")
    args = parser.parse_args()

    from hub_export import demo

    model_dir = args.model or str(demo.demo_model_dir())
    n_single, n_batch = (256, 8) if args.quick else (1024, 24)
    queries, passages = texts(n_single, 32 * n_batch)
    query_prompt = {"input_type": "query"}
    single = [{"input": [text], **query_prompt} for text in queries]
    batched = [{"input": passages[i : i + 32]} for i in range(0, len(passages), 32)]
    from hub_export.runtime.choice import cpu_summary

    say(cpu_summary())
    say(f"model: {model_dir}; {n_single} single-query requests, {n_batch} x 32-passage requests per cell")
    say("| path | machine | requests | conc. | p50 ms | p99 ms | texts/s | x in-process |")
    say("|---|---|---|---|---|---|---|---|")
    for quantization in args.quantization.split(","):
        for mode in args.modes.split(","):
            spinners = busy_loops(2) if mode == "busy" else []
            try:
                ceiling = in_process(model_dir, quantization, queries, passages)
                process, url = start_server(model_dir, quantization, args.serve_args.split())
                try:
                    asyncio.run(drive(url, single[:16], 4, args.max_seconds))  # warm-up
                    label = "exact" if quantization == "none" else quantization
                    say(f"| {label} | {mode} | in-process encode_query, 1 text | 1 | {ceiling['single_p50_ms']:.1f} "
                          f"| | | |")  # fmt: skip
                    kinds = {"query": ("1 query", single, ceiling["queries/s"]),
                             "passages": ("32 passages", batched, ceiling["passages/s"])}  # fmt: skip
                    for name, requests, rate in (kinds[kind] for kind in args.kinds.split(",")):
                        for concurrency in map(int, args.concurrency.split(",")):
                            latencies, sent, wall = asyncio.run(drive(url, requests, concurrency, args.max_seconds))
                            p50, p99 = (1000 * float(np.percentile(latencies, q)) for q in (50, 99))
                            say(f"| {label} | {mode} | {name} | {concurrency} | {p50:.1f} | {p99:.1f} "
                                  f"| {sent / wall:.1f} | {sent / wall / rate:.2f} |")  # fmt: skip
                finally:
                    process.terminate()
                    process.wait()
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()


if __name__ == "__main__":
    main()
