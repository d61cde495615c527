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
    """Print `message` as one error line on stderr (the traceback too with --verbose) and exit."""
    if VERBOSE["on"]:
        import traceback

        traceback.print_exc()
    line = " ".join(str(message).split())
    err.print("[red]error:[/red] ", markup=True, end="")
    err.print(line, markup=False)
    raise typer.Exit(code)


def exit_on_broken_pipe() -> None:
    """Exit quietly with 141 (128 + SIGPIPE) after the reader of stdout went away (`| head`)."""
    import os

    # Later writes (and the interpreter's final flush) go to /dev/null instead of failing again.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(141)


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
    except OSError as error:
        fail(f"cannot read {error.filename or model}: {error.strerror or error}")


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
    from photon_cli.engine import InputError, normalize_question, peak_memory_mib
    from photon_cli.render import stats_line

    options = sampling_options(max_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop)
    try:
        normalize_question(question)  # reject an empty question before the document is encoded
    except InputError as error:
        fail(str(error))
    engine = load_engine(model, tokenizer, device, dtype, no_cache, cache_dir, max_context)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        session = open_document(engine, document, truncate)
        answer = engine.answer(session, question, options, mode.value, None if json_output else show)
        if json_output:
            record = {"document": session.document.name, "question": question, **answer.to_dict(),
                      "cache": session.cache_status, "cache_reason": session.cache_reason,
                      "mode": mode.value}
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)
    except BrokenPipeError:
        exit_on_broken_pipe()
    except InputError as error:
        fail(str(error))
    if not json_output:
        err.print(stats_line(session, answer, peak_memory_mib(engine.device)), markup=False)
    if answer.finish_reason == "interrupted":
        err.print("interrupted")
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
    max_question_tokens: Annotated[int, typer.Option(help="Maximum question length, in tokens.")] = 1024,
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
    from photon_cli.serve import open_batch_files, run_batch

    if batch_size < 1:
        fail(f"--batch-size {batch_size} must be >= 1")
    if max_question_tokens < 1:
        fail(f"--max-question-tokens {max_question_tokens} must be >= 1")
    if resume and output_file == "-":
        fail("--resume needs --output FILE to read the answered ids from")
    options = sampling_options(max_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop)
    try:
        files = open_batch_files(input_file, output_file, resume)
    except OSError as error:
        fail(f"cannot open {error.filename}: {error.strerror or error}")
    try:
        engine = load_engine(model, tokenizer, device, dtype, no_cache, cache_dir, max_context)
        session = open_document(engine, document, truncate)
        failures = run_batch(engine, session, files, options, mode.value, batch_size, resume,
                             max_question_tokens, err)
    except KeyboardInterrupt:
        err.print("interrupted; answered lines were written, rerun with --resume to continue")
        raise typer.Exit(130)
    except BrokenPipeError:
        exit_on_broken_pipe()
    except OSError as error:
        fail(f"cannot use {error.filename or output_file}: {error.strerror or error}")
    finally:
        files.close()
    if failures:
        err.print(f"{failures} line(s) failed; their records have an error field")
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

    try:
        sys.stdout.write(prompt)
        answer = continue_text(engine, prompt, options, mode.value, show)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)
    except BrokenPipeError:
        exit_on_broken_pipe()
    err.print(f"{answer.usage.completion_tokens} tokens, {answer.timings.decode_tokens_per_s:,.1f} tok/s, "
              f"finish_reason {answer.finish_reason}")
    if answer.finish_reason == "interrupted":
        raise typer.Exit(130)


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

    if max_tokens < 1 or (context is not None and context < 1):
        fail(f"--max-tokens {max_tokens} and --context {context} must be at least 1")
    engine = load_engine(weights, tokenizer, device, "float32", True, None)
    try:
        result = evaluate_document(engine, read_document(document), context, max_tokens)
    except InputError as error:
        fail(str(error))
    except ValueError as error:  # too few tokens for one window
        fail(f"{error}; pass a longer document or a smaller --context")
    if json_output:
        print(json.dumps(result))
        return
    print(f"{document.name}: {result['tokens']:,} tokens in windows of {result['context']}, "
          f"loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}")
    for row in result["by_position"]:
        print(f"  positions {row['start']:>6}-{row['end']:<6} loss {row['loss']:.4f}")
    repeat = result["repeat"]
    if repeat:
        print(f"  a {repeat['tokens']}-token passage read twice: loss {repeat['first']:.4f} the first time, "
              f"{repeat['second']:.4f} the second (a model that copies from context scores far lower)")


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


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{option} {text!r} must be comma-separated integers, e.g. 8192,32768")
    return values


@app.command()
def bench(
    doc_lengths: Annotated[str, typer.Option(help="Document lengths in tokens, comma-separated.")] = "8192,32768,131072",
    batch_sizes: Annotated[str, typer.Option(help="Queries per document, comma-separated.")] = "1,8,32",
    new_tokens: Annotated[int, typer.Option(help="Tokens generated per query in the document settings.")] = 64,
    repeats: Annotated[int, typer.Option(help="Runs per configuration; medians are reported.")] = 3,
    regimes: Annotated[bool, typer.Option(help="Include the paper's 2048->128 and 128->2048 regimes.")] = True,
    peer: Annotated[bool, typer.Option(help="Include transformers' LlamaForCausalLM when installed.")] = True,
    vanilla_max_prefill: Annotated[int, typer.Option(help="Skip vanilla settings with longer documents (prefill time).")] = 32768,
    memory_limit_gib: Annotated[float, typer.Option(help="Skip settings whose caches would exceed this.")] = 18.0,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = torch default).")] = 0,
    json_out: Annotated[Optional[Path], typer.Option(help="Write all results as JSON here.")] = None,
):
    """Measure PHOTON (RecGen, HierGen) against the vanilla baseline side by side in one run."""
    import torch

    from photon_cli.bench import bench_models, build_llama_peer, default_settings, run_benchmark
    from photon_cli.bench_report import environment, render_table

    if threads:
        torch.set_num_threads(threads)
    photon, vanilla = bench_models()
    llama = build_llama_peer(vanilla.config) if peer else None
    if peer and llama is None:
        err.print("transformers is not installed; skipping the LlamaForCausalLM peer (pip install 'photon-cli\\[bench]')")
    settings = default_settings(_int_list(doc_lengths, "--doc-lengths"), _int_list(batch_sizes, "--batch-sizes"),
                                new_tokens)
    if not regimes:
        settings = [s for s in settings if s.name == "document"]
    limits = {"vanilla": vanilla_max_prefill, "llama-peer": vanilla_max_prefill}
    console = Console(width=None if sys.stdout.isatty() else 220)
    results = run_benchmark(photon, vanilla, settings, repeats, llama, int(memory_limit_gib * 2**30), limits,
                            on_result=lambda row: err.print(f"done: {row['setting']}"))
    console.print(render_table(results))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"environment": environment(), "results": results}, indent=2))
        err.print(f"results written to {json_out}")


@app.command("eval-qa")
def eval_qa(
    eval_file: Annotated[Path, typer.Option(help="JSONL of held-out questions (document, question, answer, distance_tokens).")] = Path("data/qa/eval.jsonl"),
    models: Annotated[Optional[list[Path]], typer.Option("--model", "-m", help="Weights to evaluate (repeatable; default: both shipped models).")] = None,
    limit: Annotated[int, typer.Option(help="Evaluate at most this many records (0 = all).")] = 0,
    per_group: Annotated[int, typer.Option(help="Evaluate at most this many records per kind and distance (0 = all).")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum tokens generated per answer.")] = 48,
    device: DeviceOpt = "auto",
    json_out: Annotated[Optional[Path], typer.Option(help="Write the per-record rows and summaries here.")] = None,
):
    """Exact-match and answer-contains rates by fact-to-question distance: RecGen, HierGen, vanilla."""
    from rich.table import Table

    from photon_cli.qa_eval import evaluate_qa, read_records, select_records, summarise

    try:
        records = read_records(eval_file)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        fail(f"cannot read {eval_file}: {error}")
    records = select_records(records, per_group) if per_group else records
    records = records[:limit] if limit else records
    if not records:
        fail(f"{eval_file} has no records to evaluate; build it with scripts/build_qa.py")
    paths = models or [DEFAULT_MODEL, WEIGHTS_DIR / "vanilla-small.safetensors"]
    summaries, all_rows = {}, {}
    for path in paths:
        engine = load_engine(path, None, device, "auto", True, None)
        modes = ["recgen", "hiergen"] if engine.is_photon else ["vanilla"]
        for mode in modes:
            label = f"{path.stem} {mode}"
            err.print(f"evaluating {label} on {len(records)} questions")
            rows = evaluate_qa(engine, records, "recgen" if mode == "vanilla" else mode, max_new_tokens)
            summaries[label], all_rows[label] = summarise(rows), rows
    distances = sorted({d for s in summaries.values() for d in s["by_distance"]})
    kinds = sorted({k for s in summaries.values() for k in s["by_kind"]}, key=str)
    console = Console(width=None if sys.stdout.isatty() else 220)
    for title, groups, names in (("by distance (tokens)", "by_distance", distances), ("by kind", "by_kind", kinds)):
        table = Table("model", "all EM", "all contains", "all F1", "control F1", *[f"{n} contains / F1" for n in names],
                      title=f"{len(records)} questions; {title}")
        for label, summary in summaries.items():
            cells = [f"{summary[groups][n]['contains']:.2f} / {summary[groups][n]['f1']:.2f}"
                     if n in summary[groups] else "-" for n in names]
            overall = summary["overall"]
            table.add_row(label, f"{overall['exact']:.2f}", f"{overall['contains']:.2f}", f"{overall['f1']:.2f}",
                          f"{overall['control_f1']:.2f}", *cells)
        if title == "by kind":
            console.print("control F1: each prediction scored against the reference of another question "
                          "of its kind; an F1 near it means the answers do not come from the document.")
        console.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"summaries": summaries, "rows": all_rows}, indent=2, default=str))


@data_app.command("fetch")
def data_fetch(
    work_dir: Annotated[Path, typer.Option(help="Downloaded packages and raw text.")] = Path("data/raw"),
    out_dir: Annotated[Path, typer.Option(help="Corpus output folder.")] = Path("data/corpus"),
    tokenizer_out: Annotated[Path, typer.Option(help="Tokenizer to use; trained and written here when missing.")] = Path("weights/tokenizer.json"),
    retrain_tokenizer: Annotated[bool, typer.Option(help="Train a new tokenizer over --tokenizer-out; the shipped weights cannot read its tokens.")] = False,
):
    """Install the licence-clean sources by package name and build the corpus (and the tokenizer when missing)."""
    from photon_cli.data.corpus import prepare_corpus

    logging.getLogger().setLevel(logging.INFO)
    try:
        outputs = prepare_corpus(work_dir, out_dir, tokenizer_out, retrain_tokenizer=retrain_tokenizer)
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
    answer_weight: Annotated[float, typer.Option(help="Loss weight of answer tokens (after <|answer|>) relative to the rest.")] = 1.0,
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
                      checkpoint_every=checkpoint_every, mix_file=mix_file, mix_ratio=mix_ratio, answer_weight=answer_weight,
                      seed=seed, precision=precision.value, compile=compile, device=device,
                      threads=threads)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # A live bar on a terminal; plain lines (one per step) when stderr is a log file.
    progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[status]}"), console=err, disable=not err.is_terminal)
    task = progress.add_task("train", total=max_steps, status="")

    def show(record: dict) -> None:
        line = (f"step {record['step']:>6}  loss {record['token_loss']:.3f}  rec {record['rec_loss']:.3f}  "
                f"lr {record['lr']:.2e}  {record['tokens_per_s']} tok/s")
        if "val_loss" in record:
            line += f"  val {record['val_loss']:.3f}  val_rec {record['val_rec_loss']:.3f}"
        progress.update(task, completed=record["step"], status=line)
        if "val_loss" in record or not err.is_terminal:
            progress.console.print(line)

    try:
        with progress:
            path = run_training(cfg, on_metrics=show)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    err.print(f"weights written to {path}")


if __name__ == "__main__":
    app()
