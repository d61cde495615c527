"""`photon chat`: a prompt_toolkit shell that answers questions about one loaded document.

Each question is answered independently against the document (the model was trained on
single-question prompts), so earlier turns are kept for /history but not fed back to the model.
Everything runs on the main thread: Ctrl+C raises KeyboardInterrupt in the decoding loop, which
stops after the current meta-context, and no thread keeps computing afterwards.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, fields
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, InMemoryHistory
from rich.console import Console

from photon_cli.engine import Answer, Engine, InputError, Session, peak_memory_mib, read_document
from photon_cli.generation import MODES
from photon_cli.render import prefill_progress, stats_line
from photon_cli.sampling import SamplingError, SamplingOptions

HELP = """commands:
  /load FILE        load a document (encodes it, or loads its cache)
  /reset            unload the document and clear the statistics
  /set KEY VALUE    change a setting: temperature, top_k, top_p, repetition_penalty, seed,
                    max_tokens, stop (comma-separated), mode (recgen or hiergen)
  /show             model, document, cache and settings
  /stats            statistics of the last answer
  /history          the questions and answers of this session
  /help             this list
  /exit             quit (or Ctrl+D)
End a line with \\ to continue the question on the next line. Ctrl+C stops an answer
(the partial answer is kept, marked as interrupted)."""


def history_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "photon" / "chat_history"


class ChatShell:
    def __init__(self, engine: Engine, options: SamplingOptions, mode: str, truncate: bool = False,
                 console: Console | None = None, input=None, output=None, out_stream=None,
                 history: bool = True):
        self.engine = engine
        self.options = options
        self.mode = mode
        self.truncate = truncate
        self.console = console or Console(stderr=True)
        self.out = out_stream or sys.stdout
        self.session: Session | None = None
        self.last: Answer | None = None
        self.turns: list[tuple[str, Answer]] = []  # (question, answer) of this document
        store = InMemoryHistory()
        if history:
            path = history_path()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                store = FileHistory(str(path))
            except OSError:
                pass  # a read-only home keeps history in memory for this session only
        self.prompt = PromptSession(history=store, input=input, output=output)

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def load(self, source: str) -> None:
        try:
            document = read_document(source)
            with prefill_progress(self.console, f"encoding {document.name}") as progress:
                self.session = self.engine.open(document, self.truncate, progress)
        except InputError as error:
            self.say(f"error: {error}")
            return
        except KeyboardInterrupt:
            self.say("loading interrupted; no document loaded")
            return
        s = self.session
        self.turns = []
        self.say(f"loaded {s.document.name}: {len(s.doc_ids):,} tokens, cache {s.cache_summary}")

    def read_question(self) -> str:
        lines = [self.prompt.prompt("> ")]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(self.prompt.prompt("... "))
        return "\n".join(lines)

    def run(self) -> None:
        self.say("photon chat: ask about the loaded document; /help lists commands, Ctrl+D quits.")
        while True:
            try:
                line = self.read_question()
            except KeyboardInterrupt:
                self.say("(press Ctrl+D or type /exit to quit)")
                continue
            except EOFError:
                return
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if self.command(text) == "exit":
                    return
                continue
            self.ask(text)

    def ask(self, question: str) -> None:
        if self.session is None:
            self.say("no document loaded; use /load FILE")
            return

        shown: list[str] = []

        def show(piece: str) -> None:
            shown.append(piece)
            self.out.write(piece)
            self.out.flush()

        try:
            answer = self.engine.answer(self.session, question, self.options, self.mode, show)
        except InputError as error:
            self.say(f"error: {error}")
            return
        except KeyboardInterrupt:
            # Ctrl+C outside the decoding loop (query encoding, text output): keep what was shown.
            answer = Answer(text="".join(shown), finish_reason="interrupted")
        self.out.write("\n")
        self.out.flush()
        if answer.finish_reason == "interrupted":
            self.say("[answer interrupted]")
        self.turns.append((question, answer))
        self.last = answer

    def command(self, text: str) -> str | None:
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name in ("/exit", "/quit"):
            return "exit"
        if name == "/help":
            self.say(HELP)
        elif name == "/load":
            if not rest:
                self.say("usage: /load FILE")
            else:
                self.load(rest)
        elif name == "/reset":
            self.session, self.last, self.turns = None, None, []
            self.say("document unloaded")
        elif name == "/history":
            self.history()
        elif name == "/set":
            self.set_option(rest)
        elif name == "/show":
            self.show()
        elif name == "/stats":
            if self.last is None or self.session is None:
                self.say("no answer yet")
            else:
                self.say(stats_line(self.session, self.last, peak_memory_mib(self.engine.device)))
        else:
            self.say(f"unknown command {name}; /help lists the commands")
        return None

    def set_option(self, rest: str) -> None:
        key, _, value = rest.partition(" ")
        value = value.strip()
        if not key or not value:
            self.say("usage: /set KEY VALUE")
            return
        if key == "mode":
            if value not in MODES:
                self.say(f"mode {value!r} is not one of {', '.join(MODES)}")
                return
            self.mode = value
            self.say(f"mode = {value}")
            return
        types = {f.name: f.type for f in fields(SamplingOptions)}
        if key not in types:
            self.say(f"unknown setting {key!r}; settings: mode, {', '.join(types)}")
            return
        try:
            if key == "stop":
                parsed = tuple(s for s in value.split(",") if s)
            elif key in ("top_k", "max_tokens", "seed"):
                parsed = None if key == "seed" and value == "none" else int(value)
            else:
                parsed = float(value)
            self.options = SamplingOptions(**{**asdict(self.options), key: parsed})
        except (ValueError, SamplingError) as error:
            self.say(f"invalid value {value!r} for {key}: {error}")
            return
        self.say(f"{key} = {parsed!r}")

    def history(self) -> None:
        if not self.turns:
            self.say("no questions yet")
        for number, (question, answer) in enumerate(self.turns, 1):
            mark = " [interrupted]" if answer.finish_reason == "interrupted" else ""
            self.say(f"{number}. > {question}\n{answer.text}{mark}")

    def show(self) -> None:
        info = self.engine.describe()
        self.say(f"model: {info['weights']} ({info['kind']}, {info['parameters']:,} parameters, "
                 f"{info['device']}, {info['dtype']})")
        if self.session:
            s = self.session
            self.say(f"document: {s.document.name}, {len(s.doc_ids):,} tokens, cache {s.cache_summary}"
                     + (f" at {s.cache_path}" if s.cache_path else ""))
        else:
            self.say("document: none")
        settings = {**asdict(self.options), "mode": self.mode}
        self.say("settings: " + ", ".join(f"{k}={v!r}" for k, v in settings.items()))
