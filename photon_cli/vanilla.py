"""The vanilla decoder-only Transformer baseline, built from the same blocks as PHOTON."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from photon_cli.config import VanillaConfig
from photon_cli.kv_cache import StackCache
from photon_cli.layers import Linear, RMSNorm, TransformerStack
from photon_cli.model import token_losses


class Vanilla(nn.Module):
    def __init__(self, config: VanillaConfig):
        super().__init__()
        self.config = config
        c = config
        self.token_embed = nn.Embedding(c.vocab_size, c.d_model)
        self.stack = TransformerStack(c.n_layers, c.d_model, c.n_heads, c.d_ff, c.rope_base,
                                      c.rope_scale, c.norm_eps)
        self.lm_head = Linear(c.d_model, c.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=c.init_std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, tokens: Tensor, cache: StackCache | None = None) -> Tensor:
        """Return logits (B, T, V); logits[:, i] predicts tokens[:, i + 1]."""
        return self.lm_head(self.stack(self.token_embed(tokens), cache))

    def new_cache(self, batch: int, capacity: int = 64, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> StackCache:
        return self.stack.new_cache(batch, capacity, dtype, device)

    def loss(self, tokens: Tensor, weights: Tensor | None = None) -> dict[str, Tensor]:
        """Cross-entropy on tokens 2..T, the same targets PHOTON is scored on; `weights` as in Photon.loss."""
        logits = self(tokens[:, :-1])
        token_loss, weighted_loss = token_losses(logits, tokens[:, 1:], None if weights is None else weights[:, 1:])
        # Left-pad with a dummy row so logits line up with PHOTON's (position i predicts token i).
        aligned = torch.cat([logits[:, :1], logits], dim=1)
        return {"loss": weighted_loss, "token_loss": token_loss,
                "rec_loss": token_loss.new_zeros(()), "logits": aligned}
