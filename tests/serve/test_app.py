"""``concat-embed serve``: the real server on a free port, called by the openai client, LangChain and plain HTTP.

The server runs in a thread on a socket that is listening before the test sends anything, so no
test waits for it to start. Vectors must equal ``model.encode_query`` / ``encode_document`` to 1e-5.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn

from hub_export.serve.app import bound_socket, create_app, load_embedder
from hub_export.serve.batcher import DynamicBatcher
from hub_export.serve.requests import Embedder, Limits, ServerError, tei_info

TEXTS = ["what is snowflake?", "The quick brown fox jumps over the lazy dog.", "é ü 日本 text", ""]
KEY = "sk-test"


class Running:
    """A uvicorn server in a thread on an already listening socket."""

    def __init__(self, app) -> None:
        self.sock = bound_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()


@pytest.fixture(scope="module")
def embedder(built_model) -> Embedder:
    return load_embedder(str(built_model), max_client_batch=8, max_input_chars=2000)


@pytest.fixture(scope="module")
def server(embedder):
    running = Running(create_app(embedder))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def expected(embedder) -> dict[str, np.ndarray]:
    model = embedder.model
    return {"query": model.encode_query(TEXTS), "document": model.encode_document(TEXTS)}


def test_openai_client_gets_encode_vectors_and_token_usage(server, embedder, expected) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    documents = client.embeddings.create(model="concat", input=TEXTS)  # the client asks for base64
    assert [item.index for item in documents.data] == [0, 1, 2, 3]
    assert np.abs(np.array([d.embedding for d in documents.data]) - expected["document"]).max() <= 1e-5
    queries = client.embeddings.create(
        model="concat", input=TEXTS, encoding_format="float", extra_body={"input_type": "query"}
    )
    assert np.abs(np.array([d.embedding for d in queries.data]) - expected["query"]).max() <= 1e-5
    prompt = embedder.model.prompts["query"]
    tokens = sum(len(ids) for ids in embedder.model.tokenizer([prompt + t for t in TEXTS])["input_ids"])
    assert queries.usage.prompt_tokens == queries.usage.total_tokens == tokens
    assert queries.model == "model"  # the served name: the folder's name, never its path
    single = client.embeddings.create(model="concat", input=TEXTS[1], encoding_format="float")
    assert np.abs(np.array(single.data[0].embedding) - expected["document"][1]).max() <= 1e-5


def test_langchain_openai_embeddings_match(server, expected) -> None:
    from langchain_openai import OpenAIEmbeddings

    common = {
        "model": "concat",
        "base_url": f"{server.url}/v1",
        "api_key": "unused",
        "check_embedding_ctx_length": False,
    }
    documents = OpenAIEmbeddings(**common).embed_documents(TEXTS)
    assert np.abs(np.array(documents) - expected["document"]).max() <= 1e-5
    queries = OpenAIEmbeddings(**common, model_kwargs={"extra_body": {"input_type": "query"}})
    assert np.abs(np.array(queries.embed_query(TEXTS[0])) - expected["query"][0]).max() <= 1e-5


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_tei_schema_defaults_and_options(server, embedder, expected) -> None:
    with httpx.Client(base_url=server.url) as http:
        normalized = http.post("/embed", json={"inputs": TEXTS}).json()
        assert np.abs(np.array(normalized) - unit(expected["document"])).max() <= 1e-5
        raw = http.post("/embed", json={"inputs": TEXTS[0], "normalize": False, "prompt_name": "query"}).json()
        assert np.abs(np.array(raw[0]) - expected["query"][0]).max() <= 1e-5
        long = "snow flake " * 150
        too_long = http.post("/embed", json={"inputs": [TEXTS[0], long]})
        assert too_long.status_code == 413
        assert too_long.json() == {
            "error": f"inputs[1]: 302 tokens exceed the model's limit of {embedder.model.max_seq_length}; "
            "send truncate=true to cut it",
            "error_type": "Validation",
        }
        cut = http.post("/embed", json={"inputs": [long], "truncate": True, "normalize": False}).json()
        assert np.abs(np.array(cut[0]) - embedder.model.encode_document([long])[0]).max() <= 1e-5
        info = http.get("/info").json()
        assert (info["dimension"], info["max_client_batch_size"], info["engine"]) == (96, 8, "local")
        assert http.get("/health").json() == {"status": "ok"}


def test_concurrent_clients_get_their_own_vectors_in_order(server, embedder) -> None:
    rng = np.random.default_rng(0)
    jobs = [
        ([TEXTS[i] + f" #{n}" for i in rng.permutation(4)[: 1 + n % 4]], ("query", "document")[n % 2])
        for n in range(32)
    ]

    def call(job):
        texts, input_type = job
        reply = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts, "input_type": input_type}, timeout=120)
        return np.array([item["embedding"] for item in reply.json()["data"]])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, jobs))
    for (texts, input_type), got in zip(jobs, results):
        want = embedder.model.encode(texts, prompt_name=input_type)
        assert np.abs(got - want).max() <= 1e-5


BAD_REQUESTS = [
    ("/v1/embeddings", b"{not json", 422, "body: invalid JSON"),
    ("/v1/embeddings", {"model": "m"}, 422, "input: Field required"),
    ("/v1/embeddings", {"input": []}, 422, "input: must not be empty"),
    ("/v1/embeddings", {"input": ["ok", 3]}, 422, "input: item 1 is int, expected a string"),
    ("/v1/embeddings", {"input": {"text": "x"}}, 422, "input: expected a string or a list of strings, got dict"),
    ("/v1/embeddings", {"input": "x", "input_type": "passage"}, 422, "input_type: Input should be 'query' or 'document'"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 422, "encoding_format: Input should be 'float' or 'base64'"),
    ("/v1/embeddings", {"input": "x", "dimensions": 5}, 422, "dimensions = 5: this model supports [96]"),
    ("/v1/embeddings", {"input": "x", "dimensions": -1}, 422, "dimensions: Input should be greater than 0"),
    ("/v1/embeddings", {"input": ["x"] * 9}, 413, "input: 9 texts exceed the limit of 8"),
    ("/v1/embeddings", {"input": ["y" * 2001]}, 413, "input[0]: 2001 characters exceed the limit of 2000"),
    ("/embed", {"inputs": []}, 422, "inputs: must not be empty"),
    ("/embed", {"inputs": "x", "prompt_name": "qurey"}, 422, "prompt_name = 'qurey': unknown prompt name; valid: ['document', 'query']"),
    ("/embed", {"inputs": "x", "normalize": "maybe"}, 422, "normalize: Input should be a valid boolean"),
    ("/v1/embeddings", b'{"input": "\\ud800x"}', 422, "input: the text is not valid Unicode (a lone surrogate at character 0)"),
    ("/embed", b'{"inputs": ["ok", "a\\udfffb"], "truncate": false}', 422, "inputs: item 1 is not valid Unicode (a lone surrogate at character 1)"),
    ("/v1/embeddings", b'{"input": "caf\xe9"}', 422, "body: not valid UTF-8 JSON"),
    ("/v1/embeddings", b"x" * 2_000_001, 413, "body: the request is larger than the limit of 2000000 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("route", "body", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_their_status_and_the_server_keeps_answering(server, route, body, status, message) -> None:
    with httpx.Client(base_url=server.url) as http:
        if isinstance(body, bytes):
            reply = http.post(route, content=body, headers={"content-type": "application/json"})
        else:
            reply = http.post(route, json=body)
        assert reply.status_code == status
        error = reply.json()["error"]
        assert message in (error["message"] if route.startswith("/v1/") else error)
        assert http.post("/v1/embeddings", json={"input": "still here"}).status_code == 200


def test_api_key_is_required_except_for_health(embedder) -> None:
    running = Running(create_app(embedder, api_key=KEY))
    try:
        with httpx.Client(base_url=running.url) as http:
            assert http.post("/v1/embeddings", json={"input": "x"}).status_code == 401
            wrong = http.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "missing or wrong API key" in wrong.json()["error"]
            ok = http.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": f"Bearer {KEY}"})
            assert ok.status_code == 200
            assert http.get("/metrics").status_code == 401 and http.get("/health").status_code == 200
    finally:
        running.stop()


def test_waiting_requests_are_merged_into_one_batch(embedder) -> None:
    batches: list[tuple[int, int]] = []
    requests = [([TEXTS[i % 4]] * (1 + i % 3), ("query", "document")[i % 2]) for i in range(12)]

    async def run() -> list[np.ndarray]:
        batcher = DynamicBatcher(embedder, on_batch=lambda texts, queued: batches.append((texts, queued)))
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher(texts, prompt) for texts, prompt in requests))
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert batches == [(sum(len(texts) for texts, _ in requests), 0)]
    for (texts, prompt), got in zip(requests, results):
        assert np.abs(got - embedder.model.encode(texts, prompt_name=prompt)).max() <= 1e-5


def test_full_queue_answers_503_with_retry_after(embedder) -> None:
    small = Embedder(embedder.model, "m", Limits(max_queue_texts=4))

    async def overflow() -> ServerError:
        batcher = DynamicBatcher(small)
        batcher.queued_texts = 3  # three texts already wait for the model
        with pytest.raises(ServerError) as info:
            await batcher(["a", "b"], None)
        return info.value

    error = asyncio.run(overflow())
    assert (error.status, error.retry_after) == (503, 1) and "3 texts are waiting" in error.message

    async def busy(texts, prompt_name):
        raise ServerError(503, "server overloaded: 4 texts are waiting; retry later", retry_after=1)

    running = Running(create_app(embedder, embed=busy))
    try:
        reply = httpx.post(f"{running.url}/v1/embeddings", json={"input": "x"})
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
        assert reply.json()["error"]["message"] == "server overloaded: 4 texts are waiting; retry later"
    finally:
        running.stop()


def test_metrics_count_requests_batches_and_tokens(server) -> None:
    httpx.post(f"{server.url}/v1/embeddings", json={"input": ["a", "b"]})
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("concat_embed_requests_total", "concat_embed_request_seconds_bucket", "concat_embed_batch_texts_count",
                 "concat_embed_queue_texts", "concat_embed_tokens_total"):  # fmt: skip
        assert name in text
    assert 'concat_embed_requests_total{route="/v1/embeddings",status="200"}' in text


def test_base64_is_little_endian_float32(server, expected) -> None:
    reply = httpx.post(f"{server.url}/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "base64"}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in reply["data"]])
    assert np.abs(decoded - expected["document"][:2]).max() <= 1e-5


def test_cli_serves_on_a_free_port_of_localhost(built_model, expected, tmp_path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "hub_export", "serve", str(built_model), "--port", "0", "--quantization", "none"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        line = process.stderr.readline()  # written once the socket listens and the model is loaded
        assert line.startswith(f"serving {built_model} on http://127.0.0.1:"), line
        url = line.split(" on ")[1].split()[0]
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS, "input_type": "query"}, timeout=120)
        got = np.array([item["embedding"] for item in reply.json()["data"]])
        assert np.abs(got - expected["query"]).max() <= 1e-5
    finally:
        process.terminate()
        process.wait()


def test_info_reports_the_model_and_its_limits(server, embedder) -> None:
    info = httpx.get(f"{server.url}/info").json()
    assert info["dimension"] == 96 and info["matryoshka_dims"] == [96] and info["prompts"] == ["document", "query"]
    assert info["runtime"] == "torch" and info["engine"] == "local" and info["model_dtype"] == "float32"
    assert info["max_input_length"] == embedder.model.max_seq_length == 64
    assert (info["max_batch_tokens"], info["max_client_batch_size"], info["max_queue_texts"]) == (2048, 8, 8192)


@pytest.mark.slow
def test_ray_engine_answers_like_the_local_one(built_model, expected, tmp_path) -> None:
    probe = bound_socket("127.0.0.1", 0)  # a free port for Ray Serve's proxy
    port = probe.getsockname()[1]
    probe.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "hub_export", "serve", str(built_model), "--engine", "ray", "--port", str(port),
         "--quantization", "none"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        for line in process.stderr:  # Ray logs first; ours is written once the application answers
            if line.startswith("serving "):
                break
        assert line.startswith(f"serving {built_model} on http://127.0.0.1:{port} (ray engine"), line
        url = f"http://127.0.0.1:{port}"
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS, "input_type": "query"}, timeout=120)
        assert np.abs(np.array([d["embedding"] for d in reply.json()["data"]]) - expected["query"]).max() <= 1e-5
        tei = httpx.post(f"{url}/embed", json={"inputs": TEXTS, "normalize": False}, timeout=120).json()
        assert np.abs(np.array(tei) - expected["document"]).max() <= 1e-5
        bad = httpx.post(f"{url}/v1/embeddings", json={"input": []}, timeout=120)
        assert bad.status_code == 422 and bad.json()["error"]["message"] == "input: must not be empty"
        assert httpx.get(f"{url}/info", timeout=120).json()["engine"] == "ray"
    finally:
        process.terminate()
        process.wait()


def test_auto_runtime_serves_this_cpus_int8_path_close_to_the_exact_vectors(built_model, expected) -> None:
    from hub_export.modeling import auto_quantization, cpu_family
    from hub_export.runtime.choice import Runtime, choose_runtime

    assert choose_runtime(str(built_model)) == Runtime("torch", None)  # the default: the exact model
    runtime = choose_runtime(str(built_model), "auto", "auto")  # the opt-in fast path
    assert runtime == Runtime("torch", "auto")  # this folder has no exported files
    embedder = load_embedder(str(built_model), runtime)
    chosen = auto_quantization(cpu_family(), cuda=False)
    info = tei_info(embedder, "local")
    assert info["runtime"] == (f"torch+{chosen}" if chosen else "torch")
    vectors = embedder.model.encode_query(TEXTS)
    cosines = (
        np.sum(vectors * expected["query"], axis=1)
        / np.linalg.norm(vectors, axis=1)
        / np.linalg.norm(expected["query"], axis=1)
    )
    assert cosines.min() > 0.99
    assert choose_runtime("sentence-transformers/all-MiniLM-L6-v2") == Runtime()  # not a local combined model
    with pytest.raises(ValueError, match="needs a local combined model folder"):
        choose_runtime("sentence-transformers/all-MiniLM-L6-v2", "onnx")
    assert choose_runtime("sentence-transformers/all-MiniLM-L6-v2", "auto", "auto") == Runtime()


def test_health_answers_while_a_request_is_being_counted(embedder, monkeypatch) -> None:
    """Token counting runs off the event loop: a huge request (999,999-character texts took 33 s) stalls nothing."""
    counting, answered = threading.Event(), threading.Event()
    original = embedder.token_counts

    def slow_count(texts, prompt_name, truncate=True):
        counting.set()
        assert answered.wait(300), "/health was not answered while tokens were counted"
        return original(texts, prompt_name, truncate)

    monkeypatch.setattr(embedder, "token_counts", slow_count)
    running = Running(create_app(embedder))
    try:
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(httpx.post, f"{running.url}/embed", json={"inputs": ["a", "b"]}, timeout=300)
            assert counting.wait(300)
            assert httpx.get(f"{running.url}/health", timeout=60).json() == {"status": "ok"}
            answered.set()
            assert reply.result().status_code == 200
    finally:
        running.stop()


def test_a_body_over_the_limit_is_refused_also_without_a_length(server) -> None:
    def chunks():
        for _ in range(40):
            yield b"x" * 100_000  # 4 MB in all, sent chunked: no Content-Length to check

    reply = httpx.post(f"{server.url}/embed", content=chunks(), headers={"content-type": "application/json"})
    assert reply.status_code == 413
    assert reply.json() == {
        "error": "body: the request is larger than the limit of 2000000 bytes",
        "error_type": "Validation",
    }
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_metrics_label_unknown_paths_as_one(server) -> None:
    with httpx.Client(base_url=server.url) as http:
        for n in range(20):
            assert http.get(f"/random-{n}-" + "z" * 2000).status_code == 404
        text = http.get("/metrics").text
    assert "random-" not in text and 'concat_embed_requests_total{route="other",status="404"} 20.0' in text


def test_a_client_that_goes_away_cancels_its_work(embedder) -> None:
    import socket

    started, cancelled = threading.Event(), threading.Event()

    async def embed(texts, prompt_name):
        started.set()
        try:
            await asyncio.sleep(3600)  # a batch that would take long; only cancelling ends it here
        except asyncio.CancelledError:
            cancelled.set()
            raise

    running = Running(create_app(embedder, embed=embed))
    try:
        body = b'{"input": "abandoned"}'
        client = socket.create_connection(("127.0.0.1", running.sock.getsockname()[1]))
        client.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        assert started.wait(300)
        client.close()
        assert cancelled.wait(300), "the abandoned request's work was not cancelled"
        assert httpx.get(f"{running.url}/health").status_code == 200
    finally:
        running.stop()


def test_responses_and_info_report_the_served_name_never_a_path(built_model) -> None:
    named = load_embedder(str(built_model), served_name="team/concat-v2")
    assert tei_info(named, "local")["model_id"] == "team/concat-v2"
    default = load_embedder(str(built_model))
    assert default.model_id == "model" and str(built_model.parent) not in tei_info(default, "local")["model_id"]


@pytest.mark.slow
def test_sigterm_answers_every_request_in_flight_with_vectors_or_503(built_model) -> None:
    import signal

    process = subprocess.Popen(
        [sys.executable, "-m", "hub_export", "serve", str(built_model), "--port", "0", "--grace-period", "60"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stderr.readline().split(" on ")[1].split()[0]
        texts = [TEXTS[1] * 4] * 64

        def call(_):
            return httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=300)

        with ThreadPoolExecutor(12) as pool:
            replies = [pool.submit(call, n) for n in range(12)]
            while "concat_embed_batch_texts_count" not in httpx.get(f"{url}/metrics").text:
                pass  # the first batch has started
            process.send_signal(signal.SIGTERM)
            replies = [reply.result() for reply in replies]
        assert process.wait(timeout=300) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        err = process.stderr.read()
    finally:
        process.kill()
    assert "Traceback" not in err, err[-3000:]
    assert {reply.status_code for reply in replies} <= {200, 503}
    for reply in replies:
        if reply.status_code == 503:
            assert reply.headers["retry-after"] == "1" and "shutting down" in reply.json()["error"]["message"]
        else:
            assert len(reply.json()["data"]) == 64
