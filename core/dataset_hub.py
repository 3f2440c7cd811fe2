"""A Hub dataset before downloading it: its size, files and licence, and its first rows read from a prefix of one
data file, run through the studio's own format detection, so that the user sees what training would read.

    facts = dataset_facts("org/name")                     # one API call: files with sizes, licence, gated, card
    preview = preview_dataset("org/name", split="train")  # the first 20 rows, a few hundred kB read at most

How the rows are read without downloading the dataset: ``huggingface_hub``'s ``HfFileSystem`` (fsspec) opens the
data file of the split at the commit the facts came from, and every read of it is an HTTP Range request for the
bytes asked for (plus a small read-ahead). JSON lines, JSON arrays, CSV/TSV and text files are parsed from the start
until the rows are there; a Parquet file is opened through ``pyarrow.parquet.ParquetFile`` on the same file object,
which reads the footer, then only the first row group's column chunks (refused when that row group alone is larger
than ``max_row_group_bytes``). A hard byte budget bounds every preview, and :attr:`DatasetPreview.bytes_read` says
what was fetched.

Which file belongs to which split follows ``datasets``: the ``configs:`` of the dataset card when it has them,
otherwise the split keywords in file and folder names (``train*.jsonl``, ``data/train-00000-of-00002.parquet``,
``valid``/``dev`` → validation, ``eval``/``testing`` → test); a repository whose files name no split is all
``train``. The full download reuses :func:`core.model_hub.download` (``repo_type="dataset"``): progress, cancel and
resume work the same way as for models.

Standard library only at import time; ``huggingface_hub``, ``pyarrow`` and ``yaml`` are imported inside functions.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from core.model_hub import (
    DownloadCancelled,
    DownloadProgress,
    HubError,
    cached_snapshot,
    card_excerpt,
    describe_hub_error,
    hub_endpoint,
)

DEFAULT_ROWS = 20
MAX_ROWS = 1000
MAX_PREFIX_BYTES = 8 * 2**20  # a text preview never reads more than this (a 20-row prefix is usually < 100 kB)
MAX_ROW_GROUP_BYTES = 64 * 2**20  # a Parquet preview reads the first row group only when it is this small or less
BLOCK_SIZE = 64 * 1024  # read-ahead of each ranged request
SPLIT_KEYWORDS = {  # datasets.data_files: the words that put a file into a split
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
KINDS = {  # suffix -> how the preview reads it (the packaged builders of datasets)
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonlines": "jsonl", ".json": "json",
    ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".txt": "text",
}
LOCAL_SUFFIXES = {".jsonl", ".ndjson", ".jsonlines", ".json", ".csv", ".tsv", ".parquet", ".pq"}  # data.path reads
_SEPARATORS = re.compile(r"[-._ 0-9/]+")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class PreviewCancelled(Exception):
    """The caller's progress callback asked to stop."""


class _BudgetSpent(Exception):
    """The preview read as many bytes as it may."""


def looks_like_hub_dataset_id(text: str) -> bool:
    """``org/name`` (not a local path, not a file name with a data suffix)."""
    from pathlib import Path

    text = text.strip()
    if not _HUB_ID.match(text) or PurePosixPath(text).suffix.lower() in KINDS:
        return False
    return not Path(text).exists() and not Path(text.split("/")[0]).is_dir()


# ------------------------------------------------------------------------------------------------------- facts


@dataclass
class DatasetFile:
    path: str
    size: int | None
    split: str | None = None  # the split of the chosen config this file belongs to (data files only)
    kind: str | None = None  # jsonl | json | csv | tsv | parquet | text (files the preview can read)


@dataclass
class DatasetFacts:
    """What the Hub says about a dataset repository, before anything is downloaded."""

    repo_id: str
    sha: str | None
    files: list[DatasetFile]
    splits: dict[str, list[str]]  # split -> data files (of ``config``), in the order datasets reads them
    config: str | None = None  # the card's config these splits belong to (None: no configs in the card)
    configs: list[str] = field(default_factory=list)
    gated: bool | str | None = None
    private: bool | None = None
    license: str | None = None
    card: str = ""
    downloads: int | None = None
    cached_path: str | None = None  # the local snapshot when this revision is already downloaded
    revision: str | None = None

    @property
    def total_size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def data_size(self) -> int:
        return sum(f.size or 0 for f in self.files if f.split)

    def file(self, path: str) -> DatasetFile | None:
        return next((f for f in self.files if f.path == path), None)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_size": self.total_size}


def _kind_of(path: str) -> tuple[str | None, str | None]:
    """(kind, compression) from the file name: ``train.jsonl.gz`` -> (jsonl, gzip)."""
    p = PurePosixPath(path.lower())
    compression = None
    if p.suffix in (".gz", ".gzip"):
        compression, p = "gzip", p.with_suffix("")
    kind = KINDS.get(p.suffix)
    if kind == "parquet" and compression:
        return None, None
    return kind, compression


def _split_in_name(path: str) -> str | None:
    """The split a file name or folder names, as datasets' default patterns read it (``data/train-0000.parquet``,
    ``dev.jsonl``, ``test/part-1.csv``), or None."""
    stem = str(PurePosixPath(path.lower()).with_suffix(""))
    if stem.endswith((".jsonl", ".json", ".csv", ".tsv", ".txt")):  # .jsonl.gz
        stem = stem.rsplit(".", 1)[0]
    words = set(_SEPARATORS.split(stem))
    for split, keywords in SPLIT_KEYWORDS.items():
        if words.intersection(keywords):
            return split
    return None


def _glob(pattern: str, paths: list[str]) -> list[str]:
    pattern = pattern.lstrip("./")
    return sorted(p for p in paths if fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern + "/*"))


def splits_of(paths: list[str], card: dict[str, Any] | None = None,
              config: str | None = None) -> tuple[dict[str, list[str]], str | None, list[str]]:
    """(split -> data files, the config used, all config names) for the files of a dataset repository.

    With ``configs:`` in the card (``- config_name: default`` / ``data_files: - split: train`` / ``path: data/tr*``)
    the chosen config (``config``, else the one marked ``default: true``, else the first) decides; otherwise the split
    keywords in the names, and a repository whose files name no split is one ``train`` split, as in datasets."""
    data = [p for p in paths if _kind_of(p)[0] and not PurePosixPath(p).name.startswith((".", "_"))
            and PurePosixPath(p).name.lower() != "readme.md"]
    configs = [c for c in (card or {}).get("configs") or [] if isinstance(c, dict)]
    names = [str(c.get("config_name", "default")) for c in configs]
    if configs:
        if config is not None and config not in names:
            raise HubError(f"config '{config}' not found; the dataset card names {', '.join(names)}", "not_found")
        chosen = next((c for c in configs if str(c.get("config_name", "default")) == config), None) or next(
            (c for c in configs if c.get("default")), configs[0])
        out: dict[str, list[str]] = {}
        spec = chosen.get("data_files")
        entries = spec if isinstance(spec, list) else [spec] if spec else []
        for entry in entries:
            if isinstance(entry, str):
                split, patterns = "train", [entry]
            elif isinstance(entry, dict):
                split = str(entry.get("split", "train"))
                found = entry.get("path") or []
                patterns = found if isinstance(found, list) else [found]
            else:
                continue
            for pattern in patterns:
                out.setdefault(split, [])
                out[split] += [p for p in _glob(str(pattern), paths) if p not in out[split]]
        if out:
            return out, str(chosen.get("config_name", "default")), names
    if config is not None and config != "default":
        raise HubError(f"config '{config}' not found; the dataset card names no configs", "not_found")
    by_split: dict[str, list[str]] = {}
    for p in sorted(data):
        split = _split_in_name(p)
        if split:
            by_split.setdefault(split, []).append(p)
    if not by_split and data:
        by_split["train"] = sorted(data)
    ordered = {s: by_split[s] for s in SPLIT_KEYWORDS if s in by_split}
    return ordered, None, names


def _api() -> Any:
    from core.model_hub import _api as model_hub_api

    return model_hub_api()


def _license(card: dict[str, Any]) -> str | None:
    value = card.get("license")
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    return str(value) if value else None


def dataset_facts(repo_id: str, *, revision: str | None = None, config: str | None = None,
                  card_lines: int = 8) -> DatasetFacts:
    """Files with sizes, splits, licence, gated flag and the card's first lines of a Hub dataset (one
    ``HfApi.dataset_info(files_metadata=True)`` call and the README; nothing enters the cache). Raises
    :class:`HubError` with one sentence (gated, not found, offline, unreachable)."""
    from core.model_hub import _read_remote_text

    repo_id = repo_id.strip()
    api = _api()
    try:
        info = api.dataset_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - one sentence for the user
        raise describe_hub_error(exc, repo_id, "dataset") from None
    card_data = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    card = card_data.to_dict() if hasattr(card_data, "to_dict") else dict(card_data or {})
    siblings = [(s.rfilename, getattr(s, "size", None)) for s in (info.siblings or [])]
    splits, chosen, names = splits_of([p for p, _ in siblings], card, config)
    split_of = {p: s for s, paths in splits.items() for p in paths}
    files = [DatasetFile(p, size, split_of.get(p), _kind_of(p)[0]) for p, size in siblings]
    facts = DatasetFacts(
        repo_id=repo_id, sha=info.sha, files=files, splits=splits, config=chosen, configs=names,
        gated=getattr(info, "gated", None), private=getattr(info, "private", None), license=_license(card),
        downloads=getattr(info, "downloads", None), revision=revision,
    )
    if any(p.lower() == "readme.md" for p, _ in siblings):
        facts.card = card_excerpt(_read_remote_text(repo_id, "README.md", info.sha, "dataset"), card_lines)
    facts.cached_path = cached_snapshot(repo_id, info.sha, "dataset")
    return facts


# ----------------------------------------------------------------------------------------------------- preview


@dataclass
class DatasetPreview:
    """The first rows of one split, as read from a prefix of its first data file, and the format the studio
    detects in them."""

    facts: DatasetFacts
    split: str
    file: str
    kind: str
    rows: list[dict[str, Any] | None]  # None: a line that is not a JSON object (``problems`` says why)
    lines: list[int | None]  # the 1-based line of each row in the file (text files)
    columns: list[str]
    bytes_read: int  # bytes of the data file fetched (ranged reads, read-ahead included)
    file_size: int | None
    total_rows: int | None = None  # Parquet: from the footer
    row_groups: int | None = None
    format: str | None = None  # messages | sharegpt | alpaca | prompt_completion | text, as the studio detects it
    format_reason: str = ""
    format_columns: dict[str, str] = field(default_factory=dict)
    format_error: str | None = None
    problems: list[str] = field(default_factory=list)
    examples: list[dict[str, Any] | None] = field(default_factory=list)  # each row as the studio normalises it (TRL
    # format: messages / prompt+completion / text), None where the row has an error; empty when no format was found
    note: str | None = None  # why fewer rows than asked (a giant row group, the byte budget, the end of the file)
    elapsed: float = 0.0

    @property
    def read_fraction(self) -> float | None:
        return self.bytes_read / self.file_size if self.file_size else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["facts"] = self.facts.as_dict()
        out["rows"] = [jsonable(r) for r in self.rows]
        return out


def jsonable(value: Any) -> Any:
    """A value as JSON can hold it: bytes (images, audio) by their length, dates as ISO text, others as text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value):,} bytes>"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


Progress = Callable[[int, int], None]  # (bytes read, byte budget); raising from it cancels


class _Meter:
    """Counts the bytes of every ranged request, reports them, and stops at the budget."""

    def __init__(self, budget: int, progress: Progress | None) -> None:
        self.budget = budget
        self.progress = progress
        self.bytes = 0
        self.requests = 0

    def wrap(self, fetch: Callable[[int, int], bytes]) -> Callable[[int, int], bytes]:
        def fetch_counted(start: int, end: int) -> bytes:
            if self.bytes >= self.budget:
                raise _BudgetSpent()
            self.check()
            data = fetch(start, end)
            self.bytes += len(data)
            self.requests += 1
            self.check()
            return data

        return fetch_counted

    def check(self) -> None:
        if self.progress is not None:
            try:
                self.progress(self.bytes, self.budget)
            except Exception as exc:  # the caller's way to cancel (a superseded job, a Cancel button)
                raise PreviewCancelled() from exc


def _open_remote(fs: Any, path: str, meter: _Meter) -> Any:
    f = fs.open(path, "rb", block_size=BLOCK_SIZE, cache_type="readahead")
    f.cache.fetcher = meter.wrap(f.cache.fetcher)
    return f


def preview_dataset(
    repo_id: str,
    *,
    revision: str | None = None,
    split: str | None = "train",
    config: str | None = None,
    rows: int = DEFAULT_ROWS,
    facts: DatasetFacts | None = None,
    progress: Progress | None = None,
    max_bytes: int = MAX_PREFIX_BYTES,
    max_row_group_bytes: int = MAX_ROW_GROUP_BYTES,
    detect: bool = True,
) -> DatasetPreview:
    """The first ``rows`` rows of ``split`` (None: the first split) without downloading the dataset: only a prefix
    of the split's first data file is fetched (ranged reads), at most ``max_bytes`` for text files and the footer
    plus the first row group for Parquet. ``detect`` runs them through the studio's format detection and
    normalisation. ``progress(bytes_read, budget)`` is called around every request; raising from it cancels
    (:class:`PreviewCancelled`). Raises :class:`HubError` (gated, not found, offline, unreachable, no readable
    file)."""
    started = time.perf_counter()
    rows = max(1, min(int(rows), MAX_ROWS))
    if facts is None:
        facts = dataset_facts(repo_id, revision=revision, config=config)
    repo_id = facts.repo_id
    if not facts.splits:
        names = ", ".join(f.path for f in facts.files[:8]) or "no files"
        raise HubError(f"{repo_id}: no data file the studio can preview (JSON lines, JSON, CSV, Parquet or text); "
                       f"the repository holds {names}", "unsupported")
    split = split or next(iter(facts.splits))
    if split not in facts.splits:
        raise HubError(f"{repo_id}: split '{split}' not found; the dataset has {', '.join(facts.splits)}",
                       "not_found")
    readable = [p for p in facts.splits[split] if _kind_of(p)[0]]
    if not readable:
        raise HubError(f"{repo_id}: the files of split '{split}' are not JSON, CSV, Parquet or text "
                       f"({', '.join(facts.splits[split][:4])})", "unsupported")
    path = readable[0]
    kind, compression = _kind_of(path)
    assert kind is not None
    entry = facts.file(path)
    size = entry.size if entry else None
    budget = max_bytes if kind != "parquet" else max_row_group_bytes + 2 * 2**20
    meter = _Meter(budget, progress)
    meter.check()
    preview = DatasetPreview(facts, split, path, kind, [], [], [], 0, size)
    try:
        from huggingface_hub import HfFileSystem

        fs = HfFileSystem(endpoint=hub_endpoint(), skip_instance_cache=True)
        remote = f"datasets/{repo_id}@{facts.sha or revision or 'main'}/{path}"
        with _open_remote(fs, remote, meter) as f:
            if kind == "parquet":
                _read_parquet(f, rows, max_row_group_bytes, preview)
            else:
                stream: Any = f
                if compression == "gzip":
                    import gzip

                    stream = gzip.GzipFile(fileobj=f)
                _read_text_rows(stream, kind, rows, preview)
    except (PreviewCancelled, HubError):
        raise
    except _BudgetSpent:
        preview.note = (f"stopped after {_size(meter.bytes)}, the preview's byte budget: "
                        f"{len(preview.rows)} row{'s' if len(preview.rows) != 1 else ''} read")
    except Exception as exc:  # noqa: BLE001 - network, gated, not found: one sentence
        cause = _root_cause(exc)
        if isinstance(cause, _BudgetSpent):
            preview.note = f"stopped after {_size(meter.bytes)}, the preview's byte budget"
        elif isinstance(cause, (PreviewCancelled, HubError)):
            raise cause from None
        elif _is_parse_error(cause):
            raise HubError(f"{repo_id}/{path}: cannot be read as {kind}: {_first_line(cause)}", "unreadable") from None
        else:
            raise _hub_error(cause, repo_id) from None
    preview.bytes_read = meter.bytes
    if detect:
        _detect(preview)
    preview.elapsed = time.perf_counter() - started
    return preview


def _root_cause(exc: BaseException) -> BaseException:
    """The error that says what happened: HfFileSystem wraps a missing repository in FileNotFoundError, pyarrow
    wraps what a Python file object raised; the Hub's own error, a cancel or the byte budget inside wins."""
    from huggingface_hub import errors

    from core.model_hub import _is_connection_error

    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        if isinstance(current, (errors.HfHubHTTPError, _BudgetSpent, PreviewCancelled, HubError)) or (
                _is_connection_error(current)):
            return current
        seen.append(current)
        current = current.__cause__ or current.__context__
    return exc


def _hub_error(exc: BaseException, repo_id: str) -> HubError:
    error = describe_hub_error(exc, repo_id, "dataset")
    if error.kind == "gated":
        page = f"{hub_endpoint()}/datasets/{repo_id}"
        return HubError(f"{repo_id} is gated: its rows can be read once you accept its conditions on {page} with your "
                        "Hugging Face account and log in with `hf auth login` (or set HF_TOKEN)", "gated")
    return error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _is_parse_error(exc: BaseException) -> bool:
    import zlib

    if isinstance(exc, (csv.Error, UnicodeDecodeError, zlib.error, EOFError)):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ArrowInvalid", "BadGzipFile"})


def _size(n: int | None) -> str:
    from core.model_library import human_size

    return human_size(n)


def _read_parquet(f: Any, n: int, max_row_group_bytes: int, preview: DatasetPreview) -> None:
    """The footer, then the first row group only (refused when it is larger than ``max_row_group_bytes``; a few
    more when the first holds fewer rows than asked for and they fit in the same limit)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f, pre_buffer=False)
    meta = pf.metadata
    preview.total_rows, preview.row_groups = meta.num_rows, meta.num_row_groups
    preview.columns = list(pf.schema_arrow.names)
    if meta.num_row_groups == 0:
        preview.note = "the file holds no rows"
        return
    sizes = [sum(meta.row_group(g).column(i).total_compressed_size for i in range(meta.row_group(g).num_columns))
             for g in range(meta.num_row_groups)]
    if sizes[0] > max_row_group_bytes:
        preview.note = (f"the first row group alone is {_size(sizes[0])} ({meta.row_group(0).num_rows:,} rows), more "
                        f"than the preview reads ({_size(max_row_group_bytes)}): download the dataset to see its rows")
        return
    groups, spent, have = [], 0, 0
    for g, size in enumerate(sizes):  # small row groups: as many as the rows asked for need, within the limit
        if have >= n or spent + size > max_row_group_bytes:
            break
        groups.append(g)
        spent += size
        have += meta.row_group(g).num_rows
    table = pf.read_row_groups(groups).slice(0, n)
    preview.rows = table.to_pylist()
    preview.lines = [None] * len(preview.rows)


def _read_text_rows(stream: Any, kind: str, n: int, preview: DatasetPreview) -> None:
    if kind == "csv" or kind == "tsv":
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter="\t" if kind == "tsv" else ",")
        header = next(reader, None)
        if header is None:
            preview.note = "the file is empty"
            return
        preview.columns = header
        start = reader.line_num + 1
        for record in reader:
            if len(preview.rows) >= n:
                break
            preview.rows.append(dict(zip(header, record, strict=False)))
            preview.lines.append(start)
            start = reader.line_num + 1
        return
    if kind == "text":
        for lineno, raw in enumerate(_lines(stream), 1):
            if len(preview.rows) >= n:
                break
            preview.rows.append({"text": raw.rstrip("\r\n")})
            preview.lines.append(lineno)
        preview.columns = ["text"]
        return
    first = _first_byte(stream)
    if kind == "json" and first == "[":
        _read_json_array(stream, n, preview)
    elif first in ("{", ""):
        _read_json_lines(stream, n, preview, whole_object_possible=kind == "json")
    else:
        raise HubError(f"{preview.facts.repo_id}/{preview.file}: starts with {first!r}, neither a JSON array nor JSON "
                       "objects", "unreadable")
    preview.columns = _columns(preview.rows)


def _lines(stream: Any) -> Iterator[str]:
    """Lines from sequential reads of 16 kB (fsspec's readline asks for a whole block past every line end, which
    defeats the read-ahead and fetches several blocks for a few short lines)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        chunk = stream.read(16 * 1024)
        pending += decoder.decode(chunk, final=not chunk)
        *complete, pending = pending.split("\n")
        for line in complete:
            yield line + "\n"
        if not chunk:
            break
    if pending:
        yield pending


def _first_byte(stream: Any) -> str:
    """The first non-blank character (the stream is rewound to where it started)."""
    head = stream.peek(64) if hasattr(stream, "peek") else b""
    if not head:
        position = stream.tell()
        head = stream.read(4096)
        stream.seek(position)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    return text[:1]


def _read_json_lines(stream: Any, n: int, preview: DatasetPreview, whole_object_possible: bool = False) -> None:
    """JSON lines. A ``.json`` file whose first line is not a whole object is one object over many lines (``{"data":
    [...]}``), which only a full read can split into rows: said so instead of a problem per line."""
    for lineno, line in enumerate(_lines(stream), 1):
        if len(preview.rows) >= n:
            break
        text = line.strip().lstrip("\ufeff")
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            if whole_object_possible and not preview.rows:
                raise HubError(f"{preview.facts.repo_id}/{preview.file}: one JSON object over many lines, not JSON "
                               "lines or an array; its rows can be read once the dataset is downloaded",
                               "unsupported") from None
            preview.rows.append(None)
            preview.problems.append(f"line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
        else:
            if isinstance(value, dict):
                preview.rows.append(value)
            else:
                preview.rows.append(None)
                preview.problems.append(f"line {lineno}: a JSON {type(value).__name__}, not an object")
        preview.lines.append(lineno)


def _read_json_array(stream: Any, n: int, preview: DatasetPreview) -> None:
    """Items of a top-level JSON array, decoded one by one from the bytes read so far."""
    decoder = json.JSONDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer, pos, line = "", 0, 1
    opened = eof = False
    while len(preview.rows) < n:
        while pos < len(buffer) and (buffer[pos] in " \t\r\n,\ufeff" or (buffer[pos] == "[" and not opened)):
            opened = opened or buffer[pos] == "["
            line += buffer[pos] == "\n"
            pos += 1
        if pos < len(buffer) and buffer[pos] == "]":
            return
        end = None
        if pos < len(buffer):
            try:
                value, end = decoder.raw_decode(buffer, pos)
            except ValueError:
                end = None
        if end is None:  # the item goes on beyond the bytes read so far
            if eof:
                if pos < len(buffer):
                    preview.problems.append(f"line {line}: the JSON array ends in the middle of an item")
                return
            chunk = stream.read(BLOCK_SIZE)
            eof = not chunk
            buffer = buffer[pos:] + text_decoder.decode(chunk, final=eof)
            pos = 0
            continue
        preview.rows.append(value if isinstance(value, dict) else None)
        if not isinstance(value, dict):
            preview.problems.append(f"line {line}: a JSON {type(value).__name__}, not an object")
        preview.lines.append(line)
        line += buffer.count("\n", pos, end)
        pos = end


def _columns(rows: list[dict[str, Any] | None]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row or {}:
            seen.setdefault(str(key), None)
    return list(seen)


def _detect(preview: DatasetPreview) -> None:
    """The studio's own format detection and normalisation (core.data) over the rows read."""
    from core.data import DataError, RawDataset, normalize_dataset

    if not any(r is not None for r in preview.rows):
        return
    source = f"{preview.facts.repo_id}/{preview.file}"
    raw = RawDataset(source, [jsonable(r) if r is not None else None for r in preview.rows], list(preview.lines),
                     list(preview.columns))
    try:
        normalized = normalize_dataset(raw)
    except DataError as exc:
        preview.format_error = str(exc)
        return
    preview.format, preview.format_reason = normalized.format, normalized.reason
    preview.format_columns = dict(normalized.columns)
    preview.examples = list(normalized.examples)
    preview.problems += [f"row {p.row}: {(p.field + ': ') if p.field else ''}{p.message}"
                         for p in normalized.problems if p.severity == "error"][:10]


# ---------------------------------------------------------------------------------------------------- download


def download_dataset(repo_id: str, *, revision: str | None = None,
                     progress: Callable[[DownloadProgress], None] | None = None,
                     cancel: threading.Event | None = None, allow_patterns: list[str] | None = None) -> str:
    """Download a Hub dataset into the Hugging Face cache (:func:`core.model_hub.download` with
    ``repo_type="dataset"``: progress, cancel keeping what arrived, resume) and return the snapshot folder."""
    from core.model_hub import download

    return download(repo_id, revision=revision, repo_type="dataset", progress=progress, cancel=cancel,
                    allow_patterns=allow_patterns)


def dataset_path_for_run(repo_id: str, files: list[str], snapshot: str | None) -> str:
    """What to put into ``data.path`` for a split held in ``files``: the downloaded file itself when the split is
    one file the studio reads directly (exact bytes, offline, line numbers), else the Hub id (``datasets`` loads
    it, from the cache once downloaded)."""
    from pathlib import Path

    if snapshot and len(files) == 1 and PurePosixPath(files[0]).suffix.lower() in LOCAL_SUFFIXES:
        local = Path(snapshot) / files[0]
        if local.is_file():
            return str(local)
    return repo_id


__all__ = [
    "DEFAULT_ROWS",
    "DatasetFacts",
    "DatasetFile",
    "DatasetPreview",
    "DownloadCancelled",
    "HubError",
    "PreviewCancelled",
    "dataset_facts",
    "dataset_path_for_run",
    "download_dataset",
    "jsonable",
    "looks_like_hub_dataset_id",
    "preview_dataset",
    "splits_of",
]
