"""Problem reporting shared by loading, detection and validation.

Two kinds of trouble: a :class:`DataError` means the whole input cannot be used (missing file, not a
dataset, malformed JSON array, ...); a :class:`RowProblem` concerns one row and never stops the rest
of the file from loading.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


def _location(file: str | None, line: int | None) -> str:
    if file and line is not None:
        return f"{file}:{line}"
    if file:
        return file
    if line is not None:
        return f"line {line}"
    return ""


@dataclass(frozen=True)
class RowProblem:
    """One problem with one row of a dataset.

    ``row`` is the 0-based position of the example in the input file; ``line`` the 1-based line
    where the row starts, where known. ``severity`` is ``"error"`` (the row will not be trained) or
    ``"warning"`` (trained, but suspicious).
    """

    row: int
    field: str
    message: str
    file: str | None = None
    line: int | None = None
    severity: str = ERROR

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def __str__(self) -> str:
        parts = []
        location = _location(self.file, self.line)
        if location:
            parts.append(location)
        parts.append(f"row {self.row}")
        if self.field:
            parts.append(self.field)
        message = self.message if self.severity == ERROR else f"{self.severity}: {self.message}"
        return ": ".join(parts) + ": " + message


class DataError(Exception):
    """The whole input cannot be read or interpreted.

    ``file`` and ``line`` name where, when known; ``str()`` includes them
    (``"data/train.json:12: expected ',' or ']' ..."``).
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        super().__init__(message)

    def __str__(self) -> str:
        location = _location(self.file, self.line)
        return f"{location}: {self.message}" if location else self.message


def summarize_problems(problems: Iterable[RowProblem], limit: int = 20) -> str:
    """Human-readable summary: a count line, then up to ``limit`` problems (errors first).

    Returns ``"no problems"`` for an empty list.
    """
    problems = list(problems)
    if not problems:
        return "no problems"
    counts = Counter(p.severity for p in problems)
    errors, warnings = counts.get(ERROR, 0), counts.get(WARNING, 0)
    rows_with_errors = len({p.row for p in problems if p.severity == ERROR})
    head = (
        f"{errors} error{'s' if errors != 1 else ''} in {rows_with_errors} row{'s' if rows_with_errors != 1 else ''}, "
        f"{warnings} warning{'s' if warnings != 1 else ''}"
    )
    ordered = sorted(problems, key=lambda p: (p.severity != ERROR, p.row))
    lines = [head, *(str(p) for p in ordered[:limit])]
    if len(ordered) > limit:
        lines.append(f"... and {len(ordered) - limit} more")
    return "\n".join(lines)
