"""Benchmark harness on tiny models: figures present, cache bytes equal the formulas."""

import pytest

from photon_cli.bench import Setting, bench_models, run_benchmark
from photon_cli.config import PRESETS


@pytest.mark.parametrize("sharing", ["per-query", "shared"])
def test_benchmark_figures_and_formulas(sharing):
    photon, vanilla = bench_models(PRESETS["tiny"], PRESETS["tiny-vanilla"])
    setting = Setting("document", 128, 32, 2, sharing)
    [row] = run_benchmark(photon, vanilla, [setting], repeats=1)
    for kind in ("recgen", "hiergen", "vanilla"):
        figures = row["models"][kind]
        assert figures["decode_tokens_per_s"] > 0
        assert figures["prefill_tokens_per_s"] > 0
        if sharing == "per-query":
            assert figures["formula_match"] is True, kind
    ratios = {kind: row["models"][kind]["vs_vanilla"]["cache_bytes"] for kind in ("recgen", "hiergen")}
    if sharing == "per-query":
        assert ratios["recgen"] == pytest.approx(64, rel=0.01)
        assert ratios["hiergen"] == pytest.approx(12.8, rel=0.01)


def test_benchmark_skips_what_does_not_fit():
    photon, vanilla = bench_models(PRESETS["tiny"], PRESETS["tiny-vanilla"])
    setting = Setting("document", 256, 16, 4, "per-query")
    [row] = run_benchmark(photon, vanilla, [setting], repeats=1, memory_limit=1 << 16)
    assert "skipped" in row["models"]["vanilla"]
