"""The engine behind `ask`, `chat` and `serve-cache`: a loaded model, its tokenizer and documents.

A document is read, normalised, tokenized and encoded once; its state (the context encoders'
KV caches and the top-level latents) is kept in memory and in the on-disk cache. Each question
forks that state (the document's caches are shared read-only, never copied or modified), encodes
the document tail and the question, and decodes the answer.

Normalisation: a document is decoded as UTF-8, a leading byte-order mark is removed, CRLF and
lone CR line endings become LF, and the text is put in Unicode NFC (`photon_cli.text`). The
cache key covers the normalised text, so the same text saved with LF or CRLF endings, with or
without a BOM, shares one cache and gets the same answers. The policy name is stored in every
cache file's metadata (`normalization`).

Every document token is either reused from the cache file or encoded in this process. The
usage of each answer reports both counts, and the session records why a cache file found on
disk was not used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from photon_cli.config import PhotonConfig
from photon_cli.doc_cache import (CACHE_FORMAT_VERSION, PAUSE_ENV, CacheError, CacheStore, cache_key,
                                  describe_difference, metadata_json, one_line, pause_for_tests,
                                  read_cache)
from photon_cli.generation import (RECGEN, MODES, PhotonState, VanillaState, empty_state,
                                   encode_units, fork, photon_steps, prefill,
                                   vanilla_prefill, vanilla_steps)
from photon_cli.kv_cache import KVCache, StackCache
from photon_cli.layers import row_independent
from photon_cli.model import Photon
from photon_cli.prompt import EOS_ID, answer_lead, document_tokens, question_tokens
from photon_cli.sampling import Sampler, SamplingOptions
from photon_cli.streaming import StopMatcher, TextStream
from photon_cli.text import normalize_text
from photon_cli.tokenizer import load_tokenizer, tokenizer_sha256
from photon_cli.weights import WeightsError, load_weights

log = logging.getLogger(__name__)

NORMALIZATION = "strip-bom,crlf-to-lf,nfc/v1"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
PREVIEW_CHARS = 120


class InputError(ValueError):
    """Bad user input (document, question, option); the message names the value and the fix."""


@dataclass
class Document:
    text: str  # normalised
    name: str
    content_sha256: str  # of the normalised text, UTF-8


def read_document(source: str | Path, stdin=None) -> Document:
    """Read a UTF-8 text file (or '-' for stdin) and normalise it; reject what is not text."""
    name = str(source)
    if name == "-":
        data = (stdin or sys.stdin.buffer).read()
        name = "<stdin>"
    else:
        path = Path(source)
        if path.is_dir():
            raise InputError(f"document {path} is a directory; pass a text file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"document {path} not found") from None
        except OSError as error:
            raise InputError(f"cannot read document {path}: {error.strerror or error}; check that it "
                             "is a readable file") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(f"document {name} looks binary (NUL byte at offset {nul}); pass a UTF-8 text file")
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"document {name} is not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}); "
            f"convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None
    text = normalize_text(raw)
    if not text.strip():
        raise InputError(f"document {name} is empty (no text after removing whitespace and byte-order mark)")
    return Document(text, name, hashlib.sha256(text.encode()).hexdigest())


def normalize_question(question: str) -> str:
    """Normalise a question like a document and strip it; raise InputError if nothing is left."""
    text = normalize_text(question).strip()
    if not text:
        raise InputError("the question is empty; pass the text to ask about the document")
    return text


@dataclass
class Usage:
    document_tokens: int = 0  # <|document|> marker + document text tokens
    reused_tokens: int = 0  # document tokens whose state was loaded from the cache file
    encoded_tokens: int = 0  # document tokens encoded by this process (document_tokens - reused_tokens)
    question_tokens: int = 0  # padding, question markers and question tokens encoded for this answer
    completion_tokens: int = 0


@dataclass
class Timings:
    document_ms: float = 0.0  # cache load or document prefill
    query_ms: float = 0.0  # encoding the document tail and the question
    first_token_ms: float = 0.0  # from the start of this answer to its first token
    decode_tokens_per_s: float = 0.0  # completion tokens of all rows per second after query encoding
    total_ms: float = 0.0


@dataclass
class Answer:
    text: str = ""
    finish_reason: str = ""  # eos | length | stop | interrupted | error
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    truncated: bool = False
    error: str | None = None

    def to_dict(self) -> dict:
        return {"answer": self.text, "finish_reason": self.finish_reason, "usage": asdict(self.usage),
                "timings": {k: round(v, 2) for k, v in asdict(self.timings).items()},
                "truncated": self.truncated, "error": self.error}


@dataclass
class Session:
    """A document ready for questions."""

    document: Document
    doc_ids: list[int]  # <|document|> + document token ids
    cached_len: int  # leading doc_ids covered by `state`
    state: PhotonState | VanillaState
    truncated: bool
    cache_status: str  # built | loaded | rebuilt | disabled | not saved
    cache_path: Path | None
    cache_bytes: int
    document_ms: float
    reused_tokens: int  # document tokens whose state was loaded from the cache file
    # Why a cache file on disk was not used (rebuilt) or the new one was not written (not saved).
    cache_reason: str | None = None

    @property
    def tail(self) -> list[int]:
        return self.doc_ids[self.cached_len:]

    @property
    def cache_summary(self) -> str:
        return self.cache_status + (f" ({self.cache_reason})" if self.cache_reason else "")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if base == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but this torch build sees no CUDA device; use --device cpu")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # float32 on CPU: single-query bfloat16 attention takes a slow path on many CPUs.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[name]


def peak_memory_mib(device: torch.device) -> float:
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = rss_kib / 1024
    if device.type == "cuda":
        peak += torch.cuda.max_memory_allocated(device) / 2**20
    return peak


class Engine:
    def __init__(self, model_path: Path, tokenizer_path: Path | None = None, device: str = "auto",
                 dtype: str = "auto", cache_dir: Path | None = None, use_cache: bool = True,
                 max_context: int | None = None):
        if max_context is not None and max_context < 1:
            raise InputError(f"--max-context {max_context} must be at least 1 token")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        loaded = load_weights(Path(model_path), self.device, self.dtype)
        self.model, self.config, self.metadata = loaded.model, loaded.config, loaded.metadata
        self.fingerprint = loaded.fingerprint
        self.model_path = loaded.path
        self.is_photon = isinstance(self.config, PhotonConfig)
        self.unit = self.config.tokens_per_unit if self.is_photon else 1
        self.max_context = max_context or self.config.max_context

        tokenizer_path = Path(tokenizer_path) if tokenizer_path else self.model_path.parent / "tokenizer.json"
        try:
            self.tokenizer = load_tokenizer(tokenizer_path)
        except (FileNotFoundError, ValueError) as error:
            raise WeightsError(str(error)) from None
        self.tokenizer_sha256 = tokenizer_sha256(tokenizer_path)
        expected = self.metadata.get("tokenizer_sha256")
        if expected and expected != self.tokenizer_sha256:
            raise WeightsError(
                f"tokenizer {tokenizer_path} (sha256 {self.tokenizer_sha256[:12]}) does not match the "
                f"weights {self.model_path.name} (trained with sha256 {expected[:12]}); pass --tokenizer "
                "with the tokenizer.json shipped beside the weights"
            )
        if self.tokenizer.get_vocab_size() > self.config.vocab_size:
            raise WeightsError(f"tokenizer has {self.tokenizer.get_vocab_size()} tokens but the model "
                               f"only {self.config.vocab_size}")
        self.store = CacheStore(cache_dir) if use_cache else None

    # ---- documents -------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def cache_fields(self, document: Document, token_count: int, truncated: bool) -> dict[str, str]:
        return {
            "format_version": str(CACHE_FORMAT_VERSION),
            "weights_fingerprint": self.fingerprint,
            "model_kind": "photon" if self.is_photon else "vanilla",
            "config": metadata_json(self.config.to_dict()),
            "tokenizer_sha256": self.tokenizer_sha256,
            "normalization": NORMALIZATION,
            "dtype": str(self.dtype).removeprefix("torch."),
            "content_sha256": document.content_sha256,
            "token_count": str(token_count),
            "truncated": str(truncated),
        }

    def budget_ids(self, document: Document, truncate: bool) -> tuple[list[int], bool]:
        """Tokenize a document and apply the token budget; raise InputError when it is over."""
        ids = self.tokenize(document.text)
        if len(ids) <= self.max_context:
            return ids, False
        if not truncate:
            raise InputError(
                f"document {document.name} has {len(ids)} tokens, over the budget of {self.max_context} "
                f"tokens; pass --truncate to keep only the first {self.max_context} tokens, or raise "
                "--max-context"
            )
        log.warning("document %s truncated from %d to its first %d tokens (--truncate); text after "
                    "that is not seen by the model", document.name, len(ids), self.max_context)
        return ids[:self.max_context], True

    def open(self, document: Document, truncate: bool = False,
             progress: Callable[[int, int], None] | None = None) -> Session:
        """Tokenize a document and get its state from the cache, or encode it and save the cache.

        Only whole meta-contexts are encoded and cached; the tail after them is encoded with each
        question. A cache file that cannot be used is reported (log warning and
        `Session.cache_reason`) and rebuilt; a cache that cannot be written leaves the answer
        unaffected.
        """
        started = time.perf_counter()
        ids, truncated = self.budget_ids(document, truncate)
        doc_ids = document_tokens(ids)
        cached_len = len(doc_ids) // self.unit * self.unit
        fields = self.cache_fields(document, len(doc_ids), truncated)
        key = cache_key(fields)
        expected = {name: value for name, value in fields.items() if name != "truncated"}
        expected |= {"key": key, "cached_tokens": str(cached_len)}

        def finish(state, status: str, path: Path | None = None, reused: int = 0,
                   reason: str | None = None) -> Session:
            size = path.stat().st_size if path else 0
            return Session(document, doc_ids, cached_len, state, truncated, status, path, size,
                           (time.perf_counter() - started) * 1e3, reused, reason)

        progress = self._pausing(progress)
        if self.store is None:
            return finish(self._encode(doc_ids[:cached_len], progress), "disabled")

        path = self.store.path_for(key)
        with self.store.lock(key):
            reason = None
            if path.exists():
                try:
                    state = self._load(path, expected, doc_ids, cached_len)
                    return finish(state, "loaded", path, cached_len)
                except CacheError as error:
                    reason = str(error)
                    log.warning("cache %s not used: %s; rebuilding it", path.name, reason)
            else:
                reason = self._other_version_reason(document, key, expected)
            state = self._encode(doc_ids[:cached_len], progress)
            status = "built" if reason is None else "rebuilt"
            meta = {**{k: v for k, v in expected.items() if k != "key"},
                    "source_name": document.name, "preview": document.text[:PREVIEW_CHARS]}
            try:
                self.store.write(key, self._state_tensors(state, doc_ids), meta)
            except OSError as error:
                problem = one_line(error.strerror or error)
                log.warning("document cache not saved to %s: %s; the answer is unaffected, but the "
                            "next run encodes the document again", self.store.directory, problem)
                return finish(state, "not saved", None, 0, problem)
            return finish(state, status, path, 0, reason)

    def _other_version_reason(self, document: Document, key: str, expected: dict) -> str | None:
        """Why a cache of the same text under another key (other weights, dtype...) is not used."""
        others = self.store.find_other_versions(document.content_sha256, key)
        if not others:
            return None
        reason = "a cache of this document exists for " + describe_difference(expected, others[0])
        log.warning("%s; building a new one", reason)
        return reason

    def _load(self, path: Path, expected: dict, doc_ids: list[int], cached_len: int):
        cached = read_cache(path, expected)
        if cached.tensors["tokens"].tolist() != doc_ids:
            raise CacheError("corrupt cache file: its token ids differ from the document's")
        return self._state_from_tensors(cached.tensors, cached_len)

    @staticmethod
    def _pausing(progress: Callable[[int, int], None] | None) -> Callable[[int, int], None] | None:
        """Wrap a prefill progress callback with the PHOTON_TEST_PAUSE hook."""
        if os.environ.get(PAUSE_ENV) != "prefill":
            return progress

        def update(done: int, total: int) -> None:
            if progress:
                progress(done, total)
            pause_for_tests("prefill")

        return update

    def _encode(self, tokens: list[int], progress) -> PhotonState | VanillaState:
        tensor = torch.tensor([tokens], dtype=torch.long, device=self.device)
        if self.is_photon:
            if not tokens:
                return empty_state(self.model, 1)
            return prefill(self.model, tensor, progress=progress)
        return vanilla_prefill(self.model, tensor, progress=progress)

    # ---- cache (de)serialisation -----------------------------------------------------------

    def _state_tensors(self, state, doc_ids: list[int]) -> dict[str, torch.Tensor]:
        tensors = {"tokens": torch.tensor(doc_ids, dtype=torch.int32)}
        if self.is_photon:
            for level, cache in enumerate(state.caches):
                for i, layer in enumerate(cache.layers):
                    k, v = layer.keys_values()
                    tensors[f"encoder.{level}.layer.{i}.k"] = k
                    tensors[f"encoder.{level}.layer.{i}.v"] = v
            if state.top is not None:
                tensors["top"] = state.top
            for level, carry in enumerate(state.carries):
                tensors[f"carry.{level}"] = carry
        else:
            for i, layer in enumerate(state.cache.layers):
                k, v = layer.keys_values()
                tensors[f"layer.{i}.k"], tensors[f"layer.{i}.v"] = k, v
        return tensors

    def _expect(self, tensors: dict, name: str, shape: tuple) -> torch.Tensor:
        tensor = tensors.get(name)
        if tensor is None or tuple(tensor.shape) != shape:
            found = None if tensor is None else tuple(tensor.shape)
            raise CacheError(f"corrupt cache file: tensor {name} has shape {found}, expected {shape}")
        if not tensor.is_floating_point():
            raise CacheError(f"corrupt cache file: tensor {name} has dtype {tensor.dtype}, expected floats")
        if not torch.isfinite(tensor.float()).all():
            raise CacheError(f"corrupt cache file: tensor {name} holds non-finite values")
        return tensor.to(device=self.device, dtype=self.dtype)

    def _state_from_tensors(self, tensors: dict, cached_len: int) -> PhotonState | VanillaState:
        c = self.config
        H, K, D = c.n_heads, c.head_dim, c.d_model
        if self.is_photon:
            caches = []
            for level, stack in enumerate(self.model.encoders):
                n = cached_len // c.tokens_per_level_unit(level + 1)
                layers = []
                for i in range(len(stack.blocks)):
                    k = self._expect(tensors, f"encoder.{level}.layer.{i}.k", (1, H, n, K))
                    v = self._expect(tensors, f"encoder.{level}.layer.{i}.v", (1, H, n, K))
                    layers.append(KVCache.from_tensors(k, v))
                caches.append(StackCache(layers))
            top = self._expect(tensors, "top", (1, D)) if cached_len else None
            carries = [self._expect(tensors, f"carry.{level}", (1, D)) for level in range(c.n_levels - 1)]
            return PhotonState(caches, top, carries, cached_len)
        layers = []
        for i in range(c.n_layers):
            k = self._expect(tensors, f"layer.{i}.k", (1, H, cached_len, K))
            v = self._expect(tensors, f"layer.{i}.v", (1, H, cached_len, K))
            layers.append(KVCache.from_tensors(k, v))
        return VanillaState(StackCache(layers), None, cached_len)

    # ---- answers ---------------------------------------------------------------------------

    def question_ids(self, session: Session, question: str) -> list[int]:
        """The tokens read for one question: document tail, padding, question markers, answer lead.

        PHOTON encodes all but the answer lead as whole meta-contexts; the lead (C_1 padding
        tokens) is forced into the first decoded meta-context.
        """
        text = normalize_question(question)
        # The vanilla baseline reads the same layout (default lead) so both models see one format.
        lead = answer_lead(self.config.chunk_sizes[0]) if self.is_photon else answer_lead()
        return session.tail + question_tokens(len(session.doc_ids), self.tokenize(text), self.unit) + lead

    def answer(self, session: Session, question: str, options: SamplingOptions, mode: str = RECGEN,
               on_text: Callable[[str], None] | None = None) -> Answer:
        query = self.question_ids(session, question)
        return self.generate_batch(session, [query], options, mode, on_text)[0]

    def generate_batch(self, session: Session, queries: list[list[int]], options: SamplingOptions,
                       mode: str = RECGEN, on_text: Callable[[str], None] | None = None) -> list[Answer]:
        """Answer queries of equal length together against the shared document state.

        PHOTON encodes the whole meta-contexts of the queries and forces the remaining tokens
        (the answer lead, or a plain prompt's tail) into the first decoded one. Each row is computed exactly as
        if it were alone (`layers.row_independent`, one random generator per row), so an answer
        does not depend on the batch it is in. `on_text` receives row 0's text as it streams.
        KeyboardInterrupt during decoding stops it; the answers so far are returned with
        finish_reason "interrupted".
        """
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; use {' or '.join(MODES)}")
        if len({len(q) for q in queries}) != 1:
            raise ValueError("generate_batch needs queries of one length; group them first")
        started = time.perf_counter()
        B = len(queries)
        query = torch.tensor(queries, dtype=torch.long, device=self.device)
        sampler = Sampler(options, B, self.config.vocab_size, self.device)

        def pick(logits: torch.Tensor) -> torch.Tensor:
            tokens = sampler(logits)
            sampler.observe(tokens)
            return tokens

        document_encoded = len(session.doc_ids) - session.reused_tokens
        answers = [Answer(usage=Usage(len(session.doc_ids), session.reused_tokens, document_encoded,
                                      len(q) - len(session.tail)), truncated=session.truncated)
                   for q in queries]
        streams = [TextStream(self.tokenizer) for _ in queries]
        stops = [StopMatcher(options.stop) for _ in queries]
        query_done = first_token_at = None
        with row_independent():
            steps = self._start(session, query, pick, mode)
            query_done = time.perf_counter()
            try:
                for tokens in steps:
                    first_token_at = first_token_at or time.perf_counter()
                    for row, answer in enumerate(answers):
                        if not answer.finish_reason:
                            self._consume(answer, tokens[row].tolist(), streams[row], stops[row],
                                          options.max_tokens, on_text if row == 0 else None)
                    if all(a.finish_reason for a in answers):
                        break
                    pause_for_tests("decode")
            except KeyboardInterrupt:
                for answer in answers:
                    answer.finish_reason = answer.finish_reason or "interrupted"
        finished = time.perf_counter()
        decode_s = finished - query_done
        completion = sum(a.usage.completion_tokens for a in answers)
        for row, answer in enumerate(answers):
            if answer.finish_reason in ("length", "interrupted", "eos"):
                tail = stops[row].feed(streams[row].flush()) + stops[row].flush()
                answer.text += tail
                if on_text and row == 0 and tail:
                    on_text(tail)
            answer.timings = Timings(
                document_ms=session.document_ms, query_ms=(query_done - started) * 1e3,
                first_token_ms=((first_token_at or finished) - started) * 1e3,
                decode_tokens_per_s=completion / decode_s if decode_s > 0 else 0.0,
                total_ms=(finished - started) * 1e3)
        return answers

    def _start(self, session: Session, query: torch.Tensor, pick, mode: str):
        """Fork the document state for the batch, encode the queries, return the step iterator."""
        B = query.shape[0]
        if self.is_photon:
            state = fork(session.state, B)
            whole = query.shape[1] // self.unit * self.unit  # the queries start on a boundary
            encode_units(self.model, state, query[:, :whole])
            return photon_steps(self.model, state, query[:, whole:], pick, mode)
        cache = session.state.cache.share_prefix(B)
        if query.shape[1] == 0:
            logits = session.state.last_logits.expand(B, -1)
        else:
            with torch.no_grad():
                logits = self.model(query, cache)[:, -1]
        return vanilla_steps(self.model, VanillaState(cache, logits, session.cached_len + query.shape[1]), pick)

    @staticmethod
    def _consume(answer: Answer, tokens: list[int], stream: TextStream, stop: StopMatcher,
                 max_tokens: int, on_text) -> None:
        """Add one step's tokens to an answer, stopping at EOS, a stop string or max_tokens.

        Tokens after the stopping one (the rest of a meta-context) are dropped unseen.
        """
        for token in tokens:
            if token == EOS_ID:
                answer.finish_reason = "eos"
                return
            answer.usage.completion_tokens += 1
            piece = stop.feed(stream.push(token))
            answer.text += piece
            if on_text and piece:
                on_text(piece)
            if stop.stopped:
                answer.finish_reason = "stop"
                return
            if answer.usage.completion_tokens >= max_tokens:
                answer.finish_reason = "length"
                return

    def describe(self) -> dict:
        c = self.config
        return {"weights": str(self.model_path), "fingerprint": self.fingerprint[:16],
                "kind": "photon" if self.is_photon else "vanilla",
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "train_context": c.train_context, "max_context": self.max_context,
                "training": json.loads(self.metadata.get("training", "{}"))}
