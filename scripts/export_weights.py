"""Copy a trained weights file into weights/ with tensors stored as bfloat16.

bfloat16 halves the file in git; `photon` loads it into float32 on CPU (the default dtype) or
bfloat16 on CUDA. The metadata (config, tokenizer sha256, training record) is kept unchanged.

Usage: python scripts/export_weights.py RUN/model.safetensors weights/NAME.safetensors
"""

import argparse
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    with safe_open(str(args.source), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name).to(torch.bfloat16) for name in handle.keys()}
    metadata = {**metadata, "stored_dtype": "bfloat16"}
    args.target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.target), metadata=metadata)
    print(f"wrote {args.target} ({args.target.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
