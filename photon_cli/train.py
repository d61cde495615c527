"""Trainer for PHOTON and the vanilla baseline.

The trainer streams random windows from a packed uint16 token file. It uses AdamW with linear
warm-up and cosine decay to `min_lr_ratio` of the peak, gradient clipping and bf16 autocast.
It validates periodically (token loss, L_rec, loss per slot of the meta-context). Checkpoints
resume exactly because the batch drawn at step s depends only on (seed, s, rank), so no loader
state needs saving.
Runs under `torchrun` with DistributedDataParallel (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from photon_cli.config import ModelConfig, PhotonConfig, PRESETS, config_from_dict
from photon_cli.weights import build_model, file_sha256, load_weights, save_weights
from photon_cli.prompt import answer_loss_weights

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data_dir: Path
    out_dir: Path
    model: str = "small"  # a preset name, or a weights file to continue from
    tokenizer: Path = Path("weights/tokenizer.json")
    context: int = 512
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    max_minutes: float = 0.0  # stop early (checkpoint + export) after this long; 0 = no limit
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    mix_file: Path | None = None  # rows of exactly `context` tokens mixed into every batch
    mix_ratio: float = 0.5
    answer_weight: float = 1.0  # loss weight of answer tokens (after <|answer|>) relative to other tokens
    checkpoint_every: int = 100
    seed: int = 1234
    precision: str = "auto"  # auto | bf16 | fp32
    compile: bool = False
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default


class TokenWindows:
    """Random fixed-length windows from a packed uint16 token file, deterministic per step."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise FileNotFoundError(
                f"token file {path} not found; build it with `photon data fetch` first"
            )
        self.tokens = np.memmap(path, dtype=np.uint16, mode="r")

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, step: int, rank: int, batch_size: int, context: int, seed: int) -> torch.Tensor:
        if batch_size == 0:
            return torch.empty(0, context, dtype=torch.long)
        limit = len(self.tokens) - context
        if limit <= 0:
            raise ValueError(f"token file contains {len(self.tokens)} tokens, fewer than the context "
                             f"{context}; use a smaller --context or a larger corpus")
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step * 4099 + rank)
        starts = torch.randint(0, limit, (batch_size,), generator=generator).tolist()
        rows = [np.asarray(self.tokens[s:s + context], dtype=np.int64) for s in starts]
        return torch.from_numpy(np.stack(rows))  # (B, T)

    def fixed_windows(self, count: int, context: int) -> torch.Tensor:
        """Evenly spaced windows for validation, identical in every run."""
        limit = len(self.tokens) - context
        count = max(1, min(count, limit // context if limit >= context else 1))
        starts = np.linspace(0, max(limit, 0), count).astype(np.int64)
        rows = [np.asarray(self.tokens[s:s + context], dtype=np.int64) for s in starts]
        return torch.from_numpy(np.stack(rows))


class TokenRows:
    """Fixed rows of a (n_rows, context) uint16 file, such as QA samples aligned to row start."""

    def __init__(self, path: Path, context: int):
        if not path.is_file():
            raise FileNotFoundError(f"mix file {path} not found")
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        if len(tokens) % context:
            raise ValueError(f"mix file {path} contains {len(tokens)} tokens, not whole rows of "
                             f"{context}; build it with the same --context")
        self.rows = tokens.reshape(-1, context)

    def batch(self, step: int, rank: int, batch_size: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 7_000_003 + step * 8191 + rank)
        picks = torch.randint(0, len(self.rows), (batch_size,), generator=generator).tolist()
        return torch.from_numpy(np.stack([self.rows[i].astype(np.int64) for i in picks]))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


class LossWrapper(nn.Module):
    """Expose `model.loss` as forward so DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.model.loss(tokens, weights)
        out.pop("logits")
        return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision in ("auto", "bf16"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return None if precision == "auto" else torch.bfloat16
        return torch.bfloat16
    raise ValueError(f"precision {precision!r} is not auto, bf16 or fp32")


def initial_model(cfg: TrainConfig) -> tuple[nn.Module, ModelConfig, dict]:
    """Build the model from a preset, or continue from a weights file (with its training record)."""
    if cfg.model in PRESETS:
        config = PRESETS[cfg.model]
        return build_model(replace(config, train_context=cfg.context)), config, {}
    loaded = load_weights(Path(cfg.model))
    history = json.loads(loaded.metadata.get("training", "{}"))
    config = replace(loaded.config, train_context=max(cfg.context, loaded.config.train_context))
    model = build_model(config)
    model.load_state_dict(loaded.model.state_dict(), strict=True)
    return model, config, history


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, batch_size: int, amp: torch.dtype | None,
             device: torch.device) -> dict[str, float]:
    """Mean token loss, L_rec, and (for PHOTON) loss per slot of the meta-context."""
    model.eval()
    token_losses, rec_losses, slot_sums, slot_counts = [], [], None, None
    for i in range(0, len(windows), batch_size):
        tokens = windows[i:i + batch_size].to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model.loss(tokens)
        token_losses.append(out["token_loss"].item())
        rec_losses.append(out["rec_loss"].item())
        if isinstance(model.config, PhotonConfig):
            logits = out["logits"][:, 1:].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
            ).view(tokens.shape[0], -1)
            unit = model.config.tokens_per_unit
            slots = (torch.arange(1, tokens.shape[1], device=device) % unit)
            sums = torch.zeros(unit, device=device).index_add_(0, slots, nll.sum(0))
            counts = torch.zeros(unit, device=device).index_add_(
                0, slots, torch.full_like(slots, tokens.shape[0], dtype=torch.float32))
            slot_sums = sums if slot_sums is None else slot_sums + sums
            slot_counts = counts if slot_counts is None else slot_counts + counts
    model.train()
    result = {"val_loss": float(np.mean(token_losses)), "val_rec_loss": float(np.mean(rec_losses))}
    if slot_sums is not None:
        result["val_loss_by_slot"] = [round(x, 4) for x in (slot_sums / slot_counts).tolist()]
    return result


def save_checkpoint(path: Path, model: nn.Module, optimizer, step: int, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "state": state, "model_config": model.config.to_dict()}, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, on_metrics=None) -> Path:
    """Train until max_steps (or max_minutes); return the exported weights path."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = resolve_device(cfg.device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    amp = autocast_dtype(cfg.precision, device)

    if not 0.0 <= cfg.mix_ratio <= 1.0:
        raise ValueError(f"mix_ratio {cfg.mix_ratio} must be between 0 and 1")
    if not cfg.answer_weight > 0.0:
        raise ValueError(f"answer_weight {cfg.answer_weight} must be positive. Use 1 to weight answer tokens like the rest")
    train_data = TokenWindows(Path(cfg.data_dir) / "train.bin")
    mix_rows = TokenRows(Path(cfg.mix_file), cfg.context) if cfg.mix_file else None
    n_mix = round(cfg.batch_size * cfg.mix_ratio) if mix_rows else 0
    val_windows = TokenWindows(Path(cfg.data_dir) / "val.bin").fixed_windows(
        cfg.eval_batches * cfg.batch_size, cfg.context)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / "checkpoint.pt"

    model, config, history = initial_model(cfg)
    if isinstance(config, PhotonConfig) and cfg.context % config.tokens_per_unit:
        raise ValueError(f"context {cfg.context} must be a multiple of {config.tokens_per_unit}")
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))

    step, state = 0, {"tokens_seen": 0, "seconds": 0.0, "evals": []}
    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"], strict=True)
        optimizer.load_state_dict(checkpoint["optimizer"])
        step, state = checkpoint["step"], checkpoint["state"]
        log.info("resumed from %s at step %d", checkpoint_path, step)

    wrapped: nn.Module = LossWrapper(model)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    if distributed:
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=[device] if device.type == "cuda" else None)

    tokens_per_step = cfg.batch_size * cfg.context * cfg.grad_accum * world
    started = time.time() - state["seconds"]
    metrics_file = open(out_dir / "metrics.jsonl", "a") if rank == 0 else None
    model.train()
    try:
        while step < cfg.max_steps:
            lr = learning_rate(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            totals = {"loss": 0.0, "token_loss": 0.0, "rec_loss": 0.0}
            for micro in range(cfg.grad_accum):
                draw = step * cfg.grad_accum + micro
                tokens = train_data.batch(draw, rank, cfg.batch_size - n_mix, cfg.context, cfg.seed)
                if n_mix:
                    tokens = torch.cat([tokens, mix_rows.batch(draw, rank, n_mix, cfg.seed)])
                weights = answer_loss_weights(tokens, cfg.answer_weight) if cfg.answer_weight != 1.0 else None
                tokens = tokens.to(device)
                if weights is not None:
                    weights = weights.to(device)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    out = wrapped(tokens, weights)
                (out["loss"] / cfg.grad_accum).backward()
                for key in totals:
                    totals[key] += out[key].item() / cfg.grad_accum
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state["tokens_seen"] += tokens_per_step
            state["seconds"] = time.time() - started

            record = {"step": step, "lr": lr, "grad_norm": round(grad_norm, 4),
                      "tokens_seen": state["tokens_seen"], "seconds": round(state["seconds"], 1),
                      "tokens_per_s": round(state["tokens_seen"] / max(state["seconds"], 1e-9)),
                      **{k: round(v, 4) for k, v in totals.items()}}
            timed_out = cfg.max_minutes and state["seconds"] >= cfg.max_minutes * 60
            last = step == cfg.max_steps or timed_out
            if rank == 0 and (step % cfg.eval_every == 0 or last):
                record.update(evaluate(model, val_windows, cfg.batch_size, amp, device))
                state["evals"].append({k: record[k] for k in record if k.startswith("val") or k in ("step", "tokens_seen")})
            if rank == 0:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                if step % cfg.checkpoint_every == 0 or last:
                    save_checkpoint(checkpoint_path, model, optimizer, step, state)
                if on_metrics:
                    on_metrics(record)
            if timed_out:
                log.info("stopping at step %d: max_minutes %.1f reached", step, cfg.max_minutes)
                break
    finally:
        if metrics_file:
            metrics_file.close()

    weights_path = out_dir / "model.safetensors"
    if rank == 0:
        phase = {"context": cfg.context, "steps": step, "tokens_seen": state["tokens_seen"],
                 "seconds": round(state["seconds"]), "batch_size": cfg.batch_size * world,
                 "world_size": world, "device": device.type, "threads": torch.get_num_threads(),
                 "precision": str(amp or "fp32"),
                 "mix_file": str(cfg.mix_file) if cfg.mix_file else None, "mix_ratio": cfg.mix_ratio if cfg.mix_file else 0, "answer_weight": cfg.answer_weight, "final_eval": state["evals"][-1] if state["evals"] else {}}
        phases = history.get("phases", []) + [phase]
        tokenizer_sha = file_sha256(cfg.tokenizer) if Path(cfg.tokenizer).is_file() else ""
        save_weights(model, weights_path, tokenizer_sha, {"training": {"phases": phases}})
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return weights_path


def train_config_dict(cfg: TrainConfig) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
