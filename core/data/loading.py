"""Reading datasets from disk or the Hub into plain Python rows, with line numbers.

JSON, JSONL and CSV are parsed with the standard library so every row keeps the line it came from. They are
read incrementally (a line, or one element of a JSON array, at a time): memory grows with the rows kept, never
with the size of a file being checked or rejected, and a binary or compressed file is refused after reading
its first 64 KiB. Parquet uses pyarrow; saved ``datasets`` folders and Hub ids use ``datasets``. Heavy libraries are
imported inside the functions that need them.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from core.data.problems import DataError, RowProblem

Progress = Callable[[int, int], None]
"""``progress(done, total)``; called at most every ~1000 rows. Raise from it to cancel: the
exception propagates out of the loading/normalising function unchanged."""

PROGRESS_EVERY = 1000

JSON_SUFFIXES = {".json", ".jsonl", ".ndjson", ".jsonlines"}
CSV_SUFFIXES = {".csv", ".tsv"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
ARROW_SUFFIXES = {".arrow"}
DATA_SUFFIXES = JSON_SUFFIXES | CSV_SUFFIXES | PARQUET_SUFFIXES | ARROW_SUFFIXES

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_SPLIT_KEYS = ("data", "rows", "examples", "instances")


@dataclass
class RawDataset:
    """Rows exactly as read, before format detection.

    ``rows[i]`` is ``None`` when row ``i`` could not be parsed; its problem is in ``problems``.
    ``lines[i]`` is the 1-based line where row ``i`` starts, or ``None`` where unknown.
    """

    source: str
    rows: list[dict | None]
    lines: list[int | None]
    columns: list[str]
    problems: list[RowProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def load_raw_dataset(path: str, *, split: str = "train", progress: Progress | None = None) -> RawDataset:
    """Read a dataset into plain rows.

    ``path`` may be a JSON / JSONL / CSV / TSV / Parquet / Arrow file, a folder written by
    ``datasets``' ``save_to_disk`` (a ``DatasetDict`` picks ``split``), a folder holding one data file
    (or ``<split>.<ext>``), or a Hub dataset id (``org/name``).

    Raises :class:`DataError` when the input as a whole cannot be used (missing file, empty file,
    binary data, non-UTF-8 text, malformed JSON array, a line longer than :data:`MAX_ROW_BYTES`, not a
    dataset folder, Hub id unavailable). A malformed
    JSONL line is not fatal: that row is ``None`` and a :class:`RowProblem` says why.

    ``progress(done, total)`` is called at most every ~1000 rows; raising from it cancels.
    """
    source = str(path)
    p = Path(os.path.expanduser(source))
    if p.is_dir():
        return _load_folder(source, p, split, progress)
    if p.is_file():
        before = _stamp(p)
        raw = _load_file(source, p, progress, split)
        _check_unchanged(source, p, before)
        return raw
    if _looks_like_hub_id(source):
        return _load_hub(source, split, progress)
    raise DataError("file not found", file=source)


# --------------------------------------------------------------------------------------------- files


def _stamp(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _check_unchanged(source: str, p: Path, before: tuple[int, int] | None) -> None:
    """Rows read from a file that something was writing at the same time may be a mix of old and new."""
    after = _stamp(p)
    if before is not None and after != before:
        raise DataError(
            "the file changed while loading (its size or modification time moved); it is probably still being "
            "written. Load it again once whatever writes it has finished",
            file=source,
        )


def _looks_like_hub_id(source: str) -> bool:
    if source.startswith((".", "/", "~", "\\")) or Path(source).suffix.lower() in DATA_SUFFIXES:
        return False
    if "/" in source and Path(source.split("/")[0]).is_dir():  # "data/train" next to a local data/ folder
        return False
    return bool(_HUB_ID.match(source))


def _load_file(source: str, p: Path, progress: Progress | None, split: str) -> RawDataset:
    suffix = p.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _load_parquet(source, p, progress)
    if suffix in ARROW_SUFFIXES:
        return _load_arrow_file(source, p, progress)
    if p.stat().st_size == 0:
        raise DataError("the file is empty", file=source)
    unsupported = DataError(
        f"unsupported file type '{p.suffix or p.name}': use .jsonl, .json, .csv, .tsv, .parquet or a dataset folder",
        file=source,
    )
    try:
        text = _TextFile(source, p)
    except DataError:
        if suffix in JSON_SUFFIXES | CSV_SUFFIXES:
            raise
        raise unsupported from None
    with text:
        if suffix in CSV_SUFFIXES:
            return _parse_csv(source, text, "\t" if suffix == ".tsv" else ",", progress)
        first, line = _first_char(text)
        if first == "[":
            return _parse_json_array(source, text, progress)
        if first == "{":
            if suffix == ".json":
                return _parse_json_object_or_lines(source, text, split, progress)
            return _parse_jsonl_or_object_stream(source, text, progress)
        if suffix in JSON_SUFFIXES:
            raise DataError(
                f"expected JSON (a line starting with '{{' or an array starting with '['), found {first!r}",
                file=source,
                line=line,
            )
        raise unsupported


# ------------------------------------------------------------------------------ reading text in pieces

CHUNK_BYTES = 1 << 20
"""Text files are read this many bytes at a time; no file is ever read whole to check or reject it."""

MAX_ROW_BYTES = 64 << 20
"""The longest line (JSONL, CSV) or array element accepted. One row that large is far beyond any max_length; a
longer one is almost always a file that is not line-based data (minified JSON lines, binary), and reading it
would take memory proportional to the file."""

_SNIFF_BYTES = 64 << 10

# The start of files that are not text, and what to say about them.
_SIGNATURES = (
    (b"PAR1", "a Parquet file; give it the .parquet extension"),
    (b"ARROW1", "an Arrow file; give it the .arrow extension"),
    (b"\x1f\x8b", "gzip-compressed; decompress it first (gunzip)"),
    (b"BZh", "bzip2-compressed; decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed; decompress it first (unxz)"),
    (b"(\xb5/\xfd", "zstd-compressed; decompress it first (unzstd)"),
    (b"PK\x03\x04", "a ZIP archive; extract the data file from it first"),
    (b"SQLite format 3\x00", "an SQLite database, not a data file"),
)


def _mb(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


class _TextFile:
    """A UTF-8 data file read incrementally, as lines or as decoded chunks.

    The first 64 KiB are checked before anything is parsed, so a binary or compressed file, or UTF-16 text, is
    rejected at once with a message saying what it is. Every later piece is checked for NUL bytes (never in
    text data) and decoded strictly, so an error names its line and column. Memory use is bounded by one
    chunk plus the longest line or array element (:data:`MAX_ROW_BYTES`), never by the file's size.
    """

    def __init__(self, source: str, path: Path) -> None:
        self.source = source
        self.path = path
        self.size = path.stat().st_size
        self._fh: io.BufferedReader | None = None
        with open(path, "rb") as fh:
            self.head = fh.read(_SNIFF_BYTES)
        self._sniff()
        self.bom = 3 if self.head.startswith(codecs.BOM_UTF8) else 0
        self.done = 0  # bytes handed out so far (for progress)

    def __enter__(self) -> _TextFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _sniff(self) -> None:
        head = self.head
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise DataError("the file is UTF-16 text; save it as UTF-8", file=self.source, line=1)
        for magic, what in _SIGNATURES:
            if head.startswith(magic):
                raise DataError(f"this is not a text data file: it is {what}", file=self.source)
        nul = head.find(b"\x00")
        if nul < 0:
            return
        even, odd = head[0::2], head[1::2]
        if (
            len(head) >= 4
            and (even.count(0) > 0.9 * len(even) or odd.count(0) > 0.9 * len(odd))
            and head.count(0) < 0.6 * len(head)
        ):
            raise DataError(
                "the file looks like UTF-16 text (every other byte is 0); save it as UTF-8",
                file=self.source,
                line=1,
            )
        self._binary(head, nul, 0, 0)

    def _binary(self, data: bytes, at: int, lines_before: int, offset: int) -> NoReturn:
        line = lines_before + data.count(b"\n", 0, at) + 1
        raise DataError(
            f"this is not a text file: it holds binary data (a NUL byte at byte {offset + at + 1:,}). "
            "Data files must be UTF-8 text (JSON lines, JSON, CSV) or Parquet/Arrow",
            file=self.source,
            line=line,
        )

    def _open(self) -> io.BufferedReader:
        self.close()
        self._fh = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        self._fh.seek(self.bom)
        self.done = self.bom
        return self._fh

    def _decode_error(
        self, exc: UnicodeDecodeError, data: bytes, at: int, line: int, column: int
    ) -> DataError:
        bad = exc.object[exc.start] if exc.start < len(exc.object) else data[at]
        return DataError(
            f"not valid UTF-8 text (byte 0x{bad:02x} at column {column}); save the file as UTF-8",
            file=self.source,
            line=line,
        )

    def raw_lines(self, sep: bytes = b"\n") -> Iterator[bytes]:
        """The file's lines as bytes, without ``sep``; the last one may be empty. Raises DataError on a NUL byte
        or a line longer than :data:`MAX_ROW_BYTES`."""
        fh = self._open()
        lines = 0
        offset = self.bom
        pieces: list[bytes] = []
        held = 0
        while True:
            chunk = fh.read(CHUNK_BYTES)
            if not chunk:
                break
            nul = chunk.find(b"\x00")
            if nul >= 0:
                self._binary(chunk, nul, lines, offset)
            offset += len(chunk)
            self.done = offset
            if sep not in chunk:
                pieces.append(chunk)
                held += len(chunk)
                if held > MAX_ROW_BYTES:
                    self._too_long(lines + 1)
                continue
            parts = chunk.split(sep)
            if pieces:
                parts[0] = b"".join((*pieces, parts[0]))
                pieces.clear()
            if len(parts[0]) > MAX_ROW_BYTES:
                self._too_long(lines + 1)
            last = parts.pop()
            lines += len(parts)
            yield from parts
            pieces.append(last)
            held = len(last)
        yield b"".join(pieces)

    def _too_long(self, line: int) -> NoReturn:
        raise DataError(
            f"line {line} is longer than {_mb(MAX_ROW_BYTES)}; one row cannot be that long (is this really a "
            "JSON lines / CSV file?)",
            file=self.source,
            line=line,
        )

    def lines(self, sep: bytes = b"\n") -> Iterator[str]:
        """Decoded lines without ``sep`` (line 1 first); a stray BOM in the middle is dropped."""
        for number, raw in enumerate(self.raw_lines(sep), start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc, raw, exc.start, number, exc.start + 1) from None
            yield text.replace("\ufeff", "") if "\ufeff" in text else text

    def chunks(self, size: int = CHUNK_BYTES) -> _Chunks:
        return _Chunks(self, self._open(), size)


class _Chunks:
    """Decoded text of a file, ``read(n)`` bytes at a time (NUL and UTF-8 checked, with line and column)."""

    def __init__(self, text: _TextFile, fh: io.BufferedReader, size: int) -> None:
        self.text, self.fh, self.size = text, fh, size
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.lines = 0  # newlines in the bytes decoded so far
        self.column = 0  # bytes since the last newline
        self.offset = text.bom

    def read(self, want: int = 0) -> str:
        """At least ``max(want, size)`` more bytes of the file, decoded; '' at the end."""
        data = self.fh.read(max(want, self.size))
        final = not data
        nul = data.find(b"\x00")
        if nul >= 0:
            self.text._binary(data, nul, self.lines, self.offset)
        try:
            out = self.decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            pending = len(exc.object) - len(data)
            at = max(0, exc.start - pending)
            newline = data.rfind(b"\n", 0, at)
            column = at - newline if newline >= 0 else self.column + at + 1
            raise self.text._decode_error(
                exc, data, at, self.lines + data.count(b"\n", 0, at) + 1, column
            ) from None
        newline = data.rfind(b"\n")
        self.lines += data.count(b"\n")
        self.column = len(data) - newline - 1 if newline >= 0 else self.column + len(data)
        self.offset += len(data)
        self.text.done = self.offset
        return out.replace("\ufeff", "") if "\ufeff" in out else out


_WS = re.compile(r"[ \t\n\r]*")


class _JsonScanner:
    """JSON values one after another from a :class:`_Chunks`, holding only the current value's text.

    ``value()`` decodes the next value, reading more text while the value is incomplete (up to
    :data:`MAX_ROW_BYTES`); ``where(i)`` turns a buffer index into the file's (line, column).
    """

    def __init__(self, chunks: _Chunks, whole: bool = False) -> None:
        self.chunks = chunks
        self.whole = whole  # one value is the whole file (a split-keyed or columnar .json): no per-row limit
        self.buf = ""
        self.pos = 0
        self.line = 1  # line of buf[0]
        self.col0 = 0  # characters before buf[0] on its line
        self._mark, self._mark_line = 0, 1  # lines are counted once, forward from the last value
        self.eof = False
        self.decoder = json.JSONDecoder()

    def _more(self, want: int = 0) -> bool:
        if self.eof:
            return False
        text = self.chunks.read(want)
        if not text:
            self.eof = True
            return False
        if self.pos > CHUNK_BYTES:  # forget what is parsed
            line = self.line_of(self.pos)
            newline = self.buf.rfind("\n", 0, self.pos)
            self.col0 = self.pos - newline - 1 if newline >= 0 else self.col0 + self.pos
            self.buf = self.buf[self.pos :]
            self.pos = 0
            self.line = self._mark_line = line
            self._mark = 0
        self.buf += text
        return True

    def line_of(self, index: int) -> int:
        """The file's line at buffer index ``index`` (cheap for indices that only move forward)."""
        if index < self._mark:
            self._mark, self._mark_line = 0, self.line
        self._mark_line += self.buf.count("\n", self._mark, index)
        self._mark = index
        return self._mark_line

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end), without consuming it."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def where(self, index: int) -> tuple[int, int]:
        newline = self.buf.rfind("\n", 0, index)
        column = index - newline if newline >= 0 else self.col0 + index + 1
        return self.line_of(index), column

    def value(self) -> tuple[Any, int]:
        """The next value and the line it starts on. Raises ``_JsonSyntax`` on malformed JSON."""
        self.peek()
        start = self.pos
        line = self.line_of(start)
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                incomplete = len(self.buf) - exc.pos <= 64 or exc.msg.startswith("Unterminated string")
                if incomplete and self._grow(start, line):
                    start = self.pos
                    continue
                raise _JsonSyntax(exc, self) from None
            if end >= len(self.buf) and not isinstance(value, (dict, list, str)) and self._grow(start, line):
                start = self.pos  # a number may go on in the next piece
                continue
            self.pos = end
            return value, line

    def _grow(self, start: int, line: int) -> bool:
        held = len(self.buf) - start
        if held > MAX_ROW_BYTES and not self.whole:
            raise DataError(
                f"the value starting at line {line} is longer than {_mb(MAX_ROW_BYTES)}; one row cannot be that long",
                file=self.chunks.text.source,
                line=line,
            )
        return self._more(held)  # double what is held: re-decoding stays linear overall


class _JsonSyntax(Exception):
    """Malformed JSON in a scanned file; ``message`` explains it, ``line``/``column`` say where."""

    def __init__(self, exc: json.JSONDecodeError, scanner: _JsonScanner) -> None:
        self.line, self.column = scanner.where(exc.pos)
        start = scanner.buf.rfind("\n", 0, exc.pos) + 1
        end = scanner.buf.find("\n", exc.pos)
        text = scanner.buf[start : end if end >= 0 else len(scanner.buf)]
        self.message = explain_json_error(exc.msg, text, exc.pos - start)[0]
        super().__init__(self.message)


def _first_char(text: _TextFile) -> tuple[str, int]:
    """The first non-whitespace character of the file and its line; DataError for a blank file."""
    chunks = text.chunks(_SNIFF_BYTES)
    scanner = _JsonScanner(chunks)
    while True:
        scanner.pos = len(scanner.buf) - len(scanner.buf[scanner.pos :].lstrip())
        if scanner.pos < len(scanner.buf):
            return scanner.buf[scanner.pos], scanner.where(scanner.pos)[0]
        if not scanner._more():
            raise DataError("the file is empty (only whitespace)", file=text.source)


def _columns_of(rows: Iterable[dict | None]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        if row:
            for key in row:
                if key not in seen:
                    seen[key] = None
    return list(seen)


def _describe_json(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__


def explain_json_error(msg: str, line: str, at: int) -> tuple[str, bool]:
    """A JSON syntax error in words a user can act on: ``(message, specific)``.

    ``msg`` is the decoder's message, ``line`` the text of the line and ``at`` the 0-based index of the error
    in it; the message names the (1-based) column. ``specific`` is False when nothing better than the
    decoder's own words was found.
    """
    column = at + 1
    char = line[at : at + 1]
    before = line[:at].rstrip()
    if char in ("}", "]") and before.endswith(","):
        return (
            f"trailing comma before '{char}' at column {len(before)} (JSON allows no comma after the last item)",
            True,
        )
    if msg.startswith("Invalid control character"):
        name = {"\t": "a tab", "\n": "a line break", "\r": "a carriage return"}.get(
            char, "a control character"
        )
        return (
            f"{name} inside a string at column {column}; JSON strings must write it escaped (\\t, \\n)",
            True,
        )
    if msg.startswith(("Invalid \\escape", "Invalid \\uXXXX escape")):
        shown = line[at : at + 2]
        return f"invalid escape '{shown}' inside a string at column {column}; write a backslash as \\\\", True
    if msg.startswith("Unterminated string"):
        return f"the string that starts at column {column} is never closed", False
    if msg == "Extra data":
        shown = line[at : at + 20]
        return (
            f"unexpected text after the end of the JSON value at column {column} ({shown!r}): one object per line; "
            "is there an extra '}' or ']'?",
            True,
        )
    if char == "'" and msg.startswith(("Expecting property name", "Expecting value")):
        return f"single quote at column {column}: JSON needs double quotes around keys and strings", True
    if msg.startswith(("Expecting value", "Expecting property name")):
        word = re.match(r"[A-Za-z_]\w*", line[at:])
        if word and word.group() in _PYTHON_WORDS:
            return (
                f"Python's {word.group()} at column {column}; JSON writes {_PYTHON_WORDS[word.group()]}",
                True,
            )
        if line.startswith(("//", "/*", "#"), at):
            return f"a comment at column {column}; JSON has no comments", True
        if word and msg.startswith("Expecting property name"):
            return (
                f"the key {word.group()!r} at column {column} has no double quotes; JSON keys are quoted",
                True,
            )
    return f"{msg} at column {column}", False


_PYTHON_WORDS = {"True": "true", "False": "false", "None": "null"}


def _parse_jsonl(source: str, text: _TextFile, progress: Progress | None) -> RawDataset:
    rows: list[dict | None] = []
    lines: list[int | None] = []
    problems: list[RowProblem] = []
    loads = json.loads
    unclosed: list[int] = []  # indices into problems: lines that stop before their object is closed
    for number, line in enumerate(text.lines(), start=1):
        if not line or line.isspace():
            continue
        row_index = len(rows)
        if progress is not None and row_index % PROGRESS_EVERY == 0:
            progress(text.done, text.size)
        lines.append(number)
        try:
            value = loads(line)
        except json.JSONDecodeError as exc:
            rows.append(None)
            explained, specific = explain_json_error(exc.msg, line, exc.pos)
            message = f"not valid JSON: {explained}"
            # the JSON stops before the object is closed
            stops_early = exc.pos >= len(line.rstrip()) - 1 or exc.msg.startswith("Unterminated string")
            if not specific and stops_early:
                unclosed.append(len(problems))
            elif not specific and (line.lstrip().startswith("[") or line.rstrip().endswith(("},", "]"))):
                message += " (is this a pretty-printed JSON array? save it as .json, or one object per line)"
            problems.append(RowProblem(row_index, "", message, source, number))
            continue
        if isinstance(value, dict):
            rows.append(value)
        else:
            rows.append(None)
            problems.append(
                RowProblem(
                    row_index,
                    "",
                    f"expected a JSON object {{...}} on this line, got {_describe_json(value)}",
                    source,
                    number,
                )
            )
    if progress is not None:
        progress(text.size, text.size)
    for i in unclosed:
        last = problems[i].row == len(rows) - 1
        hint = (
            " (the last line is incomplete: the file may have been cut off while it was written)"
            if last
            else " (the line ends before the object is closed)"
        )
        problems[i] = dataclasses.replace(problems[i], message=problems[i].message + hint)
    if not rows:
        raise DataError("the file has no rows", file=source)
    return RawDataset(source, rows, lines, _columns_of(rows), problems)


def _parse_jsonl_or_object_stream(source: str, text: _TextFile, progress: Progress | None) -> RawDataset:
    """A .jsonl file: JSON lines, or pretty-printed objects one after another (one object over several lines)."""
    first = next((line for line in text.lines() if line and not line.isspace()), "")
    if not first.rstrip().endswith("}"):
        try:
            json.loads(first)
        except json.JSONDecodeError:
            stream = _parse_object_stream(source, text)
            if stream is not None:
                return stream
    return _parse_jsonl(source, text, progress)


def _parse_object_stream(source: str, text: _TextFile) -> RawDataset | None:
    """Whitespace-separated JSON objects spanning several lines each; None when the text is not that."""
    scanner = _JsonScanner(text.chunks())
    rows: list[dict | None] = []
    lines: list[int | None] = []
    while scanner.peek():
        try:
            value, line = scanner.value()
        except _JsonSyntax:
            return None
        if not isinstance(value, dict):
            return None
        rows.append(value)
        lines.append(line)
    if not rows:
        return None
    return RawDataset(source, rows, lines, _columns_of(rows), [])


def _parse_json_array(source: str, text: _TextFile, progress: Progress | None) -> RawDataset:
    """Parse a top-level JSON array element by element, remembering each element's start line; only the
    current element's text is held in memory."""
    scanner = _JsonScanner(text.chunks())
    rows: list[dict | None] = []
    lines: list[int | None] = []
    problems: list[RowProblem] = []

    def fail(message: str, index: int) -> DataError:
        return DataError(f"malformed JSON array: {message}", file=source, line=scanner.where(index)[0])

    scanner.peek()
    scanner.pos += 1  # past '['
    char = scanner.peek()
    if char == "]":
        raise DataError("the JSON array is empty: no rows", file=source)
    while True:
        if not char:
            raise fail("the file ends before the closing ']'", len(scanner.buf))
        try:
            value, line = scanner.value()
        except _JsonSyntax as exc:
            raise DataError(f"malformed JSON array: {exc.message}", file=source, line=exc.line) from None
        row_index = len(rows)
        lines.append(line)
        if isinstance(value, dict):
            rows.append(value)
        else:
            rows.append(None)
            problems.append(
                RowProblem(
                    row_index,
                    "",
                    f"expected a JSON object {{...}}, got {_describe_json(value)}",
                    source,
                    line,
                )
            )
        if progress is not None and len(rows) % PROGRESS_EVERY == 0:
            progress(text.done, text.size)
        char = scanner.peek()
        if not char:
            raise fail("the file ends before the closing ']'", len(scanner.buf))
        if char == ",":
            comma = scanner.pos
            scanner.pos += 1
            char = scanner.peek()
            if char == "]":
                line, column = scanner.where(comma)
                raise DataError(
                    f"malformed JSON array: trailing comma at column {column}, before the closing ']' "
                    "(JSON allows no comma after the last item)",
                    file=source,
                    line=line,
                )
            continue
        if char == "]":
            scanner.pos += 1
            if scanner.peek():
                raise fail("unexpected text after the closing ']'", scanner.pos)
            break
        raise fail(f"expected ',' or ']' after a row, found {char!r}", scanner.pos)
    if progress is not None:
        progress(text.size, text.size)
    return RawDataset(source, rows, lines, _columns_of(rows), problems)


def _parse_json_object_or_lines(
    source: str, text: _TextFile, split: str, progress: Progress | None
) -> RawDataset:
    """A .json file starting with '{': one JSON object (columnar, split-keyed, or one row) or JSON lines.

    The object is the whole dataset, so it is held whole (like the rows it becomes); only its text is read in
    pieces."""
    scanner = _JsonScanner(text.chunks(), whole=True)
    try:
        value, first_line = scanner.value()
        more = scanner.peek()
    except _JsonSyntax as exc:
        raise DataError(f"malformed JSON: {exc.message}", file=source, line=exc.line) from None
    if more:  # several objects: it is really JSON lines
        del scanner
        return _parse_jsonl(source, text, progress)
    assert isinstance(value, dict)
    # {"train": [...], "test": [...]} or {"data": [...]}
    list_keys = [
        k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
    ]
    for key in (split, *_SPLIT_KEYS):
        if key in list_keys:
            rows = value[key]
            return RawDataset(source, rows, [None] * len(rows), _columns_of(rows), [])
    if value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        holds_dicts = any(isinstance(x, dict) for v in value.values() for x in v[:5])
        if len(lengths) == 1 and not holds_dicts:  # columnar: {"instruction": [...], "output": [...]}
            n = lengths.pop()
            keys = list(value)
            rows = [{k: value[k][i] for k in keys} for i in range(n)]
            if not rows:
                raise DataError("the file has no rows", file=source)
            return RawDataset(source, rows, [None] * n, keys, [])
    if list_keys and all(k in list_keys for k in value) and split not in value:
        raise DataError(
            f"split '{split}' not found; the file has {', '.join(repr(k) for k in value)}", file=source
        )
    # A single object: one row.
    return RawDataset(source, [value], [first_line], list(value), [])


def _parse_csv(source: str, text: _TextFile, delimiter: str, progress: Progress | None) -> RawDataset:
    if csv.field_size_limit() < MAX_ROW_BYTES:  # the default (128 KiB) refuses long documents
        csv.field_size_limit(MAX_ROW_BYTES)
    # Lines end in \n (or \r\n); a file with bare \r line ends (old Mac) is split on \r.
    sep = b"\r" if b"\r" in text.head and b"\n" not in text.head else b"\n"
    ending = sep.decode()

    def physical_lines() -> Iterator[str]:
        previous = None
        for line in text.lines(sep):
            if previous is not None:
                yield previous + ending
            previous = line
        if previous:
            yield previous

    reader = csv.reader(physical_lines(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("the file is empty", file=source) from None
    except csv.Error as exc:
        raise DataError(f"malformed CSV header: {exc}", file=source, line=1) from None
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError("the first line should name the columns, but it is empty", file=source, line=1)
    rows: list[dict | None] = []
    lines: list[int | None] = []
    problems: list[RowProblem] = []
    n_cols = len(header)
    end_line = reader.line_num
    while True:
        start_line = end_line + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", file=source, line=start_line) from None
        end_line = reader.line_num
        if not record:  # blank line
            continue
        row_index = len(rows)
        lines.append(start_line)
        if len(record) != n_cols:
            rows.append(None)
            problems.append(
                RowProblem(
                    row_index, "", f"has {len(record)} fields but the header has {n_cols}", source, start_line
                )
            )
        else:
            rows.append(dict(zip(header, record, strict=True)))
        if progress is not None and len(rows) % PROGRESS_EVERY == 0:
            progress(text.done, text.size)
    if progress is not None:
        progress(text.size, text.size)
    if not rows:
        raise DataError("the file has a header but no rows", file=source)
    return RawDataset(source, rows, lines, header, problems)


# ------------------------------------------------------------------------------- arrow-backed sources


def _rows_from_table(source: str, table: Any, progress: Progress | None) -> RawDataset:
    total = table.num_rows
    if total == 0:
        raise DataError("the dataset has no rows", file=source)
    rows: list[dict | None] = []
    for batch in table.to_batches(max_chunksize=PROGRESS_EVERY):
        rows.extend(batch.to_pylist())
        if progress is not None:
            progress(len(rows), total)
    return RawDataset(source, rows, [None] * total, list(table.column_names), [])


def _load_parquet(source: str, p: Path, progress: Progress | None) -> RawDataset:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError with its own wording
        raise DataError(f"not a readable Parquet file: {exc}", file=source) from None
    return _rows_from_table(source, table, progress)


def _load_arrow_file(source: str, p: Path, progress: Progress | None) -> RawDataset:
    import pyarrow as pa

    try:
        with pa.memory_map(str(p)) as stream:
            try:
                table = pa.ipc.open_stream(stream).read_all()
            except pa.ArrowInvalid:
                stream.seek(0)
                table = pa.ipc.open_file(stream).read_all()
    except Exception as exc:
        raise DataError(f"not a readable Arrow file: {exc}", file=source) from None
    return _rows_from_table(source, table, progress)


def _rows_from_hf(source: str, ds: Any, progress: Progress | None) -> RawDataset:
    total = len(ds)
    if total == 0:
        raise DataError("the dataset has no rows", file=source)
    arrow = ds.with_format("arrow")
    rows: list[dict | None] = []
    for start in range(0, total, PROGRESS_EVERY):
        rows.extend(arrow[start : start + PROGRESS_EVERY].to_pylist())
        if progress is not None:
            progress(len(rows), total)
    return RawDataset(source, rows, [None] * total, list(ds.column_names), [])


def _pick_split(source: str, ds: Any, split: str) -> Any:
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(ds, (DatasetDict, IterableDatasetDict)):
        names = list(ds.keys())
        if split in ds:
            return ds[split]
        if len(names) == 1:
            return ds[names[0]]
        raise DataError(f"split '{split}' not found; available splits: {', '.join(names)}", file=source)
    return ds


def _load_folder(source: str, p: Path, split: str, progress: Progress | None) -> RawDataset:
    saved = (p / "dataset_dict.json").is_file() or (p / "state.json").is_file()
    if saved:
        import datasets

        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as exc:
            raise DataError(f"could not read the saved dataset: {exc}", file=source) from None
        return _rows_from_hf(source, _pick_split(source, ds, split), progress)
    data_files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in DATA_SUFFIXES)
    by_split = [f for f in data_files if f.stem == split]
    chosen = by_split[0] if len(by_split) == 1 else data_files[0] if len(data_files) == 1 else None
    if chosen is not None:
        before = _stamp(chosen)
        raw = _load_file(str(chosen), chosen, progress, split)
        _check_unchanged(str(chosen), chosen, before)
        return raw
    found = ", ".join(f.name for f in sorted(p.iterdir())[:10]) or "nothing"
    raise DataError(
        "this folder is not a dataset: expected a folder written by datasets' save_to_disk "
        f"(with dataset_dict.json or state.json) or one holding a single data file; it contains {found}",
        file=source,
    )


def _load_hub(source: str, split: str, progress: Progress | None) -> RawDataset:
    from core.hub import prefer_offline_when_unreachable

    prefer_offline_when_unreachable()
    import datasets

    # The message names the id, so file is left unset (str() would repeat it).
    prefix = f"could not load '{source}' from the Hugging Face Hub"
    try:
        ds = datasets.load_dataset(source, split=split)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DataError(f"{prefix}: split '{split}' not found ({exc})") from None
        raise DataError(f"{prefix}: {exc}") from None
    except ConnectionError:
        raise DataError(f"{prefix}: you are offline and it is not in the cache") from None
    except FileNotFoundError as exc:  # DatasetNotFoundError subclasses FileNotFoundError
        if _offline():
            raise DataError(f"{prefix}: you are offline and it is not in the cache") from None
        raise DataError(
            f"{prefix}: no such dataset (check the id, or log in if it is private or gated) ({exc})",
        ) from None
    except Exception as exc:
        if _offline():
            raise DataError(f"{prefix}: you are offline and it is not in the cache") from None
        raise DataError(f"{prefix}: {type(exc).__name__}: {exc}") from None
    return _rows_from_hf(source, ds, progress)


def _offline() -> bool:
    try:
        import datasets.config

        return bool(datasets.config.HF_HUB_OFFLINE)
    except Exception:
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
