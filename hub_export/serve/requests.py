"""Request and response logic of the embedding server, shared by both engines (local and Ray Serve).

The request schemas follow the OpenAI embeddings API (``POST /v1/embeddings``) and Hugging Face
text-embeddings-inference (``POST /embed``, ``GET /info``). :class:`Embedder` turns a validated
request into vectors with the loaded model; how requests are batched is the engine's job: the
local engine uses :class:`~hub_export.serve.batcher.DynamicBatcher` (a bounded queue merged into
token-budget batches), the Ray engine Ray Serve's ``@serve.batch``. Both call :meth:`Embedder.embed_many`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub_export.runtime.choice import loaded_label

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

INPUT_TYPES = ("query", "document")
MAX_CLIENT_BATCH = 2048  # OpenAI's limit on inputs per request
MAX_INPUT_CHARS = 1_000_000  # one text; longer ones get 413 before any tokenization


class ServerError(Exception):
    """An error answered with an HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.retry_after = status, message, param, retry_after


class OpenAIEmbeddingRequest(BaseModel):
    """``POST /v1/embeddings`` (OpenAI schema, plus ``input_type`` as hosted embedding APIs have it)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="one text or a list of texts")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)
    input_type: Literal["query", "document"] = "document"
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        return _check_texts(value)


class TEIEmbedRequest(BaseModel):
    """``POST /embed`` (text-embeddings-inference schema and defaults)."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    normalize: bool = True
    truncate: bool = False
    prompt_name: str | None = None
    dimensions: int | None = Field(default=None, gt=0)

    @field_validator("inputs", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        return _check_texts(value)


def _check_texts(value: Any) -> Any:
    """Refuse what is not a string or a non-empty list of strings of valid Unicode, naming the first bad item.

    JSON can carry lone surrogates (``"\\ud800"``) that no tokenizer takes: they are refused here, before the
    request reaches a batch shared with other clients.
    """
    if isinstance(value, list):
        if not value:
            raise ValueError("must not be empty")
        for position, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"item {position} is {type(item).__name__}, expected a string")
            _check_unicode(item, f"item {position}")
    elif not isinstance(value, str):
        raise ValueError(f"expected a string or a list of strings, got {type(value).__name__}")
    else:
        _check_unicode(value, "the text")
    return value


def _check_unicode(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{what} is not valid Unicode (a lone surrogate at character {error.start})") from None


@dataclass
class Limits:
    """Size limits of one request and of the server's queue."""

    max_client_batch: int = MAX_CLIENT_BATCH
    max_input_chars: int = MAX_INPUT_CHARS
    max_batch_tokens: int = 2048  # measured: 16384 padded merged short queries to the longest (0.67x vs 0.94x)
    max_queue_texts: int = 8192


@dataclass
class Embedder:
    """The loaded model and what the server reports about it; turns requests into vectors."""

    model: SentenceTransformer
    model_id: str
    limits: Limits = field(default_factory=Limits)
    recorded_dims: list[int] = field(default_factory=list)

    @property
    def dimension(self) -> int:
        """Output dimension of the model."""
        from hub_export.modeling import embedding_dimension_of

        return int(embedding_dimension_of(self.model))

    @property
    def matryoshka_dims(self) -> list[int]:
        """Dimensions a request may ask for: the full one, plus any the model records as Matryoshka prefixes."""
        return sorted({self.dimension, *self.recorded_dims}, reverse=True)

    def check_texts(self, texts: Sequence[str], field_name: str) -> None:
        """413 for too many texts or a text over the character limit."""
        if len(texts) > self.limits.max_client_batch:
            raise ServerError(
                413, f"{field_name}: {len(texts)} texts exceed the limit of {self.limits.max_client_batch}", field_name
            )
        for position, text in enumerate(texts):
            if len(text) > self.limits.max_input_chars:
                limit = self.limits.max_input_chars
                message = f"{field_name}[{position}]: {len(text)} characters exceed the limit of {limit}"
                raise ServerError(413, message, field_name)

    def check_dimensions(self, dimensions: int | None) -> int | None:
        """422 unless ``dimensions`` is the model's dimension or one of its recorded Matryoshka prefixes."""
        if dimensions is None or dimensions == self.dimension:
            return None
        if dimensions not in self.matryoshka_dims:
            raise ServerError(
                422,
                f"dimensions = {dimensions}: this model supports {self.matryoshka_dims} "
                "(it records no other Matryoshka dimensions)",
                "dimensions",
            )
        return dimensions

    def prompt_name(self, name: str | None, field_name: str) -> str | None:
        """422 for a prompt name the model does not have."""
        if name is not None and name not in self.model.prompts:
            valid = sorted(self.model.prompts)
            raise ServerError(422, f"{field_name} = {name!r}: unknown prompt name; valid: {valid}", field_name)
        return name

    @cached_property
    def counting_tokenizer(self) -> Any:
        """A copy of the model's tokenizer for counting: a fast tokenizer keeps per-call truncation/padding
        state, so the model thread's own one must not be called concurrently."""
        return copy.deepcopy(self.model.tokenizer)

    @cached_property
    def counting_thread(self) -> ThreadPoolExecutor:
        """One thread that counts tokens, off the event loop (a large request must not stall ``/health``)."""
        return ThreadPoolExecutor(1, thread_name_prefix="concat-embed-tokens")

    def token_counts(self, texts: Sequence[str], prompt_name: str | None, truncate: bool = True) -> list[int]:
        """Tokens of each text with its prompt under the model's (first part's) tokenizer."""
        prompt = self.model.prompts.get(prompt_name, "") if prompt_name else ""
        kwargs = {"truncation": True, "max_length": self.model.max_seq_length} if truncate else {}
        encoded = self.counting_tokenizer([prompt + text for text in texts], **kwargs)
        return [len(ids) for ids in encoded["input_ids"]]

    async def count_tokens(self, texts: Sequence[str], prompt_name: str | None, truncate: bool = True) -> list[int]:
        """:meth:`token_counts` on :attr:`counting_thread`, awaited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.counting_thread, self.token_counts, texts, prompt_name, truncate)

    def embed_many(
        self, requests: Sequence[tuple[Sequence[str], str | None]], wanted: Callable[[int], bool] | None = None
    ) -> list[np.ndarray | None]:
        """Vectors for several requests ``(texts, prompt name)``, in length-sorted token-budget batches per prompt.

        ``wanted(i)`` is asked before each token-budget batch: texts of requests no longer wanted (their client
        went away, the server is shutting down) are left out, and such a request gets ``None``.
        """
        from hub_export.runtime.batching import token_budget_batches, token_lengths

        wanted = wanted or (lambda index: True)
        results: list[np.ndarray | None] = [None] * len(requests)
        by_prompt: dict[str | None, list[int]] = {}
        for index, (_, prompt_name) in enumerate(requests):
            by_prompt.setdefault(prompt_name, []).append(index)
        for prompt_name, indices in by_prompt.items():
            texts = [text for index in indices for text in requests[index][0]]
            owners = [index for index in indices for _ in requests[index][0]]
            vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
            lengths = token_lengths(self.model, texts)
            for batch in token_budget_batches(lengths, self.limits.max_batch_tokens, max_batch_size=256):
                batch = [i for i in batch if wanted(owners[i])]
                if batch:
                    vectors[batch] = self.model.encode(
                        [texts[i] for i in batch], batch_size=len(batch), prompt_name=prompt_name, convert_to_numpy=True
                    )
            start = 0
            for index in indices:
                count = len(requests[index][0])
                results[index] = vectors[start : start + count] if wanted(index) else None
                start += count
        return results


def shape(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Cut to ``dimensions`` (a Matryoshka prefix, then re-normalized) and/or L2-normalize."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
        normalize = True
    if normalize:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    return vectors


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """One vector as OpenAI returns it: a float list, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


EmbedFn = Callable[[Sequence[str], str | None], Awaitable[np.ndarray]]


async def openai_response(embedder: Embedder, request: OpenAIEmbeddingRequest, embed: EmbedFn) -> dict[str, Any]:
    """The OpenAI ``/v1/embeddings`` answer (``data[].embedding``, ``index``, ``usage``) for a request."""
    texts = [request.input] if isinstance(request.input, str) else request.input
    embedder.check_texts(texts, "input")
    dimensions = embedder.check_dimensions(request.dimensions)
    vectors = shape(await embed(texts, request.input_type), dimensions, normalize=False)
    tokens = sum(await embedder.count_tokens(texts, request.input_type))
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encode_vector(vector, request.encoding_format)}
            for index, vector in enumerate(vectors)
        ],
        "model": embedder.model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def tei_response(embedder: Embedder, request: TEIEmbedRequest, embed: EmbedFn) -> list[list[float]]:
    """The TEI ``/embed`` answer (one float list per input) for a request."""
    texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
    embedder.check_texts(texts, "inputs")
    prompt_name = embedder.prompt_name(request.prompt_name, "prompt_name")
    dimensions = embedder.check_dimensions(request.dimensions)
    if not request.truncate:
        limit = embedder.model.max_seq_length
        for position, count in enumerate(await embedder.count_tokens(texts, prompt_name, truncate=False)):
            if count > limit:
                raise ServerError(
                    413,
                    f"inputs[{position}]: {count} tokens exceed the model's limit of {limit}; "
                    "send truncate=true to cut it",
                    "inputs",
                )
    vectors = shape(await embed(texts, prompt_name), dimensions, normalize=request.normalize)
    return vectors.tolist()


def tei_info(embedder: Embedder, engine: str) -> dict[str, Any]:
    """``GET /info`` in TEI's shape."""
    from importlib.metadata import version

    return {
        "model_id": embedder.model_id,
        "model_dtype": str(getattr(next(embedder.model.parameters(), None), "dtype", "float32")).removeprefix("torch."),
        "runtime": loaded_label(embedder.model),
        "model_type": {"embedding": {"pooling": "concat" if hasattr(embedder.model[0], "specs") else "model"}},
        "dimension": embedder.dimension,
        "matryoshka_dims": embedder.matryoshka_dims,
        "prompts": sorted(embedder.model.prompts),
        "max_input_length": embedder.model.max_seq_length,
        "max_batch_tokens": embedder.limits.max_batch_tokens,
        "max_client_batch_size": embedder.limits.max_client_batch,
        "max_queue_texts": embedder.limits.max_queue_texts,
        "engine": engine,
        "version": version("concat-embed"),
    }
