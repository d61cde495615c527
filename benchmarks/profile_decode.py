"""Break decode time down by module for PHOTON (RecGen, HierGen) and the vanilla baseline.

Usage: python benchmarks/profile_decode.py [--document 32768] [--batch 1] [--steps 8]

Forward hooks add up wall time per top-level module; "other" is the rest of the decode loop
(sampling, cache bookkeeping, Python). Random weights at the shipped dimensions.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from photon_cli.bench import bench_models, greedy, per_query_copy
from photon_cli.generation import (HIERGEN, RECGEN, VanillaState, drop_lower_caches, photon_steps, prefill,
                                   vanilla_prefill, vanilla_steps)


def attach_timers(named_modules: dict) -> tuple[dict, list]:
    totals, handles = defaultdict(float), []
    for name, module in named_modules.items():
        def pre(module, args, name=name):
            module._started = time.perf_counter()

        def post(module, args, output, name=name):
            totals[name] += time.perf_counter() - module._started

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    return totals, handles


def report(label: str, totals: dict, elapsed: float, tokens: int) -> None:
    print(f"\n{label}: {tokens / elapsed:,.1f} tokens/s ({elapsed * 1e3 / tokens:.2f} ms/token)")
    accounted = 0.0
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        accounted += seconds
        print(f"  {name:<28} {100 * seconds / elapsed:5.1f}%")
    print(f"  {'other (sampling, Python)':<28} {100 * (elapsed - accounted) / elapsed:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--document", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8, help="meta-contexts (16 tokens) for PHOTON")
    args = parser.parse_args()
    photon, vanilla = bench_models()
    doc = torch.randint(8, 8192, (1, args.document))

    base_state = prefill(photon, doc)
    for mode in (RECGEN, HIERGEN):
        state = per_query_copy(base_state, args.batch, spare=args.steps * 16)
        if mode == RECGEN:
            drop_lower_caches(state)
        steps = photon_steps(photon, state, doc[:, :0].expand(args.batch, 0), greedy, mode)
        next(steps)  # warm-up
        modules = {"latent decoder G2": photon.decoders[1], "token decoder G1": photon.decoders[0],
                   "LM head": photon.lm_head, "top encoder F2": photon.encoders[1],
                   "level-1 encoder F1": photon.encoders[0], "chunker C2": photon.chunkers[0],
                   "converter U1": photon.converters[0], "converter U2": photon.converters[1]}
        totals, handles = attach_timers(modules)
        start = time.perf_counter()
        for _ in range(args.steps):
            next(steps)
        elapsed = time.perf_counter() - start
        for handle in handles:
            handle.remove()
        report(f"PHOTON {mode}, document {args.document}, batch {args.batch}", totals, elapsed,
               args.steps * 16 * args.batch)

    vstate = vanilla_prefill(vanilla, doc)
    cache = vstate.cache.expand_batch(args.batch, spare=args.steps * 16)
    steps = vanilla_steps(vanilla, VanillaState(cache, vstate.last_logits.expand(args.batch, -1), args.document),
                          greedy)
    next(steps)
    modules = {f"block {i}": block for i, block in enumerate(vanilla.stack.blocks)}
    modules["LM head"] = vanilla.lm_head
    totals, handles = attach_timers(modules)
    n = min(args.steps * 16, 64)
    start = time.perf_counter()
    for _ in range(n):
        next(steps)
    elapsed = time.perf_counter() - start
    report(f"vanilla, document {args.document}, batch {args.batch}", totals, elapsed, n * args.batch)


if __name__ == "__main__":
    main()
