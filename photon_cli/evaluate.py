"""Held-out loss and perplexity of a model on a document, overall and by position in the window."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from photon_cli.engine import Document, Engine


@torch.no_grad()
def evaluate_document(engine: Engine, document: Document, context: int | None = None,
                      max_tokens: int = 65536, buckets: int = 8) -> dict:
    """Score non-overlapping windows of `context` tokens; every window is scored on tokens 2..T.

    Both model kinds score the same targets, so their losses compare directly. Loss by position
    shows whether the model uses long context (and how it behaves past its training length).
    """
    ids = engine.tokenize(document.text)[:max_tokens]
    context = context or engine.config.train_context
    context = max(engine.unit, context // engine.unit * engine.unit)
    n_windows = len(ids) // context
    if n_windows == 0:
        raise ValueError(f"{document.name} has {len(ids)} tokens, fewer than one window of {context}")
    tokens = torch.tensor(ids[:n_windows * context], device=engine.device).view(n_windows, context)
    sums = torch.zeros(context - 1, dtype=torch.float64)
    for row in tokens:
        logits = engine.model.loss(row[None])["logits"][0, 1:].float()  # (T - 1, V), predicts row[1:]
        nll = F.cross_entropy(logits, row[1:], reduction="none")
        sums += nll.double().cpu()
    per_position = sums / n_windows
    loss = per_position.mean().item()
    edges = [1 + round(i * (context - 1) / buckets) for i in range(buckets + 1)]
    by_position = [{"start": a, "end": b - 1, "loss": per_position[a - 1:b - 1].mean().item()}
                   for a, b in zip(edges, edges[1:]) if b > a]
    return {"document": document.name, "tokens": n_windows * context, "context": context,
            "windows": n_windows, "loss": loss, "perplexity": math.exp(loss), "by_position": by_position}
