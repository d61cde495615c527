"""Held-out loss and perplexity of a model on a document, overall and by position in the window,
and the loss on a passage read a second time (whether the model can copy from its context)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from photon_cli.engine import Document, Engine

REPEAT_PASSAGE_TOKENS = 1024  # the passage read twice is at most this long, whatever the window


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
            "windows": n_windows, "loss": loss, "perplexity": math.exp(loss), "by_position": by_position,
            "repeat": repeat_loss(engine, tokens[:4, :min(context // 2, REPEAT_PASSAGE_TOKENS)])}


@torch.no_grad()
def repeat_loss(engine: Engine, passages: torch.Tensor) -> dict:
    """Loss on each passage (B, S) and on the same passage read again right after it.

    Every answer `ask` expects is copied from the document, so a model that reads the second
    copy no better than the first cannot answer. The first unit of the second copy is left out
    (in PHOTON it is predicted before the model has seen the repetition start).
    """
    length = passages.shape[1] // engine.unit * engine.unit
    if length < 2 * engine.unit:
        return {}
    first, second = [], []
    for passage in passages[:, :length]:  # one at a time, like the windows above, to bound memory
        doubled = torch.cat([passage, passage])[None]
        logits = engine.model.loss(doubled)["logits"][0, 1:].float()
        nll = F.cross_entropy(logits, doubled[0, 1:], reduction="none")
        first.append(nll[:length - 1].mean().item())
        second.append(nll[length - 1 + engine.unit:].mean().item())
    return {"tokens": length, "first": sum(first) / len(first), "second": sum(second) / len(second)}
