"""Row-level checks: text fields, placeholders, and the shape of a conversation.

Everything here reports through a :class:`RowReporter`, which stamps each problem with the row,
file and line, so the message a user sees always names where to look.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from core.data.problems import ERROR, WARNING, RowProblem

ROLES = ("system", "user", "assistant", "tool")

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


def describe_value(value: Any) -> str:
    """A short description of a JSON-ish value for messages: ``a number (42)``, ``a list``, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"true/false ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        shown = value if len(value) <= 30 else value[:27] + "..."
        return f"text ({shown!r})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class RowReporter:
    """Collects problems for one row and applies placeholder substitution to its text."""

    __slots__ = (
        "row",
        "file",
        "line",
        "problems",
        "placeholders",
        "has_error",
        "_unfilled",
        "_unfilled_field",
    )

    def __init__(
        self,
        row: int,
        file: str | None,
        line: int | None,
        problems: list[RowProblem],
        placeholders: Mapping[str, str] | None = None,
    ) -> None:
        self.row = row
        self.file = file
        self.line = line
        self.problems = problems
        self.placeholders = placeholders
        self.has_error = False
        self._unfilled: dict[str, None] = {}
        self._unfilled_field = ""

    def error(self, field: str, message: str) -> None:
        self.has_error = True
        self.problems.append(RowProblem(self.row, field, message, self.file, self.line, ERROR))

    def warn(self, field: str, message: str) -> None:
        self.problems.append(RowProblem(self.row, field, message, self.file, self.line, WARNING))

    def text(self, value: Any, field: str) -> str | None:
        """Return ``value`` as text (placeholders filled) or report why it is not text and return None."""
        if isinstance(value, str):
            if "{{" in value:
                value = self._fill(value, field)
            return value
        if value is None:
            self.error(field, "is null; expected text")
        else:
            self.error(field, f"expected text, got {describe_value(value)}")
        return None

    def _fill(self, value: str, field: str) -> str:
        placeholders = self.placeholders
        if placeholders:
            value = PLACEHOLDER.sub(lambda m: str(placeholders.get(m.group(1), m.group(0))), value)
        for name in PLACEHOLDER.findall(value):
            if not self._unfilled:
                self._unfilled_field = field
            self._unfilled[name] = None
        return value

    def finish(self) -> None:
        """Emit the once-per-row warning about unfilled ``{{placeholders}}``."""
        if not self._unfilled:
            return
        names = list(self._unfilled)
        shown = ", ".join("{{" + n + "}}" for n in names)
        settings = ", ".join(f"data.placeholders.{n}" for n in names)
        plural = "s" if len(names) > 1 else ""
        self.warn(self._unfilled_field, f"unfilled placeholder{plural} {shown}; set {settings}")


def check_conversation(
    report: RowReporter,
    messages: Sequence[dict],
    fields: Sequence[tuple[str, str]],
    list_field: str,
    *,
    require_assistant: bool = True,
) -> None:
    """Check the order and content of normalised messages.

    ``fields[i]`` is ``(message field, content field)`` naming where message ``i`` came from in the
    source row, e.g. ``("messages[2]", "messages[2].content")``. Errors: an empty conversation, an
    assistant message first (after any system messages), an empty assistant message without tool
    calls, no assistant message at all (when ``require_assistant``). Warnings: system message not
    first or more than one, two user or two assistant messages in a row, a tool result with no tool
    call before it, an empty user message.
    """
    if not messages:
        report.error(list_field, "the conversation has no messages")
        return
    seen_system = False
    first_turn_checked = False
    prev: dict | None = None
    has_assistant = False
    for i, message in enumerate(messages):
        role = message["role"]
        msg_field, content_field = fields[i]
        has_calls = bool(message.get("tool_calls"))
        if role == "system":
            if seen_system:
                report.warn(msg_field, "more than one system message; most chat templates use only the first")
            elif i != 0:
                report.warn(msg_field, "the system message is not the first message")
            seen_system = True
            continue
        if not first_turn_checked:
            first_turn_checked = True
            if role == "assistant":
                report.error(
                    msg_field,
                    "the conversation starts with an assistant message; the first message "
                    "(after any system message) should be from the user",
                )
        if role == "assistant":
            has_assistant = True
            if not has_calls and not message["content"].strip():
                report.error(content_field, "the assistant message is empty; there is nothing to train")
        elif role == "user" and not message["content"].strip():
            report.warn(content_field, "the user message is empty")
        elif role == "tool" and not (prev is not None and (prev["role"] == "tool" or prev.get("tool_calls"))):
            report.warn(msg_field, "a tool result with no assistant tool call before it")
        if (
            prev is not None
            and role == prev["role"]
            and role in ("user", "assistant")
            and not has_calls
            and not prev.get("tool_calls")
        ):
            report.warn(msg_field, f"two {role} messages in a row")
        prev = message
    if require_assistant and not has_assistant:
        report.error(list_field, "the conversation has no assistant message; there is nothing to train")
