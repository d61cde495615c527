"""PHOTON and vanilla model tests; the teacher-forced forward is the oracle for every fast path."""

import dataclasses

import pytest
import torch

from photon_cli.config import PRESETS, ConfigError, PhotonConfig, VanillaConfig, config_from_dict
from photon_cli.generation import (HIERGEN, RECGEN, decode_meta_context, drop_lower_caches,
                                   empty_state, fork, prefill, vanilla_prefill, vanilla_steps)
from photon_cli.model import Photon, count_parameters
from photon_cli.vanilla import Vanilla

TINY = PRESETS["tiny"]
U = TINY.tokens_per_unit  # 16


def make_photon(config: PhotonConfig = TINY, seed: int = 0) -> Photon:
    torch.manual_seed(seed)
    model = Photon(config).eval()
    # Larger weights than the 0.02 init make differences visible well above float32 noise.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model


def random_tokens(length: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def forced_decode(model, state, tokens, mode):
    """Decode meta-contexts with the given tokens forced; return logits (B, T, V)."""
    pieces = []
    for start in range(0, tokens.shape[1], U):
        _, logits = decode_meta_context(model, state, lambda x: x.argmax(-1), mode,
                                        forced=tokens[:, start:start + U])
        pieces.append(logits)
    return torch.cat(pieces, dim=1)


def test_600m_parameter_count():
    with torch.device("meta"):
        model = Photon(PRESETS["600m"])
    # The paper's tables (646,399,104) list modules; the start latents (2 x 1664) are extra.
    assert count_parameters(model, include_start_latents=False) == 646_399_104
    assert count_parameters(model) == 646_399_104 + 2 * 1664


def test_600m_vanilla_parameter_count():
    with torch.device("meta"):
        model = Vanilla(PRESETS["vanilla-600m"])
    assert count_parameters(model) == 610_915_968


def test_config_rejects_unknown_keys():
    data = PRESETS["tiny"].to_dict() | {"n_expert": 8}
    with pytest.raises(ConfigError, match="n_expert"):
        config_from_dict(data)


def test_config_round_trip():
    for name in ("tiny", "small", "tiny-vanilla"):
        config = PRESETS[name]
        assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("changes", [{"chunk_sizes": (4, 1)}, {"d_model": 66},
                                     {"encoder_layers": (1,)}, {"train_context": 20}])
def test_config_validation(changes):
    with pytest.raises(ConfigError):
        dataclasses.replace(TINY, **changes)


def test_meta_context_causality():
    """Perturbing a token of meta-context h changes only later slots of its own chunk within h,
    chunks 2-4 of meta-context h+1, and all of meta-context h+2."""
    model = make_photon()
    tokens = random_tokens(6 * U)
    base = model(tokens)[0]
    h, slot_in_unit = 2, 5  # token 2*16 + 5: chunk 2 (slots 4..7) of meta-context 2
    position = h * U + slot_in_unit
    perturbed = tokens.clone()
    perturbed[0, position] = (perturbed[0, position] + 1) % TINY.vocab_size
    changed = (model(perturbed)[0] - base).abs().amax(-1)[0] > 1e-5  # (T,)

    chunk_start = position - position % 4
    for p in range(6 * U):
        unit, in_unit = divmod(p, U)
        if p <= position or unit == h and p >= chunk_start + 4 or unit < h:
            expected = False
        elif unit == h:  # later slots of the perturbed chunk
            expected = True
        elif unit == h + 1:
            expected = in_unit >= 4
        else:
            expected = True
        assert bool(changed[p]) == expected, f"position {p} (meta-context {unit}, slot {in_unit})"


@pytest.mark.parametrize("prompt_units", [0, 1, 3])
def test_hiergen_matches_teacher_forced(prompt_units):
    model = make_photon()
    tokens = random_tokens(5 * U, batch=2)
    oracle = model(tokens)[0]
    prompt = tokens[:, : prompt_units * U]
    state = prefill(model, prompt) if prompt_units else empty_state(model, batch=2)
    logits = forced_decode(model, state, tokens[:, prompt_units * U:], HIERGEN)
    torch.testing.assert_close(logits, oracle[:, prompt_units * U:], atol=1e-4, rtol=1e-4)


def test_prefill_in_blocks_matches_one_block():
    model = make_photon()
    tokens = random_tokens(8 * U)
    whole = prefill(model, tokens, block_tokens=8 * U)
    blocks = prefill(model, tokens, block_tokens=U)
    torch.testing.assert_close(whole.top, blocks.top, atol=1e-5, rtol=1e-5)
    for a, b in zip(whole.carries, blocks.carries):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_greedy_hiergen_equals_teacher_forced_argmax():
    model = make_photon()
    prompt = random_tokens(2 * U)
    state = prefill(model, prompt)
    generated = [decode_meta_context(model, state, lambda x: x.argmax(-1), HIERGEN)[0] for _ in range(3)]
    sequence = torch.cat([prompt] + generated, dim=1)
    oracle = model(sequence)[0].argmax(-1)
    assert torch.equal(oracle[:, 2 * U:], sequence[:, 2 * U:])


def test_recgen_equals_hiergen_under_recursive_consistency(monkeypatch):
    """With the bottleneck forecasts replaced by the encoder states, RecGen is HierGen."""
    model = make_photon()
    tokens = random_tokens(6 * U)
    x1 = model.encode(tokens)[0]  # (1, M_1, D) encoder states X^(1)
    hier = forced_decode(model, prefill(model, tokens[:, :2 * U]), tokens[:, 2 * U:], HIERGEN)

    state = prefill(model, tokens[:, :2 * U])
    drop_lower_caches(state)
    chunker = model.chunkers[-1]
    original = chunker.forward
    calls = iter(range(2, 6))

    def consistent(forecast):
        unit = next(calls)  # meta-context being summarised
        return original(x1[:, unit * 4:(unit + 1) * 4])

    monkeypatch.setattr(chunker, "forward", consistent)
    rec = forced_decode(model, state, tokens[:, 2 * U:], RECGEN)
    torch.testing.assert_close(rec, hier, atol=1e-4, rtol=1e-4)


def test_recgen_differs_without_consistency():
    """The test above can fail: plain RecGen with random weights drifts from HierGen."""
    model = make_photon()
    tokens = random_tokens(6 * U)
    hier = forced_decode(model, prefill(model, tokens[:, :2 * U]), tokens[:, 2 * U:], HIERGEN)
    state = prefill(model, tokens[:, :2 * U])
    drop_lower_caches(state)
    rec = forced_decode(model, state, tokens[:, 2 * U:], RECGEN)
    assert (rec - hier).abs().max() > 1e-3


def test_forked_state_matches_own_prefill():
    """Queries that share a document prefix decode exactly like a prefill of the whole text."""
    model = make_photon()
    document, question = random_tokens(3 * U), random_tokens(2 * U, batch=3, seed=7)
    doc_state = prefill(model, document)
    before = [c.nbytes() for c in doc_state.caches]
    shared = fork(doc_state, batch=3)
    from photon_cli.generation import encode_units
    encode_units(model, shared, question)
    logits = forced_decode(model, shared, random_tokens(U, batch=3, seed=9), HIERGEN)
    alone = prefill(model, torch.cat([document.expand(3, -1), question], dim=1))
    expected = forced_decode(model, alone, random_tokens(U, batch=3, seed=9), HIERGEN)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert [c.nbytes() for c in doc_state.caches] == before


@pytest.mark.parametrize("length", [64, 256, 1024])
def test_cache_bytes_match_formulas(length):
    config = dataclasses.replace(PRESETS["small"], vocab_size=256)
    model = Photon(config).eval()
    vanilla = Vanilla(dataclasses.replace(PRESETS["vanilla-small"], vocab_size=256)).eval()
    tokens = torch.randint(0, 256, (1, length))
    D, b = config.d_model, 4  # float32
    state = prefill(model, tokens)
    hiergen_bytes = sum(2 * n * D * b * length // config.tokens_per_level_unit(level + 1)
                        for level, n in enumerate(config.encoder_layers))
    assert state.nbytes() == hiergen_bytes
    drop_lower_caches(state)
    recgen_bytes = 2 * config.encoder_layers[-1] * D * b * length // config.tokens_per_unit
    assert state.nbytes() == recgen_bytes
    vanilla_bytes = 2 * vanilla.config.n_layers * D * b * length
    assert vanilla_prefill(vanilla, tokens).nbytes() == vanilla_bytes
    assert vanilla_bytes / hiergen_bytes == pytest.approx(12.8)
    assert vanilla_bytes / recgen_bytes == pytest.approx(64)


def test_vanilla_cached_equals_uncached():
    torch.manual_seed(0)
    model = Vanilla(PRESETS["tiny-vanilla"]).eval()
    tokens = random_tokens(40)
    oracle = model(tokens)
    state = vanilla_prefill(model, tokens[:, :17], block_tokens=5)
    torch.testing.assert_close(state.last_logits, oracle[:, 16], atol=1e-4, rtol=1e-4)
    forced = iter(tokens[0, 17:].tolist())
    steps = vanilla_steps(model, state, lambda logits: torch.tensor([[next(forced)]]))
    for position in range(17, 39):
        next(steps)
        torch.testing.assert_close(state.last_logits, oracle[:, position], atol=1e-4, rtol=1e-4)


def test_training_loss_decreases():
    torch.manual_seed(0)
    model = Photon(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = random_tokens(4 * U, batch=4)
    first = None
    for _ in range(30):
        out = model.loss(tokens)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        first = first or out["loss"].item()
    assert out["loss"].item() < first - 1.0
    assert out["rec_loss"].item() >= 0


def test_rope_distinct_in_half_precision():
    from photon_cli.layers import apply_rope, rope_angles
    positions = torch.cat([torch.arange(255, 301), torch.arange(2040, 2101)])
    cos, sin = rope_angles(positions, 16, 10000.0, 1.0)
    x = torch.ones(1, 1, len(positions), 16)
    for dtype in (torch.bfloat16, torch.float16):
        rotated = apply_rope(x.to(dtype), cos, sin).float()
        pairs = torch.cdist(rotated[0, 0], rotated[0, 0])
        off_diagonal = pairs + torch.eye(len(positions)) * 1e9
        assert off_diagonal.min() > 0, dtype


def test_answer_tokens_see_whole_question():
    """With the answer lead, the first answer token depends on the question's last token."""
    from photon_cli.prompt import build_prompt

    model = make_photon()
    document = random_tokens(40)[0].tolist()
    first_answer_logits = []
    for last in (50, 51):
        prompt = build_prompt(document, [30, 31, 32, last], U).tokens
        whole = len(prompt) // U * U
        state = prefill(model, torch.tensor([prompt[:whole]]))
        tail = torch.tensor([prompt[whole:]])
        forced = torch.full((1, U), -1)
        forced[0, :tail.shape[1]] = tail
        _, logits = decode_meta_context(model, state, lambda x: x.argmax(-1), HIERGEN, forced)
        first_answer_logits.append(logits[0, tail.shape[1]])
    assert (first_answer_logits[0] - first_answer_logits[1]).abs().max() > 1e-4
