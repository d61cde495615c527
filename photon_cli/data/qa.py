"""Question-answering examples cut from corpus documents, and the QA token files built from them.

An example is an excerpt of a document, a question about one fact in the excerpt and the
answer. Each answer is copied from the excerpt, so the model has to read the document
instead of recalling its training text. The kinds, the sources they use and their questions:

    glossary  Jargon File, Devil's Dictionary, WordNet   What does TERM mean?
    manual    Python, SQLite, PostgreSQL, Vim manuals    What does the section "TITLE" say?
    bible     World English Bible, King James Version    What does Genesis 1:3 say?
    speech    State of the Union addresses               Who delivered this address, and in what year?
    novel     Jane Austen's novels                       How does Chapter II begin?

Glossary, manual, bible and novel answers are the first sentence of the entry, section,
verse or chapter, cut to at most MAX_ANSWER_WORDS words. A speech excerpt starts with the
header line "State of the Union Address, YEAR, PRESIDENT", and its answer "PRESIDENT, YEAR"
reorders the two fields of that line. The fact is the answer's span in the excerpt, or the
header line for speeches.

Documents are laid out again before questions are asked about them. Hard-wrapped prose
paragraphs are joined into single lines, so that every answer is one line of the excerpt.
WordNet entries become "lemma: gloss" lines, with the lemma read from the WordNet data
files. Bible verses become "Book C:V text" lines, read from the diatheke exports that the
corpus was built from, because the corpus records have no verse references.

distance_tokens counts the tokens after the fact's last token and before <|question|>,
the <|pad|> tokens included, in the prompt that photon_cli.prompt builds with a UNIT-token
unit. The answer of a training sample therefore starts at a multiple of UNIT tokens.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from photon_cli.data.corpus import is_heldout, read_jsonl
from photon_cli.prompt import EOS_ID, PAD_ID, question_tokens, training_sample
from photon_cli.tokenizer import load_tokenizer, tokenizer_sha256

__all__ = [
    "KINDS",
    "QAExample",
    "AnnotatedText",
    "ExampleBuilder",
    "annotate_records",
    "iter_qa_examples",
    "build_qa_rows",
    "build_repeat_rows",
    "build_qa_eval",
    "sample_for",
]

logger = logging.getLogger(__name__)

KINDS = ("glossary", "manual", "bible", "speech", "novel")
SOURCE_KINDS = {
    "jargon_file": "glossary",
    "devils_dictionary": "glossary",
    "wordnet": "glossary",
    "python_docs": "manual",
    "sqlite_docs": "manual",
    "postgresql_docs": "manual",
    "vim_docs": "manual",
    "modern_bible": "bible",
    "kjv": "bible",
    "sotu": "speech",
    "austen": "novel",
}
QUESTIONS = {
    "glossary": "What does {key} mean?",
    "manual": 'What does the section "{key}" say?',
    "bible": "What does {key} say?",
    "speech": "Who delivered this address, and in what year?",
    "novel": "How does Chapter {key} begin?",
}
MAX_ANSWER_WORDS = 30
# Prompt unit of the training rows: the answer starts at a multiple of UNIT tokens.
UNIT = 16
# Tokens that a row reserves for the question, the answer, the special tokens, the padding
# and the fact itself. With weights/tokenizer.json, question and answer together take at
# most 104 tokens in the rows built from this corpus. An excerpt that still does not fit
# loses text after the fact, so its distance comes out shorter than requested.
ROW_OVERHEAD_TOKENS = 192
# The largest number of tokens of text that an evaluation excerpt keeps before the fact.
EVAL_MAX_BEFORE_TOKENS = 256

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
BIBLE_SOURCES = ("modern_bible", "kjv")


# ---------------------------------------------------------------------------
# Annotated texts and examples
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """A fact that a question can ask about. Offsets index AnnotatedText.text."""

    key: str  # the term, section title, verse reference or chapter number that the question names
    unit_start: int  # start of the entry, section, verse or chapter that contains the fact
    start: int  # span of the answer (of the header line, for a speech)
    end: int
    answer: str


@dataclass
class AnnotatedText:
    """A document laid out for questions, with its facts sorted by end offset.

    keys lists the (offset, key) of every entry, section, verse or chapter heading in the
    text, including those without a usable fact. A question is asked only when its key
    occurs once in the excerpt. body_start is the offset where a speech's address text
    begins after its header line, and 0 for the other kinds.
    """

    kind: str
    source: str
    title: str
    text: str
    facts: list[Fact]
    keys: list[tuple[int, str]] = field(default_factory=list)
    body_start: int = 0


@dataclass(frozen=True)
class QAExample:
    """An excerpt, a question about one fact in it and the answer, with token counts.

    fact_start and fact_end are character offsets of the fact in document.
    document_ids are the excerpt's token ids, without <|document|>.
    """

    kind: str
    source: str
    title: str
    document: str
    question: str
    answer: str
    fact_start: int
    fact_end: int
    distance_tokens: int
    document_tokens: int
    document_ids: list[int] = field(repr=False, compare=False)


# ---------------------------------------------------------------------------
# Sentences, spans and paragraph joining
# ---------------------------------------------------------------------------

_ABBREVIATIONS = frozenset(
    "mr mrs ms messrs dr st jr sr mt no nos vs cf etc viz col gen capt lieut rev hon esq "
    "co inc ltd fig figs sec ch vol vols op approx ed eds al n v adj adv pp p ibid".split()
)
_CLOSING_PUNCTUATION = "\"'”’)]"
_TRAILING_CHARS_AFTER_CUT = " ,;:—–-(“\"‘'[{"


def _ends_sentence(word: str, next_word: str | None, index: int) -> bool:
    stripped = word.rstrip(_CLOSING_PUNCTUATION)
    if not stripped.endswith((".", "!", "?")):
        return False
    if stripped.endswith("."):
        stem = stripped[:-1].lstrip("(\"'“‘[")
        if stem.lower() in _ABBREVIATIONS:
            return False
        if len(stem) == 1 and stem.isalpha():  # an initial, as in "Franklin D. Roosevelt"
            return False
        if "." in stem:  # "e.g.", "i.e.", "U.S."
            return False
        if index == 0 and stem.isdigit():  # a list number
            return False
    if next_word is not None and next_word[0].islower():
        return False
    return True


def answer_span(text: str, start: int, *, max_words: int = MAX_ANSWER_WORDS,
                stop: int | None = None, require_sentence_end: bool = True) -> tuple[int, int] | None:
    """Return the span of the first sentence of text[start:stop], cut to max_words words.

    The span never crosses a line break, and stop defaults to the end of the line. A sentence
    cut at max_words loses its trailing commas, dashes and opening brackets. Without
    require_sentence_end, text that ends before a sentence does counts as one sentence.
    Returns None when the span would have fewer than two words.
    """
    line_end = text.find("\n", start)
    if line_end == -1:
        line_end = len(text)
    stop = line_end if stop is None else min(stop, line_end)
    words = list(re.finditer(r"\S+", text[start:stop]))
    if len(words) < 2:
        return None
    end = None
    for index, word in enumerate(words):
        next_word = words[index + 1].group() if index + 1 < len(words) else None
        if _ends_sentence(word.group(), next_word, index):
            end = start + word.end()
            break
        if index + 1 >= max_words:
            end = start + word.end()
            while end > start and text[end - 1] in _TRAILING_CHARS_AFTER_CUT:
                end -= 1
            break
    if end is None:
        if require_sentence_end:
            return None
        end = start + words[-1].end()
    if len(text[start:end].split()) < 2:
        return None
    return start, end


def clip_words(text: str, start: int, end: int, max_words: int = MAX_ANSWER_WORDS) -> int:
    """Return the end of text[start:end] cut after max_words words, without trailing commas or dashes."""
    words = list(re.finditer(r"\S+", text[start:end]))
    if len(words) <= max_words:
        return start + words[-1].end() if words else start
    cut = start + words[max_words - 1].end()
    while cut > start and text[cut - 1] in _TRAILING_CHARS_AFTER_CUT:
        cut -= 1
    return cut


def join_paragraph_lines(text: str, can_join: Callable[[list[str], int], bool],
                         ends_run: Callable[[str], bool] = lambda line: False) -> str:
    """Join each run of consecutive joinable lines into one line, with single spaces between.

    can_join(lines, i) decides whether line i may be part of a run. A line for which
    ends_run is true is joined to the lines before it but never to the lines after it.
    """
    lines = text.split("\n")
    output: list[str] = []
    run: list[str] = []
    for index, line in enumerate(lines):
        if can_join(lines, index):
            run.append(line.strip())
            if ends_run(line):
                output.append(" ".join(run))
                run = []
            continue
        if run:
            output.append(" ".join(run))
            run = []
        output.append(line)
    if run:
        output.append(" ".join(run))
    return "\n".join(output)


def _plain_line(lines: list[str], index: int) -> bool:
    """True for a non-blank line that starts at the left margin."""
    line = lines[index]
    return bool(line.strip()) and not line[0].isspace()


def _next_text_line(text: str, offset: int) -> int | None:
    """Return the start of the first non-blank line at or after offset, or None."""
    match = re.compile(r"[^\S\n]*\S").search(text, offset)
    if match is None:
        return None
    return text.rfind("\n", 0, match.start()) + 1


def _line_end(text: str, offset: int) -> int:
    end = text.find("\n", offset)
    return len(text) if end == -1 else end


# ---------------------------------------------------------------------------
# Novels
# ---------------------------------------------------------------------------

_CHAPTER_HEADING = re.compile(r"^(?:CHAPTER|Chapter) ([IVXLC]+|\d+)\.?[ \t]*$", re.MULTILINE)


def annotate_novel(record: dict) -> AnnotatedText:
    """Annotate a novel whose chapters start with lines such as "CHAPTER II" or "Chapter 2"."""

    def can_join(lines: list[str], index: int) -> bool:
        return _plain_line(lines, index) and _CHAPTER_HEADING.match(lines[index]) is None

    text = join_paragraph_lines(record["text"], can_join)
    facts, keys = [], []
    for heading in _CHAPTER_HEADING.finditer(text):
        number = heading.group(1)
        keys.append((heading.start(), number))
        first_line = _next_text_line(text, heading.end())
        if first_line is None or _CHAPTER_HEADING.match(text, first_line):
            continue
        span = answer_span(text, first_line, require_sentence_end=False)
        if span is not None:
            facts.append(Fact(number, heading.start(), span[0], span[1], text[span[0]:span[1]]))
    return AnnotatedText("novel", record["source"], record["title"], text, _by_end(facts), keys)


# ---------------------------------------------------------------------------
# Speeches
# ---------------------------------------------------------------------------

_SOTU_TITLE = re.compile(r"^(\d{4}) State of the Union address, (.+?) \([^()]*\)$")


def annotate_speech(record: dict) -> AnnotatedText | None:
    """Put the header line "State of the Union Address, YEAR, PRESIDENT" before an address.

    Returns None when the record's title does not have the form that
    photon_cli.data.extract.sotu_title writes.
    """
    match = _SOTU_TITLE.match(record["title"])
    if match is None:
        return None
    year, president = match.groups()
    header = f"State of the Union Address, {year}, {president}"
    text = f"{header}\n\n{record['text'].strip()}"
    fact = Fact(f"{president}, {year}", 0, 0, len(header), f"{president}, {year}")
    return AnnotatedText("speech", record["source"], record["title"], text, [fact],
                         body_start=len(header) + 2)


# ---------------------------------------------------------------------------
# Glossaries: Jargon File, Devil's Dictionary, WordNet
# ---------------------------------------------------------------------------

_JARGON_ENTRY = re.compile(r"^:(.+?):(?=\s|$)", re.MULTILINE)
_JARGON_INDENT = "   "
_JARGON_APPENDICES = re.compile(r"^\s*Part III\. Appendices\s*$", re.MULTILINE)
_SENSE_NUMBER = re.compile(r"\d+\.\s+")
_PART_OF_SPEECH = re.compile(
    r"(?:n|v|vt|vi|adj|adv|interj|excl|pref|prefix|suff|abbrev|pl)\.(?:,\s*(?:n|v|vt|vi|adj|adv)\.)*\s+"
)


def _skip_brackets(text: str, offset: int) -> int:
    """Return the offset after a bracketed etymology such as "[from Unix] " at offset, if any."""
    if offset >= len(text) or text[offset] != "[":
        return offset
    depth = 0
    for index in range(offset, _line_end(text, offset)):
        if text[index] == "[":
            depth += 1
        elif text[index] == "]":
            depth -= 1
            if depth == 0:
                index += 1
                while index < len(text) and text[index] == " ":
                    index += 1
                return index
    return offset


def _skip_definition_prefixes(text: str, offset: int) -> int:
    """Return the offset after the etymology, sense number and part of speech that may start a definition."""
    while True:
        start = _skip_brackets(text, offset)
        for pattern in (_SENSE_NUMBER, _PART_OF_SPEECH):
            match = pattern.match(text, start)
            if match:
                start = match.end()
        if start == offset:
            return offset
        offset = start


def annotate_jargon(record: dict) -> AnnotatedText:
    """Annotate the Jargon File's lexicon: entries ":term: pronunciation, part of speech".

    Only the lexicon is kept, from the first entry up to the appendices. A definition's
    first sentence is taken after a leading bracketed etymology and sense number.
    Definitions that only point to another entry ("See {foo}.") give no fact.
    """
    raw = record["text"]
    first_entry = re.search(r"^   :.+?:(?=\s|$)", raw, re.MULTILINE)
    start = raw.rfind("\n", 0, first_entry.start()) + 1 if first_entry else 0
    appendices = _JARGON_APPENDICES.search(raw, start)
    raw = raw[start:appendices.start() if appendices else len(raw)]
    lines = [line[len(_JARGON_INDENT):] if line.startswith(_JARGON_INDENT) else line for line in raw.split("\n")]

    def can_join(lines: list[str], index: int) -> bool:
        return _plain_line(lines, index) and _JARGON_ENTRY.match(lines[index]) is None

    text = join_paragraph_lines("\n".join(lines).strip("\n"), can_join)
    facts, keys = [], []
    for entry in _JARGON_ENTRY.finditer(text):
        term = entry.group(1).strip()
        keys.append((entry.start(), term))
        body = _next_text_line(text, _line_end(text, entry.start()))
        if body is None or _JARGON_ENTRY.match(text, body):
            continue
        answer_start = _skip_definition_prefixes(text, body)
        if text.startswith(("See ", "see ", "Syn.", "Variant of"), answer_start):
            continue
        span = answer_span(text, answer_start)
        if span is not None:
            facts.append(Fact(term, entry.start(), span[0], span[1], text[span[0]:span[1]]))
    return AnnotatedText("glossary", record["source"], record["title"], text, _by_end(facts), keys)


_DEVILS_ENTRY = re.compile(
    r"^([A-Z][A-Za-z'\- .]*?),\s+((?:n|v|adj|adv|pp|p\.p|pro|pron|prep|conj|interj|v\.t|v\.i|n\.pl|x)\.)[ \t]+(?=\S)",
    re.MULTILINE,
)


def annotate_devils_dictionary(record: dict) -> AnnotatedText:
    """Annotate The Devil's Dictionary: entries "HEADWORD, n.  Definition." at the left margin.

    Entries in another form (several headwords, Latin phrases, verse only) give no fact.
    """
    text = join_paragraph_lines(record["text"], _plain_line)
    facts, keys = [], []
    for entry in _DEVILS_ENTRY.finditer(text):
        term = entry.group(1).strip()
        keys.append((entry.start(), term))
        span = answer_span(text, entry.end())
        if span is not None:
            facts.append(Fact(term, entry.start(), span[0], span[1], text[span[0]:span[1]]))
    return AnnotatedText("glossary", record["source"], record["title"], text, _by_end(facts), keys)


_WORDNET_TITLE = re.compile(r"^WordNet 3\.0 (noun|verb|adj|adv) glosses (\d+)-(\d+)$")
_WORDNET_MARKER = re.compile(r"\([a-z]+\)$")


def read_wordnet_lemmas(data_path: Path) -> list[tuple[str, str]]:
    """Return (first lemma, gloss) for every synset of a WordNet data file, in file order.

    Lines are skipped exactly as photon_cli.data.extract.extract_wordnet_glosses skips
    them, so item i matches gloss i of the corpus. Underscores in lemmas become spaces,
    and adjective markers such as "(a)" are dropped.
    """
    entries = []
    for line in Path(data_path).read_bytes().decode("latin-1").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        fields, gloss = line.split("|", 1)
        gloss = gloss.strip()
        if not gloss:
            continue
        # Fields: synset offset, lexicographer file number, synset type, word count (hex), words...
        lemma = _WORDNET_MARKER.sub("", fields.split()[4]).replace("_", " ")
        entries.append((lemma, gloss))
    return entries


def annotate_wordnet(records: Sequence[dict], wordnet_dir: Path) -> list[AnnotatedText]:
    """Annotate WordNet gloss records as "lemma: gloss" lines, one text per record.

    The lemmas come from wordnet_dir/data.{noun,verb,adj,adv}. A record whose glosses do
    not match those files is skipped with a warning. The answer is the gloss's definition,
    before its first quoted example.
    """
    lemmas_by_part: dict[str, list[tuple[str, str]]] = {}
    texts = []
    for record in records:
        match = _WORDNET_TITLE.match(record["title"])
        if match is None:
            logger.warning("WordNet record %r has an unexpected title; skipped", record["title"])
            continue
        part, first, last = match.group(1), int(match.group(2)), int(match.group(3))
        if part not in lemmas_by_part:
            data_path = Path(wordnet_dir) / f"data.{part}"
            if not data_path.is_file():
                logger.warning("WordNet data file %s not found, so WordNet %s glosses give no questions",
                               data_path, part)
                lemmas_by_part[part] = []
            else:
                lemmas_by_part[part] = read_wordnet_lemmas(data_path)
        entries = lemmas_by_part[part][first - 1:last]
        glosses = [line.strip() for line in record["text"].split("\n") if line.strip()]
        if [gloss for _, gloss in entries] != glosses:
            if lemmas_by_part[part]:
                logger.warning("WordNet record %r does not match %s/data.%s; skipped",
                               record["title"], wordnet_dir, part)
            continue
        texts.append(_annotate_wordnet_entries(record, entries))
    return texts


def _annotate_wordnet_entries(record: dict, entries: list[tuple[str, str]]) -> AnnotatedText:
    lines, facts, keys = [], [], []
    offset = 0
    for lemma, gloss in entries:
        line = f"{lemma}: {gloss}"
        keys.append((offset, lemma))
        definition_start = offset + len(lemma) + 2
        example = gloss.find('; "')
        definition_end = definition_start + (example if example != -1 else len(gloss))
        end = clip_words(line, len(lemma) + 2, definition_end - offset) + offset
        if len(line[definition_start - offset:end - offset].split()) >= 2:
            facts.append(Fact(lemma, offset, definition_start, end, line[definition_start - offset:end - offset]))
        lines.append(line)
        offset += len(line) + 1
    return AnnotatedText("glossary", record["source"], record["title"], "\n".join(lines), _by_end(facts), keys)


# ---------------------------------------------------------------------------
# Manuals: reStructuredText (Python), Vim help, HTML converted to text (SQLite, PostgreSQL)
# ---------------------------------------------------------------------------

_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")
_RST_NOT_PROSE = re.compile(r"^(\.\.|[*+\-|] |#\. |\d+\. |>>>|:)")
_TITLE_MARKUP = re.compile(r"[`*|]")
_PROSE_START = re.compile(r"[A-Z“\"‘'(]")


def _rst_can_join(lines: list[str], index: int) -> bool:
    line = lines[index]
    if not _plain_line(lines, index) or _RST_ADORNMENT.match(line) or _RST_NOT_PROSE.match(line):
        return False
    next_line = lines[index + 1] if index + 1 < len(lines) else ""
    return _RST_ADORNMENT.match(next_line) is None  # a title stays on its own line


def _manual_fact(text: str, key: str, unit_start: int, body_line: int | None) -> Fact | None:
    """Return the fact "first sentence of the section" when its first paragraph is prose."""
    if body_line is None or not _PROSE_START.match(text, body_line):
        return None
    span = answer_span(text, body_line)
    if span is None:
        return None
    return Fact(key, unit_start, span[0], span[1], text[span[0]:span[1]])


def _skip_rst_directives(text: str, offset: int | None) -> int | None:
    """Skip blank lines, ".." directive blocks and their indented bodies from offset."""
    while offset is not None and text.startswith("..", offset):
        offset = _line_end(text, offset) + 1
        while offset < len(text):
            end = _line_end(text, offset)
            line = text[offset:end]
            if line.strip() and not line[0].isspace():
                break
            offset = end + 1
        offset = _next_text_line(text, offset) if offset < len(text) else None
    return offset


def annotate_rst_manual(text: str, source: str, title: str) -> AnnotatedText:
    """Annotate reStructuredText: titles underlined (and maybe overlined) with one punctuation character."""
    text = join_paragraph_lines(text, _rst_can_join)
    facts, keys = [], []
    lines = text.split("\n")
    offset = 0
    starts = []
    for line in lines:
        starts.append(offset)
        offset += len(line) + 1
    for index in range(len(lines) - 1):
        line, underline = lines[index], lines[index + 1]
        if not line.strip() or line[0].isspace() or _RST_ADORNMENT.match(line):
            continue
        if not _RST_ADORNMENT.match(underline) or len(underline.rstrip()) < len(line.rstrip()):
            continue
        heading = line.strip()
        if _TITLE_MARKUP.search(heading) or not re.search(r"[A-Za-z]", heading):
            continue
        overlined = index > 0 and _RST_ADORNMENT.match(lines[index - 1]) is not None
        unit_start = starts[index - 1] if overlined else starts[index]
        keys.append((unit_start, heading))
        body_line = _skip_rst_directives(text, _next_text_line(text, starts[index + 1] + len(underline) + 1))
        fact = _manual_fact(text, heading, unit_start, body_line)
        if fact is not None:
            facts.append(fact)
    return AnnotatedText("manual", source, title, text, _by_end(facts), keys)


_VIM_RULE = re.compile(r"^={40,}\s*$", re.MULTILINE)
_VIM_TAGS = re.compile(r"(?:\s+\*[^*\s]+\*)+\s*$")
_VIM_TAG_LINE = re.compile(r"^\s*(?:\*[^*\s]+\*\s*)+$")
_VIM_NUMBER = re.compile(r"^(?:\*\d+\.\d+\*|\d+(?:\.\d+)*\.?)\s+")


def _vim_can_join(lines: list[str], index: int) -> bool:
    line = lines[index]
    if not _plain_line(lines, index) or "\t" in line or _VIM_RULE.match(line) or line.rstrip().endswith(" ~"):
        return False
    return index == 0 or not _VIM_RULE.match(lines[index - 1])  # a heading stays on its own line


def _vim_ends_run(line: str) -> bool:
    """True for a line that ends with ">", which starts an example block in Vim help."""
    stripped = line.rstrip()
    return stripped == ">" or stripped.endswith(" >")


def annotate_vim_manual(text: str, source: str, title: str) -> AnnotatedText:
    """Annotate Vim help: sections start after a rule of "=" with a line such as
    "*01.1*<Tab>Two manuals" or "1. Deleting text<Tab>*deleting*"."""
    text = join_paragraph_lines(text, _vim_can_join, _vim_ends_run)
    facts, keys = [], []
    for rule in _VIM_RULE.finditer(text):
        heading_start = rule.end() + 1
        if heading_start >= len(text):
            continue
        heading_line = text[heading_start:_line_end(text, heading_start)]
        heading = _VIM_NUMBER.sub("", _VIM_TAGS.sub("", heading_line)).strip()
        if not heading or "\t" in heading or len(heading) > 80 or not re.search(r"[A-Za-z]", heading):
            continue
        keys.append((rule.start(), heading))
        body_line = _next_text_line(text, _line_end(text, heading_start))
        while body_line is not None and _VIM_TAG_LINE.match(text[body_line:_line_end(text, body_line)]):
            body_line = _next_text_line(text, _line_end(text, body_line))
        fact = _manual_fact(text, heading, rule.start(), body_line)
        if fact is not None:
            facts.append(fact)
    return AnnotatedText("manual", source, title, text, _by_end(facts), keys)


_NUMBERED_HEADING = re.compile(r"^\d+(?:\.\d+)*\.?[ \t]+([A-Z][^\n]{0,100}?)[ \t]*$", re.MULTILINE)


def annotate_html_manual(text: str, source: str, title: str) -> AnnotatedText:
    """Annotate a manual converted from HTML: numbered headings such as "5.2. Default Values"
    on their own paragraph, followed by a prose paragraph.

    A heading line that occurs again later in the page is a table-of-contents or
    navigation line, so only its last occurrence counts. Only headings with a prose
    paragraph after them count as keys.
    """
    facts, keys = [], []
    later_lines: set[str] = set()
    headings = []
    for heading in reversed(list(_NUMBERED_HEADING.finditer(text))):
        if heading.group(0) not in later_lines:
            headings.append(heading)
        later_lines.add(heading.group(0))
    for heading in reversed(headings):
        title_text = heading.group(1).strip()
        blank_before = heading.start() == 0 or text.startswith("\n\n", heading.start() - 2)
        if not blank_before or title_text.endswith((".", ",", ";", ":")):
            continue
        body_line = _next_text_line(text, heading.end())
        if body_line is None or body_line != heading.end() + 2:  # one blank line between
            continue
        fact = _manual_fact(text, title_text, heading.start(), body_line)
        if fact is not None and len(text[body_line:_line_end(text, body_line)].split()) >= 6:
            keys.append((heading.start(), title_text))
            facts.append(fact)
    return AnnotatedText("manual", source, title, text, _by_end(facts), keys)


_MANUAL_ANNOTATORS = {
    "python_docs": annotate_rst_manual,
    "vim_docs": annotate_vim_manual,
    "sqlite_docs": annotate_html_manual,
    "postgresql_docs": annotate_html_manual,
}


def annotate_manual(records: Sequence[dict]) -> AnnotatedText:
    """Annotate the pages of one manual, in record order, as one text with blank lines between pages.

    Joining the pages lets an excerpt run on into the next page when a long distance
    between fact and question needs more text than one page has.
    """
    source = records[0]["source"]
    annotator = _MANUAL_ANNOTATORS[source]
    pieces = [annotator(record["text"].strip("\n"), source, record["title"]) for record in records]
    title = records[0]["title"] if len(records) == 1 else f"{len(records)} pages"
    return _concatenate(pieces, "manual", source, title)


def _concatenate(pieces: list[AnnotatedText], kind: str, source: str, title: str) -> AnnotatedText:
    parts, facts, keys = [], [], []
    offset = 0
    for piece in pieces:
        parts.append(piece.text)
        facts.extend(Fact(f.key, f.unit_start + offset, f.start + offset, f.end + offset, f.answer)
                     for f in piece.facts)
        keys.extend((position + offset, key) for position, key in piece.keys)
        offset += len(piece.text) + 2
    return AnnotatedText(kind, source, title, "\n\n".join(parts), _by_end(facts), keys)


# ---------------------------------------------------------------------------
# Bibles: verse references from the diatheke exports
# ---------------------------------------------------------------------------

_VERSE_LINE = re.compile(r"^(\s*)((?:I{1,3}|IV|[1-4])?\s?[A-Za-z][A-Za-z ]*?) (\d+):(\d+):\s?")


def read_diatheke_verses(export_text: str) -> list[tuple[str, str, str]]:
    """Return (book, "C:V", verse text) for every verse of a `diatheke -f plain` export.

    Lines without a reference continue the verse before them (poetry), except a heading.
    diatheke prints a psalm heading before a reference line that it indents, and repeats
    it before later verses. So the last text line before an indented reference is dropped.
    Pilcrows and the module name line are dropped and whitespace is collapsed.
    """
    verses: list[tuple[str, str, list[str]]] = []
    pending: list[str] = []  # text lines after the current verse's reference line
    for line in export_text.split("\n"):
        match = _VERSE_LINE.match(line)
        if match is None:
            if line.strip() and verses:
                pending.append(line)
            continue
        if match.group(1) and pending:
            pending.pop()  # the heading before an indented reference
        if verses:
            verses[-1][2].extend(pending)
        pending = []
        book, chapter, verse = match.group(2).strip(), match.group(3), match.group(4)
        verses.append((book, f"{chapter}:{verse}", [line[match.end():]]))
    if verses:
        if pending and re.match(r"^\(\w+\)$", pending[-1].strip()):
            pending.pop()
        verses[-1][2].extend(pending)
    result = []
    for book, reference, parts in verses:
        content = " ".join(" ".join(parts).replace("¶", " ").split())
        result.append((book, reference, content))
    return result


def annotate_bible(records: Sequence[dict], export_path: Path) -> AnnotatedText | None:
    """Annotate the books of one Bible as "Book C:V text" lines, in record order.

    Verses come from the diatheke export at export_path, so only books that the records
    list are used, and a book whose first verse is not in its record's text is skipped
    with a warning. Returns None when no book is left.
    """
    verses_by_book: dict[str, list[tuple[str, str]]] = {}
    for book, reference, content in read_diatheke_verses(Path(export_path).read_text(encoding="utf-8")):
        verses_by_book.setdefault(book, []).append((reference, content))
    source = records[0]["source"]
    lines, facts, keys = [], [], []
    offset = 0
    for record in records:
        verses = verses_by_book.get(record["title"])
        if not verses:
            logger.warning("%s: book %r is not in %s; skipped", source, record["title"], export_path)
            continue
        record_text = " ".join(record["text"].split())
        if verses[0][1] not in record_text:
            logger.warning("%s: the first verse of %r in %s is not in the corpus record; skipped",
                           source, record["title"], export_path)
            continue
        for reference, content in verses:
            key = f"{record['title']} {reference}"
            line = f"{key} {content}"
            keys.append((offset, key))
            if content:
                start = offset + len(key) + 1
                end = offset + clip_words(line, len(key) + 1, len(line))
                if len(line[start - offset:end - offset].split()) >= 2:
                    facts.append(Fact(key, offset, start, end, line[start - offset:end - offset]))
            lines.append(line)
            offset += len(line) + 1
    if not lines:
        return None
    return AnnotatedText("bible", source, f"{len(records)} books", "\n".join(lines), _by_end(facts), keys)


# ---------------------------------------------------------------------------
# Records -> annotated texts
# ---------------------------------------------------------------------------


def _by_end(facts: list[Fact]) -> list[Fact]:
    return sorted(facts, key=lambda fact: fact.end)


def annotate_records(records: Iterable[dict], *, wordnet_dir: Path | None = DEFAULT_WORDNET_DIR,
                     bible_exports: Mapping[str, Path] | None = None) -> list[AnnotatedText]:
    """Annotate every record whose source supports a kind of question; skip the others.

    Novels, speeches, the Jargon File and the Devil's Dictionary give one text per record,
    WordNet one per record of glosses, each manual one text of all its pages, and each
    Bible one text of all its books. WordNet needs wordnet_dir and the Bibles need
    bible_exports (source name -> diatheke export); sources without them are skipped with
    a warning. Texts without facts are dropped.
    """
    by_source: dict[str, list[dict]] = {}
    for record in records:
        if record["source"] in SOURCE_KINDS:
            by_source.setdefault(record["source"], []).append(record)

    texts: list[AnnotatedText | None] = []
    for source, source_records in by_source.items():
        if source == "austen":
            texts.extend(annotate_novel(record) for record in source_records)
        elif source == "sotu":
            for record in source_records:
                text = annotate_speech(record)
                if text is None:
                    logger.warning("speech %r has an unexpected title; skipped", record["title"])
                texts.append(text)
        elif source == "jargon_file":
            texts.extend(annotate_jargon(record) for record in source_records)
        elif source == "devils_dictionary":
            texts.extend(annotate_devils_dictionary(record) for record in source_records)
        elif source == "wordnet":
            if wordnet_dir is None:
                logger.warning("no WordNet directory given, so WordNet glosses give no questions")
            else:
                texts.extend(annotate_wordnet(source_records, Path(wordnet_dir)))
        elif source in BIBLE_SOURCES:
            export_path = (bible_exports or {}).get(source)
            if export_path is None or not Path(export_path).is_file():
                logger.warning("%s: diatheke export %s not found, so this Bible gives no questions",
                               source, export_path)
            else:
                texts.append(annotate_bible(source_records, Path(export_path)))
        else:
            texts.append(annotate_manual(source_records))

    kept = [text for text in texts if text is not None and text.facts]
    counts = Counter((text.kind, text.source) for text in kept)
    for (kind, source), count in sorted(counts.items()):
        n_facts = sum(len(t.facts) for t in kept if t.source == source)
        logger.info("%s: %d texts with %d facts from %s", kind, count, n_facts, source)
    return kept


def bible_exports_from_manifest(corpus_dir: Path) -> dict[str, Path]:
    """Return the diatheke export path of each Bible source, as the corpus manifest records it."""
    manifest_path = Path(corpus_dir) / "manifest.json"
    if not manifest_path.is_file():
        return {}
    sources = json.loads(manifest_path.read_text(encoding="utf-8")).get("sources", {})
    return {name: Path(sources[name]["raw_path"]) for name in BIBLE_SOURCES if name in sources}


# ---------------------------------------------------------------------------
# Excerpts with a requested distance between fact and question
# ---------------------------------------------------------------------------


class ExampleBuilder:
    """Cut excerpts from annotated texts so that a requested number of tokens follows the fact.

    The tokenizer's encode_special_tokens is switched on, as in the corpus token files,
    so that a document's text can never produce a special token.
    """

    def __init__(self, texts: Sequence[AnnotatedText], tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        tokenizer.encode_special_tokens = True
        self.by_kind: dict[str, dict[str, list[AnnotatedText]]] = {}
        for text in texts:
            if text.facts:
                self.by_kind.setdefault(text.kind, {}).setdefault(text.source, []).append(text)
        self._fact_ends = {id(text): [fact.end for fact in text.facts] for text in texts}
        self._key_positions = {id(text): [position for position, _ in text.keys] for text in texts}
        self._chars_per_token = {id(text): self._estimate_chars_per_token(text.text) for text in texts}

    @property
    def kinds(self) -> list[str]:
        return [kind for kind in KINDS if kind in self.by_kind]

    def _encode(self, text: str):
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _estimate_chars_per_token(self, text: str) -> float:
        sample = text[:20000]
        return len(sample) / max(1, len(self._encode(sample).ids))

    # -- choosing a fact ---------------------------------------------------

    def _feasible_count(self, text: AnnotatedText, distance: int) -> int:
        """Return how many facts, taken in order of their end, have about `distance` tokens after them."""
        needed_chars = distance * self._chars_per_token[id(text)] * 0.9
        return bisect.bisect_right(self._fact_ends[id(text)], len(text.text) - needed_chars)

    def choose_fact(self, kind: str, distance: int, rng: np.random.Generator) -> tuple[AnnotatedText, Fact] | None:
        """Pick a source of the kind, then a text and a fact with room for `distance` tokens after it.

        Each source has the same chance. Returns None when no fact of the kind has room.
        """
        candidates = []
        for source in sorted(self.by_kind.get(kind, {})):
            counts = [(text, self._feasible_count(text, distance)) for text in self.by_kind[kind][source]]
            counts = [(text, count) for text, count in counts if count > 0]
            if counts:
                candidates.append(counts)
        if not candidates:
            return None
        counts = candidates[int(rng.integers(len(candidates)))]
        weights = np.array([count for _, count in counts], dtype=np.float64)
        text, count = counts[int(rng.choice(len(counts), p=weights / weights.sum()))]
        return text, text.facts[int(rng.integers(count))]

    # -- cutting text by tokens -------------------------------------------

    def _offset_after_tokens(self, text: str, begin: int, n_tokens: int, limit: int) -> int:
        """Return an offset about n_tokens tokens after begin, moved back to a line or word end."""
        if n_tokens <= 0:
            return begin
        span = max(256, n_tokens * 6)
        while True:
            window_end = min(limit, begin + span)
            encoding = self._encode(text[begin:window_end])
            if len(encoding.ids) > n_tokens or window_end == limit:
                break
            span *= 2
        if len(encoding.ids) <= n_tokens:
            return window_end
        cut = begin + encoding.offsets[n_tokens - 1][1]
        slack = min(400, max(16, (cut - begin) // 20))
        newline = text.rfind("\n", max(begin + 1, cut - slack), cut + 1)
        if newline != -1:
            return newline
        space = text.rfind(" ", max(begin + 1, cut - 80), cut + 1)
        return space if space != -1 else cut

    def _offset_before_tokens(self, text: str, end: int, n_tokens: int, floor: int) -> int:
        """Return an offset about n_tokens tokens before end, moved on to a line or word start."""
        if n_tokens <= 0 or end <= floor:
            return end
        span = max(256, n_tokens * 6)
        while True:
            window_start = max(floor, end - span)
            encoding = self._encode(text[window_start:end])
            if len(encoding.ids) > n_tokens or window_start == floor:
                break
            span *= 2
        if len(encoding.ids) <= n_tokens:
            cut = window_start
        else:
            cut = window_start + encoding.offsets[len(encoding.ids) - n_tokens][0]
        if cut > floor and text[cut - 1] != "\n":
            slack = min(400, max(16, (end - cut) // 20))
            newline = text.find("\n", cut, min(end, cut + slack))
            if newline != -1:
                cut = newline + 1
            else:
                space = text.find(" ", cut, min(end, cut + 80))
                cut = space + 1 if space != -1 else cut
        while cut < end and text[cut] in "\n ":
            cut += 1
        return cut

    # -- building an example ----------------------------------------------

    def _key_is_unique(self, text: AnnotatedText, fact: Fact, start: int, end: int) -> bool:
        if not text.keys:
            return True
        positions = self._key_positions[id(text)]
        low, high = bisect.bisect_left(positions, start), bisect.bisect_left(positions, end)
        return sum(1 for _, key in text.keys[low:high] if key == fact.key) <= 1

    def build(self, kind: str, distance: int, rng: np.random.Generator, *, before_tokens: int = 0,
              max_sample_tokens: int | None = None, max_tries: int = 40) -> QAExample | None:
        """Return an example of the kind with about `distance` tokens between fact and question.

        About before_tokens tokens of text go before the fact's entry, section, verse or
        chapter (nothing goes before a speech's header line). With max_sample_tokens the
        whole training sample, answer and <|endoftext|> included, fits in that many tokens:
        the text before the fact is cut first, then the text after it. Returns None when
        max_tries facts in a row give no usable excerpt.
        """
        for _ in range(max_tries):
            choice = self.choose_fact(kind, distance, rng)
            if choice is None:
                return None
            text, fact = choice
            example = self._build_from_fact(text, fact, distance, before_tokens, max_sample_tokens, rng)
            if example is not None:
                return example
        return None

    def _build_from_fact(self, text: AnnotatedText, fact: Fact, distance: int, before_tokens: int,
                         max_sample_tokens: int | None, rng: np.random.Generator) -> QAExample | None:
        question = QUESTIONS[text.kind].format(key=fact.key)
        question_ids = self._encode(question).ids
        answer_ids = self._encode(fact.answer).ids
        max_document_tokens = None
        if max_sample_tokens is not None:
            # <|document|>, <|question|>, <|answer|>, <|endoftext|> and at most UNIT - 1 <|pad|>.
            max_document_tokens = max_sample_tokens - len(question_ids) - len(answer_ids) - 4 - (UNIT - 1)
            if max_document_tokens <= 0:
                return None

        body_from = self._speech_body_start(text, distance, rng) if text.kind == "speech" else None
        tail_tokens = distance
        for _ in range(6):
            if body_from is not None:
                end = self._offset_after_tokens(text.text, body_from, tail_tokens, len(text.text))
                document = text.text[:text.body_start] + text.text[body_from:end]
                fact_start, fact_end = fact.start, fact.end
            else:
                end = self._offset_after_tokens(text.text, fact.end, tail_tokens, len(text.text))
                start = self._offset_before_tokens(text.text, fact.unit_start, before_tokens, 0)
                if not self._key_is_unique(text, fact, start, end):
                    return None
                document = text.text[start:end]
                fact_start, fact_end = fact.start - start, fact.end - start

            document = document.rstrip()
            encoding = self._encode(document)
            overflow = 0 if max_document_tokens is None else len(encoding.ids) - max_document_tokens
            too_short = self._tokens_after(encoding, fact_end) < 0.9 * distance - 16
            if overflow <= 0 and tail_tokens == distance and too_short:
                return None  # the text ends too soon after this fact for the requested distance
            if overflow <= 0:
                return self._example(text, document, fact_start, fact_end, question, question_ids,
                                     fact.answer, encoding)
            # Too long for the row: drop text before the fact first, then text after it.
            if before_tokens > 0:
                before_tokens = max(0, before_tokens - overflow - 8)
            else:
                tail_tokens = max(0, self._tokens_after(encoding, fact_end) - overflow - 8)
        return None

    def _speech_body_start(self, text: AnnotatedText, distance: int, rng: np.random.Generator) -> int:
        """Return where the address text of a speech excerpt starts: the beginning of the address
        or, half of the time, a sentence start that leaves about `distance` tokens of text."""
        starts = [text.body_start]
        if rng.random() < 0.5:
            latest = len(text.text) - distance * self._chars_per_token[id(text)]
            starts += [match.end() for match in re.finditer(r"[.!?][\"'”’)]? (?=[A-Z“\"])", text.text)
                       if match.end() <= latest]
        return starts[int(rng.integers(len(starts)))]

    @staticmethod
    def _last_fact_token(encoding, fact_end: int) -> int:
        offsets = encoding.offsets
        return bisect.bisect_left([start for start, _ in offsets], fact_end) - 1

    def _tokens_after(self, encoding, fact_end: int) -> int:
        return len(encoding.ids) - 1 - self._last_fact_token(encoding, fact_end)

    def _example(self, text: AnnotatedText, document: str, fact_start: int, fact_end: int, question: str,
                 question_ids: list[int], answer: str, encoding) -> QAExample:
        document_ids = list(encoding.ids)
        padding = len(question_tokens(1 + len(document_ids), question_ids, UNIT)) - len(question_ids) - 2
        distance = self._tokens_after(encoding, fact_end) + padding
        return QAExample(text.kind, text.source, text.title, document, question, answer, fact_start, fact_end,
                         distance, len(document_ids), document_ids)


def iter_qa_examples(records: Iterable[dict], tokenizer: Tokenizer, distances: Iterable[int], *,
                     seed: int = 0, kinds: Sequence[str] | None = None, before_tokens: int = 0,
                     max_sample_tokens: int | None = None, wordnet_dir: Path | None = DEFAULT_WORDNET_DIR,
                     bible_exports: Mapping[str, Path] | None = None) -> Iterator[QAExample]:
    """Yield one example per kind for each distance, from any list of corpus records.

    kinds defaults to every kind that the records support. A kind with no fact that has
    room for a distance yields nothing for it. See ExampleBuilder.build for the options.
    """
    texts = annotate_records(records, wordnet_dir=wordnet_dir, bible_exports=bible_exports)
    builder = ExampleBuilder(texts, tokenizer)
    rng = np.random.default_rng(seed)
    for distance in distances:
        for kind in kinds or builder.kinds:
            example = builder.build(kind, distance, rng, before_tokens=before_tokens,
                                    max_sample_tokens=max_sample_tokens)
            if example is not None:
                yield example


# ---------------------------------------------------------------------------
# Training rows
# ---------------------------------------------------------------------------


def sample_for(example: QAExample, tokenizer: Tokenizer) -> list[int]:
    """Return the training sample of an example, with a UNIT-token prompt unit."""
    question_ids = tokenizer.encode(example.question, add_special_tokens=False).ids
    answer_ids = tokenizer.encode(example.answer, add_special_tokens=False).ids
    return training_sample(example.document_ids, question_ids, answer_ids, UNIT)


def _kind_schedule(kinds: Sequence[str], n_rows: int, rng: np.random.Generator) -> list[str]:
    """Return n_rows kinds, as equal in number as n_rows allows, in random order."""
    schedule = [kinds[index % len(kinds)] for index in range(n_rows)]
    return [schedule[index] for index in rng.permutation(n_rows)]


def _histogram(values: Sequence[int], bin_width: int, upper: int) -> dict:
    counts = np.bincount(np.asarray(values, dtype=np.int64) // bin_width, minlength=-(-upper // bin_width))
    return {"bin_width": bin_width, "counts": [int(count) for count in counts]}


def _read_training_records(corpus_dir: Path) -> list[dict]:
    """Return the records of corpus_dir/train.jsonl, without any held-out record that it may contain."""
    records = list(read_jsonl(corpus_dir / "train.jsonl"))
    heldout = [record for record in records if is_heldout(record)]
    if heldout:
        logger.warning("dropped %d held-out records found in %s/train.jsonl: %s", len(heldout), corpus_dir,
                       ", ".join(repr(record["title"]) for record in heldout[:5]))
    return [record for record in records if not is_heldout(record)]


def build_qa_rows(corpus_dir: Path, tokenizer_path: Path, out_path: Path, context: int, n_rows: int,
                  seed: int, *, wordnet_dir: Path | None = DEFAULT_WORDNET_DIR,
                  bible_exports: Mapping[str, Path] | None = None, max_distance: int | None = None,
                  pack: bool = False) -> Path:
    """Write n_rows training rows of `context` tokens to out_path and return the sidecar's path.

    out_path is a flat uint16 file of shape (n_rows, context). Each row starts with one
    training sample (photon_cli.prompt.training_sample with a UNIT-token unit, so the
    document is at position 0). Without `pack` the row goes on with text from train.bin
    after its <|endoftext|>. With `pack` more samples follow, each starting on a multiple of
    UNIT tokens after <|pad|> tokens, while one still fits; train.bin text fills the rest.
    Packing puts several answers in every row instead of one, so answers make up a larger
    share of the training targets. The first sample's kinds are as equal in number
    as n_rows allows (packed samples draw theirs at random), and distances are drawn
    uniformly from [0, max_distance] (default and upper bound: context -
    ROW_OVERHEAD_TOKENS). Only train.jsonl is read, and any held-out record in it is
    dropped. The output depends only on the inputs and the seed.

    Writes out_path with the suffix .json (context, counts per kind and source, distance
    histogram, seed) and .rows.jsonl (question, answer, distance and answer position of
    each row) next to it. bible_exports defaults to the paths in corpus_dir/manifest.json.
    """
    corpus_dir, out_path = Path(corpus_dir), Path(out_path)
    if context - ROW_OVERHEAD_TOKENS < 0:
        raise ValueError(f"context {context} is too short for QA rows; use at least {ROW_OVERHEAD_TOKENS} tokens")
    if max_distance is not None and max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    max_distance = min(context - ROW_OVERHEAD_TOKENS, max_distance if max_distance is not None else context)
    if n_rows <= 0:
        raise ValueError(f"n_rows must be positive, got {n_rows}")
    filler = np.memmap(corpus_dir / "train.bin", dtype=np.uint16, mode="r")
    if len(filler) < context:
        raise ValueError(f"{corpus_dir}/train.bin has {len(filler)} tokens, fewer than one row of {context}")

    records = _read_training_records(corpus_dir)
    if bible_exports is None:
        bible_exports = bible_exports_from_manifest(corpus_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    texts = annotate_records(records, wordnet_dir=wordnet_dir, bible_exports=bible_exports)
    builder = ExampleBuilder(texts, tokenizer)
    if not builder.kinds:
        raise ValueError(f"no record in {corpus_dir}/train.jsonl supports a kind of question")

    rng = np.random.default_rng(seed)
    schedule = _kind_schedule(builder.kinds, n_rows, rng)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as out_file:
        row_records = _write_rows(out_file, builder, schedule, context, filler, rng, max_distance, pack)

    rows_path = out_path.with_suffix(".rows.jsonl")
    with open(rows_path, "w", encoding="utf-8") as file:
        for record in row_records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
    distances = [record["distance_tokens"] for record in row_records]
    sidecar = {
        "context": context,
        "n_rows": n_rows,
        "samples": len(row_records),
        "packed": pack,
        "dtype": "uint16",
        "unit": UNIT,
        "seed": seed,
        "tokens": context * n_rows,
        "sample_tokens": int(sum(record["sample_tokens"] for record in row_records)),
        "max_requested_distance": max_distance,
        "kinds": dict(Counter(record["kind"] for record in row_records)),
        "sources": dict(Counter(record["source"] for record in row_records)),
        "distance_histogram": _histogram(distances, max(1, context // 16), context),
        "tokenizer_sha256": tokenizer_sha256(tokenizer_path),
        "corpus": str(corpus_dir / "train.jsonl"),
        "rows_file": rows_path.name,
    }
    sidecar_path = out_path.with_suffix(".json")
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d rows of %d tokens to %s; kinds %s", n_rows, context, out_path, sidecar["kinds"])
    return sidecar_path


def _write_rows(out_file, builder: ExampleBuilder, schedule: Sequence[str], context: int, filler: np.ndarray,
                rng: np.random.Generator, max_distance: int, pack: bool) -> list[dict]:
    """Write one row per scheduled kind to out_file and return a record describing each sample."""
    records = []
    for row_index, kind in enumerate(schedule):
        row = np.empty(context, dtype=np.uint16)
        position = 0
        while True:
            room = context - position
            if position and room < 2 * ROW_OVERHEAD_TOKENS:
                break
            example = _example_for_room(builder, kind, room, max_distance, rng)
            if example is None:
                if position:
                    break
                raise RuntimeError(f"found no usable {kind} example for row {row_index}; "
                                   f"the {kind} texts may be too short")
            sample = sample_for(example, builder.tokenizer)
            row[position:position + len(sample)] = sample
            answer_tokens = len(builder.tokenizer.encode(example.answer, add_special_tokens=False).ids)
            records.append({
                "row": row_index,
                "offset": position,
                "kind": example.kind,
                "source": example.source,
                "title": example.title,
                "question": example.question,
                "answer": example.answer,
                "distance_tokens": example.distance_tokens,
                "document_tokens": example.document_tokens,
                "answer_start": position + len(sample) - answer_tokens - 1,
                "sample_tokens": len(sample),
            })
            position += len(sample)
            if not pack:
                break
            aligned = min(context, -(-position // UNIT) * UNIT)
            row[position:aligned] = PAD_ID
            position = aligned
            kind = builder.kinds[int(rng.integers(len(builder.kinds)))]
        fill = context - position
        offset = int(rng.integers(0, len(filler) - fill + 1))
        row[position:] = filler[offset:offset + fill]
        out_file.write(row.tobytes())
        if (row_index + 1) % 200 == 0:
            logger.info("%d of %d rows", row_index + 1, len(schedule))
    return records


def _example_for_room(builder: ExampleBuilder, kind: str, room: int, max_distance: int,
                      rng: np.random.Generator) -> QAExample | None:
    """Return an example whose training sample fits `room` tokens, or None after 10 tries."""
    limit = min(max_distance, room - ROW_OVERHEAD_TOKENS)
    if limit < 0:
        return None
    for _ in range(10):
        distance = int(rng.integers(0, limit + 1))
        before = int(rng.integers(0, limit - distance + 1))
        example = builder.build(kind, distance, rng, before_tokens=before, max_sample_tokens=room)
        if example is not None:
            return example
    return None


REPEAT_QUESTION = "Repeat the document."


def build_repeat_rows(corpus_dir: Path, tokenizer_path: Path, out_path: Path, context: int, n_rows: int,
                      seed: int, *, min_tokens: int = 16, max_tokens: int = 192) -> Path:
    """Write n_rows rows of packed copy samples to out_path and return out_path.

    Each sample is a slice of train.bin of min_tokens to max_tokens tokens as the document,
    the question REPEAT_QUESTION, and the same slice as the answer, in the `ask` prompt
    format. Samples start on multiples of UNIT tokens, as in packed QA rows.

    Why: every QA answer is copied from the document, and a model that cannot copy a span
    it has read cannot learn to look one up. The shipped small models, after plain
    pre-training, predicted the second copy of a repeated 256-token passage no better than
    the first. Copy samples give that skill a direct loss.
    """
    out_path = Path(out_path)
    if max_tokens < min_tokens or min_tokens < 1:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens} and {max_tokens}")
    filler = np.memmap(Path(corpus_dir) / "train.bin", dtype=np.uint16, mode="r")
    tokenizer = load_tokenizer(tokenizer_path)
    question_ids = tokenizer.encode(REPEAT_QUESTION, add_special_tokens=False).ids
    largest = len(training_sample([0] * max_tokens, question_ids, [0] * max_tokens, UNIT))
    if largest > context:
        raise ValueError(f"context {context} is too short for copy samples of {max_tokens} tokens; "
                         f"use at least {largest} tokens")
    rng = np.random.default_rng(seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as out_file:
        for _ in range(n_rows):
            row = np.full(context, PAD_ID, dtype=np.uint16)
            position = 0
            while True:
                length = int(rng.integers(min_tokens, max_tokens + 1))
                start = int(rng.integers(0, len(filler) - length))
                ids = filler[start:start + length].astype(np.int64).tolist()
                if EOS_ID in ids:  # a document boundary: <|endoftext|> would end the answer early
                    continue
                sample = training_sample(ids, question_ids, ids, UNIT)
                if position + len(sample) > context:
                    break
                row[position:position + len(sample)] = sample
                position = -(-(position + len(sample)) // UNIT) * UNIT
            out_file.write(row.tobytes())
    return out_path


# ---------------------------------------------------------------------------
# Held-out evaluation set
# ---------------------------------------------------------------------------


def build_qa_eval(corpus_dir: Path, tokenizer_path: Path, out_path: Path, distances: Sequence[int],
                  per_distance: int, seed: int, *, contexts: Sequence[int] = (2048, 8192)) -> dict[str, int]:
    """Write a JSONL evaluation set from heldout.jsonl only and return the count of records per kind.

    For each kind that the held-out documents support and each distance, up to
    per_distance examples with distinct documents are written as records
    {id, kind, source, title, document, question, answer, distance_tokens,
    document_tokens, target_distance, sample_tokens, fact_start, fact_end}.
    Each training-format sample fits the smallest context in `contexts` that leaves
    ROW_OVERHEAD_TOKENS of room after the distance, so the distances below 2048 stay
    usable by a 2048-token model. Up to EVAL_MAX_BEFORE_TOKENS tokens of text go before
    the fact.
    """
    corpus_dir, out_path = Path(corpus_dir), Path(out_path)
    records = list(read_jsonl(corpus_dir / "heldout.jsonl"))
    tokenizer = load_tokenizer(tokenizer_path)
    # The held-out split has no WordNet glosses and no Bible books.
    builder = ExampleBuilder(annotate_records(records, wordnet_dir=None, bible_exports={}), tokenizer)
    rng = np.random.default_rng(seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    with open(out_path, "w", encoding="utf-8") as file:
        for kind in builder.kinds:
            for distance in distances:
                context = next((c for c in sorted(contexts) if distance + ROW_OVERHEAD_TOKENS <= c), max(contexts))
                examples = _distinct_examples(builder, kind, distance, per_distance, context, rng)
                for index, example in enumerate(examples):
                    record = {
                        "id": f"{kind}-{distance:04d}-{index:02d}",
                        "kind": kind,
                        "source": example.source,
                        "title": example.title,
                        "document": example.document,
                        "question": example.question,
                        "answer": example.answer,
                        "distance_tokens": example.distance_tokens,
                        "document_tokens": example.document_tokens,
                        "target_distance": distance,
                        "sample_tokens": len(sample_for(example, tokenizer)),
                        "fact_start": example.fact_start,
                        "fact_end": example.fact_end,
                    }
                    file.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts[kind] += len(examples)
                if len(examples) < per_distance:
                    logger.warning("%s at distance %d: only %d of %d distinct examples", kind, distance,
                                   len(examples), per_distance)
    logger.info("wrote %d evaluation records to %s: %s", sum(counts.values()), out_path, dict(counts))
    return dict(counts)


def _distinct_examples(builder: ExampleBuilder, kind: str, distance: int, count: int, context: int,
                       rng: np.random.Generator) -> list[QAExample]:
    """Return up to `count` examples with distinct (document, question) pairs that fit `context` tokens."""
    room = max(0, min(EVAL_MAX_BEFORE_TOKENS, context - ROW_OVERHEAD_TOKENS - distance))
    examples: list[QAExample] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(count * 10):
        if len(examples) == count:
            break
        before = int(rng.integers(0, room + 1))
        example = builder.build(kind, distance, rng, before_tokens=before, max_sample_tokens=context)
        if example is None or (example.document, example.question) in seen:
            continue
        seen.add((example.document, example.question))
        examples.append(example)
    return examples
