"""Rendering of benchmark results: the terminal table and the machine description."""

from __future__ import annotations

import os
import platform
import time

import torch
from rich.table import Table


def environment() -> dict:
    """Describe the machine and torch build that the figures were measured on."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
            cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": round(memory / 2**30, 1), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def setting_label(setting: dict) -> str:
    label = f"{setting['name']} {setting['prompt']}->{setting['new_tokens']} x{setting['batch']}"
    return label + ("" if setting["name"] != "document" else f" {setting['sharing']}")


def render_table(results: list[dict]) -> Table:
    table = Table("setting", "model", "cache B/sample", "x vanilla", "prefill tok/s", "x", "decode tok/s",
                  "x", "TTFT s", "TPM tok/s/GiB", "x", "peak RSS MiB")
    for row in results:
        label = setting_label(row["setting"])
        for kind, f in row["models"].items():
            if "skipped" in f:
                table.add_row(label, kind, f["skipped"], *[""] * 9)
                continue
            ratio = f.get("vs_vanilla", {})

            def r(key):
                return f"{ratio[key]:.1f}" if key in ratio else "-"

            table.add_row(label, kind, f"{f['cache_bytes_per_sample']:,.0f}", r("cache_bytes"),
                          f"{f['prefill_tokens_per_s']:,.0f}", r("prefill_tokens_per_s"),
                          f"{f['decode_tokens_per_s']:,.0f}", r("decode_tokens_per_s"),
                          f"{f['ttft_s']:.3f}", f"{f['tpm']:,.0f}", r("tpm"), f"{f['peak_rss_mib']:,.0f}")
            label = ""
    return table
