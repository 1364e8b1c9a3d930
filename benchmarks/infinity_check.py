"""Serve a distilled student with Infinity (a third-party embedding server, remote code refused) and compare its
vectors with sentence-transformers' own (a script, not a test: Infinity needs its own environment).

Infinity 0.0.78 pins sentence-transformers < 4 and numpy < 2, so it lives in a separate virtual environment:

    python3 -m venv infinity-venv && infinity-venv/bin/pip install torch==2.13.0 'infinity-emb[torch,server]==0.0.78'
    python benchmarks/infinity_check.py ./student --infinity infinity-venv/bin/infinity_emb

The server listens on 127.0.0.1 only, gets a bounded number of requests, and is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEXTS = [
    "what is snowflake?",
    "Snowflake is a cloud data platform that separates storage from compute.",
    "A résumé, naïve café owners and 東京 — mixed scripts and accents.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]
START_LIMIT_S = 300  # the server must answer /health within this long, else the check fails


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path, help="a folder written by concat-embed distill")
    parser.add_argument("--infinity", type=Path, required=True, help="the infinity_emb executable of its own venv")
    args = parser.parse_args()
    import httpx
    from sentence_transformers import SentenceTransformer

    port = free_port()
    command = [str(args.infinity), "v2", "--model-id", str(args.student.resolve()), "--served-model-name", "student",
               "--engine", "torch", "--device", "cpu", "--no-trust-remote-code", "--host", "127.0.0.1",
               "--port", str(port), "--batch-size", "8", "--no-bettertransformer"]  # fmt: skip
    home = tempfile.TemporaryDirectory(prefix="infinity-home-")  # its .infinity_cache, not in the working folder
    env = os.environ | {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1",
                        "INFINITY_HOME": home.name}  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            output = server.stdout.read() if server.poll() is not None else ""
            raise SystemExit(f"Infinity did not start within {START_LIMIT_S} s:\n{output[-3000:]}")
        reply = httpx.post(f"{url}/embeddings", json={"model": "student", "input": TEXTS}, timeout=120)
        reply.raise_for_status()
        theirs = np.array([item["embedding"] for item in reply.json()["data"]])
    finally:
        server.terminate()
        server.wait(timeout=60)
        home.cleanup()
    ours = SentenceTransformer(str(args.student), device="cpu").encode(TEXTS)  # no trust_remote_code
    unit = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    difference = float(np.abs(unit - ours).max())
    sys.stdout.write(
        f"Infinity 0.0.78 (sentence-transformers 3.x, --no-trust-remote-code) served {args.student.name}: "
        f"{theirs.shape[1]} dims, max |difference| to sentence-transformers {difference:.2e}\n"
    )
    if difference > 1e-4:
        raise SystemExit("the vectors differ by more than 1e-4")


if __name__ == "__main__":
    main()
