"""Plain text continuation (`photon generate`): no document cache, no question format."""

from __future__ import annotations

from typing import Callable

import torch

from photon_cli.engine import Answer, Document, Engine, Session
from photon_cli.generation import empty_state, prefill, vanilla_prefill
from photon_cli.prompt import EOS_ID
from photon_cli.sampling import SamplingOptions
from photon_cli.text import normalize_text


def continue_text(engine: Engine, prompt: str, options: SamplingOptions, mode: str,
                  on_text: Callable[[str], None] | None = None) -> Answer:
    """Continue `prompt`; an empty prompt starts after an end-of-text token.

    PHOTON encodes the prompt's whole meta-contexts and forces the remaining tokens into the
    first decoded meta-context, so no padding token is ever placed after the prompt.
    """
    ids = engine.tokenize(normalize_text(prompt)) if prompt else []
    ids = ids or [EOS_ID]
    whole = len(ids) // engine.unit * engine.unit
    tensor = torch.tensor([ids[:whole]], dtype=torch.long, device=engine.device)
    if engine.is_photon:
        state = prefill(engine.model, tensor) if whole else empty_state(engine.model, 1)
    else:
        state = vanilla_prefill(engine.model, tensor)
    document = Document(prompt, "<prompt>", "")
    session = Session(document, ids, whole, state, False, "disabled", None, 0, 0.0, 0)
    # The remaining tokens are fewer than one meta-context, so PHOTON forces them into the first
    # decoded meta-context rather than encoding them.
    return engine.generate_batch(session, [ids[whole:]], options, mode, on_text)[0]
