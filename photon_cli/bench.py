"""Side-by-side speed and memory benchmark: PHOTON (RecGen, HierGen), the vanilla baseline and,
when `transformers` is installed, its LlamaForCausalLM at the same dimensions.

Every figure comes from one process and one run, with the same dtype and threads for all models.
The figures are cache bytes per sample (measured from the cache tensors and checked against the
formula), peak RSS, prefill tokens/s, decode tokens/s, time to first token, and decode tokens/s
per GiB of cache (TPM). Ratios are taken against the vanilla baseline measured in the same run.
Caches hold real values (a prefill of random tokens), never untouched torch.zeros pages.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from photon_cli.config import PRESETS, PhotonConfig, VanillaConfig
from photon_cli.generation import (HIERGEN, RECGEN, PhotonState, VanillaState, drop_lower_caches, fork,
                                   photon_steps, prefill, vanilla_prefill, vanilla_steps)
from photon_cli.model import Photon
from photon_cli.vanilla import Vanilla

log = logging.getLogger(__name__)

# The PHOTON paper's prefill-heavy and decode-heavy regimes (prompt tokens, new tokens).
REGIMES = {"prefill-heavy": (2048, 128), "decode-heavy": (128, 2048)}


@dataclass(frozen=True)
class Setting:
    name: str  # regime or "document"
    prompt: int
    new_tokens: int
    batch: int
    sharing: str  # "per-query" (each query copies the state, as in the PHOTON paper) or "shared"


class RssSampler:
    """Peak resident set size during a block, sampled every few milliseconds from /proc."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def formula_bytes(config, tokens: int, kind: str, bytes_per_value: int) -> int:
    """Global KV bytes per sequence of `tokens` tokens (the architecture notes' formulas)."""
    D, b = config.d_model, bytes_per_value
    if kind == "vanilla":
        return 2 * config.n_layers * D * b * tokens
    if kind == RECGEN:
        return 2 * config.encoder_layers[-1] * D * b * (tokens // config.tokens_per_unit)
    return sum(2 * n * D * b * (tokens // config.tokens_per_level_unit(level + 1))
               for level, n in enumerate(config.encoder_layers))


def per_query_copy(state: PhotonState, batch: int, spare: int = 0) -> PhotonState:
    """Give every query its own copy of the document state (the PHOTON paper's protocol)."""
    caches = [None if c is None else c.expand_batch(batch, spare) for c in state.caches]
    top = None if state.top is None else state.top.expand(batch, -1).clone()
    carries = [c.expand(batch, -1).clone() for c in state.carries]
    return PhotonState(caches, top, carries, state.n_tokens)


class PrefillMemo:
    """One timed prefill per (model, prompt length), reused by every setting and repeat.

    Long vanilla prefills take minutes on a CPU; their time is measured once and the document
    state is shared read-only by the decode runs (forks and per-query copies never modify it).
    """

    def __init__(self, repeats: int, repeat_below: int = 8192):
        self.repeats, self.repeat_below = repeats, repeat_below
        self.entries: dict = {}

    def get(self, kind: str, length: int, run: Callable[[], object]) -> tuple[object, float, int]:
        key = (kind, length)
        if key not in self.entries:
            self.entries = {k: v for k, v in self.entries.items() if k[1] == length}  # free other lengths
            times, state = [], None
            for _ in range(self.repeats if length <= self.repeat_below else 1):
                start = time.perf_counter()
                state = run()
                times.append(time.perf_counter() - start)
            self.entries[key] = (state, statistics.median(times), len(times))
        return self.entries[key]


def run_photon(model: Photon, setting: Setting, mode: str, memo: PrefillMemo) -> dict:
    U = model.config.tokens_per_unit
    length = setting.prompt // U * U
    n_steps = math.ceil(setting.new_tokens / U)
    prompt = torch.randint(8, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
    full_state, prefill_s, prefill_runs = memo.get("photon", length, lambda: prefill(model, prompt))
    doc_state = PhotonState(list(full_state.caches), full_state.top, full_state.carries, full_state.n_tokens)
    if mode == RECGEN:
        drop_lower_caches(doc_state)  # RecGen keeps only the top stream once the prompt is read
    if setting.sharing == "shared":
        state = fork(doc_state, setting.batch, capacity=n_steps * U)
    else:
        state = per_query_copy(doc_state, setting.batch, spare=n_steps * U)
    steps = photon_steps(model, state, prompt[:, :0].expand(setting.batch, 0), greedy, mode)
    start = time.perf_counter()
    next(steps)
    first_s = time.perf_counter() - start
    for _ in range(n_steps - 1):
        next(steps)
    decode_s = time.perf_counter() - start

    if setting.sharing == "shared":
        own = sum(layer.own.nbytes() for cache in state.caches if cache for layer in cache.layers)
        cache_bytes, expected = doc_state.nbytes() + own, None
    else:
        cache_bytes = state.nbytes()
        per_sample = formula_bytes(model.config, prompt.shape[1] + n_steps * U, mode, dtype_bytes(model))
        expected = per_sample * setting.batch
    return {"prefill_s": prefill_s, "prefill_runs": prefill_runs, "first_step_s": first_s,
            "decode_s": decode_s, "new_tokens": n_steps * U, "cache_bytes": cache_bytes,
            "formula_bytes": expected}


def dtype_bytes(model) -> int:
    return next(model.parameters()).element_size()


def run_vanilla(model: Vanilla, setting: Setting, memo: PrefillMemo) -> dict:
    prompt = torch.randint(8, model.config.vocab_size, (1, setting.prompt),
                           generator=torch.Generator().manual_seed(setting.prompt))
    doc_state, prefill_s, prefill_runs = memo.get("vanilla", setting.prompt,
                                                  lambda: vanilla_prefill(model, prompt))
    B = setting.batch
    if setting.sharing == "shared":
        cache = doc_state.cache.share_prefix(B, capacity=setting.new_tokens + 1)
    else:
        cache = doc_state.cache.expand_batch(B, spare=setting.new_tokens + 1)
    state = VanillaState(cache, doc_state.last_logits.expand(B, -1), setting.prompt)
    steps = vanilla_steps(model, state, greedy)
    start = time.perf_counter()
    next(steps)
    first_s = time.perf_counter() - start
    for _ in range(setting.new_tokens - 1):
        next(steps)
    decode_s = time.perf_counter() - start
    cache_bytes = cache.nbytes()
    expected = formula_bytes(model.config, setting.prompt + setting.new_tokens, "vanilla",
                             dtype_bytes(model))
    return {"prefill_s": prefill_s, "prefill_runs": prefill_runs, "first_step_s": first_s,
            "decode_s": decode_s, "new_tokens": setting.new_tokens, "cache_bytes": cache_bytes,
            "formula_bytes": expected * B if setting.sharing != "shared" else None}


def build_llama_peer(config: VanillaConfig):
    """transformers' LlamaForCausalLM with the baseline's dimensions, or None when not installed."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    peer_config = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.d_model,
                              intermediate_size=config.d_ff, num_hidden_layers=config.n_layers,
                              num_attention_heads=config.n_heads, num_key_value_heads=config.n_heads,
                              max_position_embeddings=1 << 18, rope_theta=config.rope_base,
                              rms_norm_eps=config.norm_eps, tie_word_embeddings=False)
    peer_config._attn_implementation = "sdpa"
    return LlamaForCausalLM(peer_config).eval()


@torch.no_grad()
def run_llama_peer(model, setting: Setting) -> dict:
    prompt = torch.randint(8, model.config.vocab_size, (1, setting.prompt))
    start = time.perf_counter()
    out = model(prompt, use_cache=True)
    prefill_s = time.perf_counter() - start
    cache = out.past_key_values
    B = setting.batch
    cache.batch_repeat_interleave(B)  # per-query copies: the peer has no shared-prefix cache
    tokens = out.logits[:, -1:].argmax(-1).expand(B, 1)
    start = time.perf_counter()
    first_s = None
    for _ in range(setting.new_tokens):
        out = model(tokens, past_key_values=cache, use_cache=True)
        tokens = out.logits[:, -1:].argmax(-1)
        first_s = first_s or time.perf_counter() - start
    decode_s = time.perf_counter() - start
    cache_bytes = sum(t.numel() * t.element_size() for layer in cache.layers
                      for t in (layer.keys, layer.values))
    return {"prefill_s": prefill_s, "prefill_runs": 1, "first_step_s": first_s, "decode_s": decode_s,
            "new_tokens": setting.new_tokens, "cache_bytes": cache_bytes, "formula_bytes": None}


def summarise(raw: list[dict], setting: Setting, prompt_tokens: int) -> dict:
    """Medians over repeats, turned into the reported figures."""
    med = {k: statistics.median(r[k] for r in raw) for k in ("prefill_s", "first_step_s", "decode_s")}
    first = raw[0]
    decode_tps = setting.batch * first["new_tokens"] / med["decode_s"]
    cache_gib = first["cache_bytes"] / 2**30
    return {
        "cache_bytes_per_sample": first["cache_bytes"] / setting.batch,
        "cache_bytes_per_prompt_token": first["cache_bytes"] / setting.batch / max(1, prompt_tokens),
        "formula_match": None if first["formula_bytes"] is None else first["formula_bytes"] == first["cache_bytes"],
        "peak_rss_mib": max(r["peak_rss"] for r in raw) / 2**20,
        "prefill_tokens_per_s": prompt_tokens / med["prefill_s"],
        "decode_tokens_per_s": decode_tps,
        "ttft_s": med["prefill_s"] + med["first_step_s"],
        "tpm": decode_tps / cache_gib if cache_gib else float("inf"),
        "repeats": len(raw),
        "prefill_runs": first["prefill_runs"],
    }


def default_settings(doc_lengths: list[int], batches: list[int], new_tokens: int) -> list[Setting]:
    settings = [Setting(name, p, n, 1, "per-query") for name, (p, n) in REGIMES.items()]
    for length in doc_lengths:
        for batch in batches:
            for sharing in ("per-query", "shared"):
                settings.append(Setting("document", length, new_tokens, batch, sharing))
    return settings


def fits(kind: str, setting: Setting, config, memory_limit: int) -> bool:
    """Skip configurations whose caches alone would exceed the memory limit."""
    kind_key = "vanilla" if kind in ("vanilla", "llama-peer") else kind
    per_sample = formula_bytes(config, setting.prompt + setting.new_tokens, kind_key, 4)
    copies = 1 if setting.sharing == "shared" and kind != "llama-peer" else setting.batch
    return per_sample * copies * 1.25 < memory_limit  # headroom for prefill scratch and logits


def run_benchmark(photon: Photon, vanilla: Vanilla, settings: list[Setting], repeats: int = 3,
                  peer=None, memory_limit: int = 18 << 30, max_prefill_tokens: dict | None = None,
                  slow_run_s: float = 20.0,
                  on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every (setting, model) pair `repeats` times; return one result dict per pair."""
    memo = PrefillMemo(repeats)
    runners = {
        RECGEN: (photon, lambda s: run_photon(photon, s, RECGEN, memo)),
        HIERGEN: (photon, lambda s: run_photon(photon, s, HIERGEN, memo)),
        "vanilla": (vanilla, lambda s: run_vanilla(vanilla, s, memo)),
    }
    if peer is not None:
        runners["llama-peer"] = (vanilla, lambda s: run_llama_peer(peer, s))
    limits = max_prefill_tokens or {}
    for kind, (_, runner) in runners.items():  # warm-up: first calls allocate and load kernels
        runner(Setting("warm-up", 64, 16, 1, "per-query"))
    results = []
    for setting in settings:
        row = {"setting": dataclasses.asdict(setting), "models": {}}
        for kind, (model, runner) in runners.items():
            if kind == "llama-peer" and setting.sharing == "shared":
                continue
            if setting.prompt > limits.get(kind, 1 << 30):
                row["models"][kind] = {"skipped": f"prefill of {setting.prompt} tokens over the time limit for {kind}"}
                continue
            config = photon.config if kind in (RECGEN, HIERGEN) else vanilla.config
            if not fits(kind, setting, config, memory_limit):
                row["models"][kind] = {"skipped": "caches would not fit in memory"}
                continue
            raw = []
            for _ in range(repeats):
                with RssSampler() as rss:
                    figures = runner(setting)
                figures["peak_rss"] = rss.peak
                raw.append(figures)
                if figures["decode_s"] > slow_run_s:
                    break  # one run of a slow configuration is already far above timer noise
            row["models"][kind] = summarise(raw, setting, setting.prompt)
        base = row["models"].get("vanilla", {})
        for kind, figures in row["models"].items():
            if "skipped" in figures or "skipped" in base or not base:
                continue
            figures["vs_vanilla"] = {
                "cache_bytes": base["cache_bytes_per_sample"] / figures["cache_bytes_per_sample"],
                "prefill_tokens_per_s": figures["prefill_tokens_per_s"] / base["prefill_tokens_per_s"],
                "decode_tokens_per_s": figures["decode_tokens_per_s"] / base["decode_tokens_per_s"],
                "ttft": base["ttft_s"] / figures["ttft_s"],
                "tpm": figures["tpm"] / base["tpm"],
            }
        results.append(row)
        if on_result:
            on_result(row)
    return results


def bench_models(photon_config: PhotonConfig | None = None, vanilla_config: VanillaConfig | None = None,
                 seed: int = 0) -> tuple[Photon, Vanilla]:
    """Random-weight models at the shipped dimensions (speed does not depend on the weights)."""
    torch.manual_seed(seed)
    photon = Photon(photon_config or PRESETS["small"]).eval()
    vanilla = Vanilla(vanilla_config or PRESETS["vanilla-small"]).eval()
    return photon, vanilla
