"""Run `photon bench` settings and write docs/benchmarks.md with tables and plots.

Usage (the figures in docs/benchmarks.md came from this command):
    python benchmarks/run_benchmarks.py --out benchmarks/results.json

Plots need matplotlib (`pip install -e '.[bench]'`); without it the tables are still written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from photon_cli.bench import bench_models, build_llama_peer, default_settings, run_benchmark
from photon_cli.bench_report import environment, setting_label

log = logging.getLogger("benchmarks")

COLUMNS = [("cache_bytes_per_sample", "cache B/sample", "{:,.0f}", "cache_bytes"),
           ("prefill_tokens_per_s", "prefill tok/s", "{:,.0f}", "prefill_tokens_per_s"),
           ("decode_tokens_per_s", "decode tok/s", "{:,.1f}", "decode_tokens_per_s"),
           ("ttft_s", "TTFT s", "{:.3f}", "ttft"),
           ("tpm", "TPM tok/s/GiB", "{:,.0f}", "tpm"),
           ("peak_rss_mib", "peak RSS MiB", "{:,.0f}", None)]


def markdown_table(results: list[dict]) -> str:
    header = ["setting", "model"]
    for _, title, _, ratio in COLUMNS:
        header.append(title)
        if ratio:
            header.append("x vanilla")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        label = setting_label(row["setting"])
        for kind, figures in row["models"].items():
            if "skipped" in figures:
                lines.append(f"| {label} | {kind} | skipped: {figures['skipped']} |" + " |" * (len(header) - 3))
                continue
            cells = [label, kind]
            for key, _, fmt, ratio in COLUMNS:
                cells.append(fmt.format(figures[key]))
                if ratio:
                    value = figures.get("vs_vanilla", {}).get(ratio)
                    cells.append("-" if value is None else f"{value:,.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], out_dir: Path) -> list[Path]:
    """Throughput and memory against document length, one line per model (batch 1, per query)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; skipping plots")
        return []
    rows = [r for r in results if r["setting"]["name"] == "document" and r["setting"]["batch"] == 1
            and r["setting"]["sharing"] == "per-query"]
    paths = []
    for key, ylabel, name in (("decode_tokens_per_s", "decode tokens/s (batch 1)", "throughput_vs_length.png"),
                              ("cache_bytes_per_sample", "cache bytes per query", "memory_vs_length.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind in ("recgen", "hiergen", "vanilla", "llama-peer"):
            points = [(r["setting"]["prompt"], r["models"][kind][key]) for r in rows
                      if kind in r["models"] and "skipped" not in r["models"][kind]]
            if points:
                ax.plot(*zip(*points), marker="o", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("document tokens")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doc-lengths", default="2048,8192,32768,131072")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vanilla-max-prefill", type=int, default=32768)
    parser.add_argument("--peer-max-prefill", type=int, default=8192,
                        help="the peer prefills in one call, without blocks")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    photon, vanilla = bench_models()
    peer = build_llama_peer(vanilla.config)
    settings = default_settings([int(x) for x in args.doc_lengths.split(",")],
                                [int(x) for x in args.batch_sizes.split(",")], args.new_tokens)
    limits = {"vanilla": args.vanilla_max_prefill, "llama-peer": args.peer_max_prefill}
    results = run_benchmark(photon, vanilla, settings, args.repeats, peer, max_prefill_tokens=limits,
                            on_result=lambda row: log.info("done %s", setting_label(row["setting"])))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "command": " ".join(sys.argv),
                                    "results": results}, indent=2))
    plots = plot(results, args.out.parent)
    (args.out.parent / "table.md").write_text(markdown_table(results) + "\n")
    log.info("wrote %s, %s and %d plot(s)", args.out, args.out.parent / "table.md", len(plots))


if __name__ == "__main__":
    main()
