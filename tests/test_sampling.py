"""Every sampling option reaches the sampler from each command, and each one has its effect."""

import io
import json
from collections import Counter

import pytest
import torch
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

import photon_cli.engine as engine_module
from photon_cli.chat import ChatShell
from photon_cli.engine import Engine
from photon_cli.sampling import Sampler, SamplingError, SamplingOptions
from support import DOCUMENT, invoke, model_args

V = 8


def draws(options: SamplingOptions, logits: torch.Tensor, n: int = 400) -> Counter:
    sampler = Sampler(options, 1, V)
    return Counter(sampler(logits.expand(1, n, V)).flatten().tolist())


LOGITS = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0])


def test_greedy_picks_argmax():
    assert draws(SamplingOptions(temperature=0), LOGITS) == Counter({0: 400})


def test_temperature_flattens_distribution():
    cold = draws(SamplingOptions(temperature=0.05, seed=1), LOGITS)
    hot = draws(SamplingOptions(temperature=50, seed=1), LOGITS)
    assert cold[0] > 390
    assert len(hot) == V
    assert hot[0] < 100


def test_top_k_keeps_k_tokens():
    assert set(draws(SamplingOptions(temperature=5, top_k=2, seed=1), LOGITS)) == {0, 1}
    assert set(draws(SamplingOptions(temperature=5, top_k=1, seed=1), LOGITS)) == {0}


def test_top_p_keeps_nucleus():
    # Probabilities at temperature 1: 0.44, 0.27, 0.16, 0.06, ... so top_p 0.5 keeps two tokens.
    assert set(draws(SamplingOptions(temperature=1, top_p=0.5, seed=1), LOGITS)) == {0, 1}
    assert set(draws(SamplingOptions(temperature=1, top_p=0.01, seed=1), LOGITS)) == {0}


def test_repetition_penalty_demotes_seen_tokens():
    sampler = Sampler(SamplingOptions(repetition_penalty=2.0), 2, V)
    sampler.observe(torch.tensor([[0], [5]]))
    picked = sampler(LOGITS.expand(2, 1, V)).flatten().tolist()
    # Row 0 saw token 0 (3.0 -> 1.5), so token 1 (2.5) wins; row 1 saw only token 5.
    assert picked == [1, 0]

    # PHOTON's parallel chunks are in text order: the second window avoids the first one's pick.
    sampler = Sampler(SamplingOptions(repetition_penalty=2.0), 1, V)
    assert sampler(LOGITS.expand(1, 3, V)).flatten().tolist() == [0, 1, 2]

    negative = torch.tensor([-1.0, -1.2] + [-9.0] * (V - 2))
    sampler = Sampler(SamplingOptions(repetition_penalty=2.0), 1, V)
    sampler.observe(torch.tensor([[0]]))
    assert sampler(negative.expand(1, 1, V)).item() == 1  # -1.0 * 2 = -2.0 < -1.2


def test_seed_reproduces_draws():
    first = Sampler(SamplingOptions(temperature=1, seed=3), 1, V)(LOGITS.expand(1, 64, V))
    again = Sampler(SamplingOptions(temperature=1, seed=3), 1, V)(LOGITS.expand(1, 64, V))
    other = Sampler(SamplingOptions(temperature=1, seed=4), 1, V)(LOGITS.expand(1, 64, V))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("changes,fragment", [
    ({"temperature": float("nan")}, "temperature nan must be a finite number"),
    ({"top_p": float("inf")}, "top_p inf must be a finite number"),
    ({"repetition_penalty": 0.0}, "repetition_penalty 0.0 must be > 0"),
    ({"seed": 2**64}, "seed 18446744073709551616 must be between"),
    ({"top_k": -1}, "top_k -1 must be >= 0"),
])
def test_invalid_options_rejected(changes, fragment):
    with pytest.raises(SamplingError, match=fragment.replace("(", r"\(")):
        SamplingOptions(**changes)


# ---- the options reach the sampler through every command ------------------------------------

ALL_OPTIONS = SamplingOptions(temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.3, seed=11,
                              max_tokens=6, stop=("zz", "yy"))
ALL_FLAGS = ["--temperature", 0.7, "--top-k", 5, "--top-p", 0.9, "--repetition-penalty", 1.3, "--seed", 11,
             "--max-tokens", 6, "--stop", "zz", "--stop", "yy"]


@pytest.fixture
def recorded(monkeypatch):
    seen = []

    class RecordingSampler(Sampler):
        def __init__(self, options, *args, **kwargs):
            seen.append(options)
            super().__init__(options, *args, **kwargs)

    monkeypatch.setattr(engine_module, "Sampler", RecordingSampler)
    return seen


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOCUMENT)
    return path


def test_ask_options_reach_sampler(tiny_dir, document, recorded):
    result = invoke("ask", document, "Who?", *model_args(tiny_dir), *ALL_FLAGS)
    assert result.exit_code == 0, result.output
    assert recorded == [ALL_OPTIONS]


def test_generate_options_reach_sampler(tiny_dir, recorded):
    result = invoke("generate", "--prompt", "It is", *model_args(tiny_dir), *ALL_FLAGS)
    assert result.exit_code == 0, result.output
    assert recorded == [ALL_OPTIONS]


def test_serve_cache_options_reach_sampler(tiny_dir, document, tmp_path, recorded):
    queries = tmp_path / "q.jsonl"
    overrides = {"temperature": 1.1, "top_k": 3, "top_p": 0.8, "repetition_penalty": 1.5, "seed": 4,
                 "max_tokens": 3, "stop": ["ww"]}
    queries.write_text(json.dumps({"id": "defaults", "question": "Who?"}) + "\n"
                       + json.dumps({"id": "own", "question": "Why?", **overrides}) + "\n")
    result = invoke("serve-cache", document, "-i", queries, "-o", tmp_path / "a.jsonl", *model_args(tiny_dir),
                    *ALL_FLAGS)
    assert result.exit_code == 0, result.output
    assert recorded == [ALL_OPTIONS, SamplingOptions(**{**overrides, "stop": ("ww",)})]


def test_chat_set_reaches_sampler(tiny_dir, document, recorded):
    engine = Engine(tiny_dir / "photon.safetensors")
    commands = ["/set temperature 0.7", "/set top_k 5", "/set top_p 0.9", "/set repetition_penalty 1.3",
                "/set seed 11", "/set max_tokens 6", "/set stop zz,yy", "Who?", "/exit"]
    with create_pipe_input() as pipe:
        shell = ChatShell(engine, SamplingOptions(), "recgen", input=pipe, output=DummyOutput(),
                          out_stream=io.StringIO(), console=Console(file=io.StringIO()))
        shell.load(str(document))
        pipe.send_text("\n".join(commands) + "\n")
        shell.run()
    assert recorded == [ALL_OPTIONS]


# ---- and each option changes the answer as it should ----------------------------------------

def answer(tiny_dir, document, *flags):
    result = invoke("ask", document, "Who wants a wife?", *model_args(tiny_dir), "--json", "-n", 32, *flags)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_option_effects_end_to_end(tiny_dir, document):
    greedy = answer(tiny_dir, document)["answer"]
    sampled = answer(tiny_dir, document, "--temperature", 3, "--seed", 5)["answer"]

    assert answer(tiny_dir, document, "--temperature", 3, "--seed", 5)["answer"] == sampled
    assert answer(tiny_dir, document, "--temperature", 3, "--seed", 6)["answer"] != sampled
    assert sampled != greedy
    assert answer(tiny_dir, document, "--temperature", 3, "--top-k", 1, "--seed", 5)["answer"] == greedy
    assert answer(tiny_dir, document, "--temperature", 3, "--top-p", 1e-6, "--seed", 5)["answer"] == greedy
    assert answer(tiny_dir, document, "--repetition-penalty", 5)["answer"] != greedy

    stop = greedy[6:9]
    stopped = answer(tiny_dir, document, "--stop", stop)
    assert stopped["finish_reason"] == "stop"
    assert stopped["answer"] == greedy[:greedy.index(stop)]
