"""Reading datasets from disk or the Hub into plain Python rows, with line numbers.

JSON, JSONL and CSV are parsed with the standard library so every row keeps the line it came from;
Parquet uses pyarrow; saved ``datasets`` folders and Hub ids use ``datasets``. Heavy libraries are
imported inside the functions that need them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    non-UTF-8 text, malformed JSON array, not a dataset folder, Hub id unavailable). A malformed
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
    text = _read_text(source, p)
    if not text.strip():
        raise DataError("the file is empty (only whitespace)", file=source)
    if suffix in CSV_SUFFIXES:
        return _parse_csv(source, text, "\t" if suffix == ".tsv" else ",", progress)
    first = text.lstrip()[:1]
    if first == "[":
        return _parse_json_array(source, text, progress)
    if first == "{":
        if suffix == ".json":
            return _parse_json_object_or_lines(source, text, split, progress)
        raw = _parse_jsonl(source, text, progress)
        if raw.rows and raw.rows[0] is None and not text.lstrip().split("\n", 1)[0].rstrip().endswith("}"):
            # Pretty-printed objects (one object over several lines) in a .jsonl file: read them as a stream.
            stream = _parse_object_stream(source, text)
            if stream is not None:
                return stream
        return raw
    if suffix in JSON_SUFFIXES:
        line = text[: len(text) - len(text.lstrip())].count("\n") + 1
        raise DataError(
            f"expected JSON (a line starting with '{{' or an array starting with '['), found {first!r}",
            file=source,
            line=line,
        )
    raise DataError(
        f"unsupported file type '{p.suffix or p.name}': use .jsonl, .json, .csv, .tsv, .parquet or a dataset folder",
        file=source,
    )


def _read_text(source: str, p: Path) -> str:
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise DataError("the file is UTF-16 text; save it as UTF-8", file=source, line=1) from None
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"not valid UTF-8 text (byte 0x{data[exc.start]:02x} at column {exc.start - line_start + 1}); "
            "save the file as UTF-8",
            file=source,
            line=line,
        ) from None
    # A BOM in the middle (concatenated files) is not JSON whitespace.
    return text.replace("\ufeff", "") if "\ufeff" in text else text


def _tick(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None and done % PROGRESS_EVERY == 0:
        progress(done, total)


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


def _parse_jsonl(source: str, text: str, progress: Progress | None) -> RawDataset:
    lines_text = text.split("\n")
    total = len(lines_text)
    rows: list[dict | None] = []
    lines: list[int | None] = []
    problems: list[RowProblem] = []
    loads = json.loads
    for number, line in enumerate(lines_text, start=1):
        _tick(progress, number, total)
        if not line or line.isspace():
            continue
        row_index = len(rows)
        lines.append(number)
        try:
            value = loads(line)
        except json.JSONDecodeError as exc:
            rows.append(None)
            message = f"not valid JSON: {exc.msg} at column {exc.colno}"
            if exc.pos >= len(line.rstrip()) - 1:  # the JSON stops before the object is closed
                is_last = number + 3 >= total and not any(rest.strip() for rest in lines_text[number:])
                message += (
                    " (the last line is incomplete: the file may have been cut off while it was written)"
                    if is_last
                    else " (the line ends before the object is closed)"
                )
            elif line.lstrip().startswith("[") or line.rstrip().endswith(("},", "]")):
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
        progress(total, total)
    if not rows:
        raise DataError("the file has no rows", file=source)
    return RawDataset(source, rows, lines, _columns_of(rows), problems)


_WS = re.compile(r"[ \t\n\r]*")


def _parse_object_stream(source: str, text: str) -> RawDataset | None:
    """Whitespace-separated JSON objects spanning several lines each; None when the text is not that."""
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end()
    rows: list[dict | None] = []
    lines: list[int | None] = []
    line, last = 1, 0
    while pos < len(text):
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict):
            return None
        rows.append(value)
        line += text.count("\n", last, pos)
        last = pos
        lines.append(line)
        pos = _WS.match(text, end).end()
    if len(rows) < 1:
        return None
    return RawDataset(source, rows, lines, _columns_of(rows), [])


def _parse_json_array(source: str, text: str, progress: Progress | None) -> RawDataset:
    """Parse a top-level JSON array element by element, remembering each element's start line."""
    decoder = json.JSONDecoder()
    match_ws = _WS.match
    total = len(text)
    pos = match_ws(text, 0).end() + 1  # past '['
    line = text.count("\n", 0, pos) + 1
    last = pos
    rows: list[dict | None] = []
    lines: list[int | None] = []
    problems: list[RowProblem] = []

    def fail(message: str, at: int) -> DataError:
        return DataError(f"malformed JSON array: {message}", file=source, line=text.count("\n", 0, at) + 1)

    pos = match_ws(text, pos).end()
    if pos < total and text[pos] == "]":
        raise DataError("the JSON array is empty: no rows", file=source)
    while True:
        if pos >= total:
            raise fail("the file ends before the closing ']'", total)
        line += text.count("\n", last, pos)
        last = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON array: {exc.msg}", file=source, line=exc.lineno) from None
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
            progress(end, total)
        pos = match_ws(text, end).end()
        if pos >= total:
            raise fail("the file ends before the closing ']'", total)
        if text[pos] == ",":
            pos = match_ws(text, pos + 1).end()
            continue
        if text[pos] == "]":
            rest = match_ws(text, pos + 1).end()
            if rest < total:
                raise fail("unexpected text after the closing ']'", rest)
            break
        raise fail(f"expected ',' or ']' after a row, found {text[pos]!r}", pos)
    if progress is not None:
        progress(total, total)
    return RawDataset(source, rows, lines, _columns_of(rows), problems)


def _parse_json_object_or_lines(source: str, text: str, split: str, progress: Progress | None) -> RawDataset:
    """A .json file starting with '{': one JSON object (columnar, split-keyed, or one row) or JSON lines."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several objects: it is really JSON lines
            return _parse_jsonl(source, text, progress)
        raise DataError(
            f"malformed JSON: {exc.msg} at column {exc.colno}", file=source, line=exc.lineno
        ) from None
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
    return RawDataset(
        source, [value], [text[: len(text) - len(text.lstrip())].count("\n") + 1], list(value), []
    )


def _parse_csv(source: str, text: str, delimiter: str, progress: Progress | None) -> RawDataset:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
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
    total_lines = text.count("\n") + 1
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
            progress(end_line, total_lines)
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
