"""Format detection and normalisation to TRL's dataset formats.

Normalised examples are exactly what TRL's ``SFTTrainer`` accepts:

* text: ``{"text": str}``
* prompt/completion: ``{"prompt": str, "completion": str}`` or, conversational,
  ``{"prompt": [messages], "completion": [messages]}``
* conversation (messages, ShareGPT, Alpaca): ``{"messages": [messages], "tools": list[dict] | None}``

A message is ``{"role": "system"|"user"|"assistant"|"tool", "content": str}``; an assistant tool call
also has ``"tool_calls": [{"type": "function", "function": {"name": str, "arguments": dict}}]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.data.loading import PROGRESS_EVERY, RawDataset
from core.data.problems import ERROR, WARNING, DataError, RowProblem
from core.data.validation import RowReporter, check_conversation, describe_value

FORMATS = ("text", "prompt_completion", "messages", "sharegpt", "alpaca")

# Role names seen in the wild -> our four roles. "function_call" (ShareGPT) is an assistant tool call.
ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
    "function_response": "tool",
}
TOOL_CALL_ROLES = {"function_call", "tool_call", "tool_calls"}
ROLES = ("system", "user", "assistant", "tool")
# Names read without a note: our own, and ShareGPT's (messages written as {from, value}).
SHAREGPT_ROLES = {"system", "human", "gpt", "observation"}


class RoleNames:
    """How role names in the data become our four roles, and which unusual names were read (for a note).

    ``mapping`` is ``data.roles`` of the run file, axolotl style: our role -> the dataset's names for it
    (``{"assistant": ["bot", "gpt"]}``; a string may list names separated by commas). Mapped names take
    precedence over :data:`ROLE_ALIASES`.
    """

    def __init__(self, mapping: Mapping[str, str | Sequence[str]] | None = None) -> None:
        self.explicit: dict[str, str] = {}
        for role, names in (mapping or {}).items():
            if role not in ROLES:
                raise DataError(
                    f"data.roles.{role}: unknown role '{role}'; map names to one of {', '.join(ROLES)}"
                )
            for name in names.split(",") if isinstance(names, str) else names:
                key = str(name).strip().lower()
                if not key:
                    continue
                if self.explicit.get(key, role) != role:
                    raise DataError(
                        f"data.roles: the name '{key}' is given for both {self.explicit[key]} and {role}"
                    )
                self.explicit[key] = role
        self._row: set[tuple[str, str]] = set()
        self.rows: dict[tuple[str, str], int] = {}  # (name as written, our role) -> rows

    def lookup(self, name: str, raw: str, sharegpt: bool) -> str | None:
        """Our role for the (lower-cased) ``name``, or None when unknown; unusual names are remembered."""
        role = self.explicit.get(name)
        if role is not None:
            return role
        role = ROLE_ALIASES.get(name)
        if role is not None and name not in ROLES and not (sharegpt and name in SHAREGPT_ROLES):
            self._row.add((raw.strip(), role))
        return role

    def end_row(self) -> None:
        for key in self._row:
            self.rows[key] = self.rows.get(key, 0) + 1
        self._row.clear()

    def notes(self) -> list[str]:
        """One line per unusual role name read through an alias: what it became and in how many rows."""
        out = []
        for (name, role), n in self.rows.items():
            out.append(
                f"role '{name}' read as {role} in {n} row{'s' if n != 1 else ''}; to say so in the run file "
                f"(or map it differently) set data.roles, e.g. roles: {{{role}: [{name}]}}"
            )
        return out


CONVERSATION_COLUMNS = ("messages", "conversations", "conversation", "dialog", "dialogue", "chat", "turns")
TEXT_COLUMNS = ("text", "content", "document")
PROMPT_COMPLETION_PAIRS = (
    ("prompt", "completion"),
    ("prompt", "response"),
    ("question", "answer"),
    ("query", "response"),
    ("input", "output"),
    ("prompt", "answer"),
    ("question", "response"),
)
ALPACA_OUTPUT = ("output", "response", "answer")
ALPACA_INPUT = ("input", "context")
SYSTEM_COLUMNS = ("system", "system_prompt")
TOOLS_COLUMNS = ("tools", "functions")

REQUIRED = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
}
OUR_COLUMNS = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages", "system", "tools"),
    "sharegpt": ("conversations", "system", "tools"),
    "alpaca": ("instruction", "input", "output", "system", "history"),
}
SAMPLE_ROWS = 2000


@dataclass(frozen=True)
class FormatGuess:
    """The detected format, why, and which dataset column plays each role.

    ``columns`` maps our names (``text``; ``prompt``/``completion``; ``messages`` or
    ``conversations`` + optional ``system``/``tools``; ``instruction``/``input``/``output``/
    ``system``/``history``) to column names in the dataset.
    """

    format: str
    reason: str
    columns: dict[str, str]


@dataclass
class NormalizedDataset:
    """One entry per input row, in order: the TRL-format example, or None where the row has an error."""

    format: str
    examples: list[dict | None]
    rows: list[int]
    problems: list[RowProblem]
    columns: dict[str, str]
    source: str = ""
    reason: str = ""
    dataset_problems: list[str] = field(default_factory=list)
    """Problems with the dataset as a whole (a column mapping that makes most rows useless); each names the
    columns and the run-file key to check."""
    notes: list[str] = field(default_factory=list)
    """Things the user should know that are not problems (role names read through an alias)."""

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def errors(self) -> list[RowProblem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[RowProblem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def valid_rows(self) -> list[int]:
        """Rows that have an example (will be trained)."""
        return [i for i, ex in enumerate(self.examples) if ex is not None]

    def problems_for(self, row: int) -> list[RowProblem]:
        return [p for p in self.problems if p.row == row]


# ------------------------------------------------------------------------------------------ detection


def _maybe_json_list(value: Any) -> Any:
    """Lists stored as JSON text (CSV cells, string columns) are parsed; anything else is returned."""
    if isinstance(value, str):
        s = value.lstrip()
        if s.startswith("["):
            try:
                return json.loads(s)
            except json.JSONDecodeError:
                return value
    return value


def _conversation_style(values: Sequence[Any]) -> str | None:
    """'role' or 'from' when the values are lists of message dicts, else None."""
    votes = {"role": 0, "from": 0, None: 0}
    for value in values[:100]:
        value = _maybe_json_list(value)
        if not isinstance(value, list) or not value:
            if value is not None:
                votes[None] += 1
            continue
        first = value[0]
        if isinstance(first, dict) and "role" in first:
            votes["role"] += 1
        elif isinstance(first, dict) and "from" in first:
            votes["from"] += 1
        else:
            votes[None] += 1
    best = max(votes, key=lambda k: votes[k])
    return best if votes[best] else None


def _mostly_strings(values: Sequence[Any]) -> bool:
    checked = [v for v in values[:100] if v is not None]
    return bool(checked) and sum(isinstance(v, str) for v in checked) * 2 > len(checked)


def _kind_of_pair(values: Sequence[Any]) -> str:
    return "lists of messages" if _conversation_style(values) == "role" else "text"


def _first_present(names: Sequence[str], columns: set[str]) -> str | None:
    return next((n for n in names if n in columns), None)


def _optional(
    result: dict[str, str], ours: str, names: Sequence[str], columns: set[str], overrides: Mapping[str, str]
) -> None:
    if ours in overrides:
        result[ours] = overrides[ours]
    else:
        found = _first_present(names, columns)
        if found:
            result[ours] = found


def _resolve_columns(fmt: str, columns: set[str], overrides: Mapping[str, str]) -> dict[str, str] | None:
    """Column mapping for ``fmt`` by names alone (overrides first), or None if required ones are missing."""
    result: dict[str, str] = {}
    if fmt == "text":
        col = overrides.get("text") or _first_present(TEXT_COLUMNS, columns)
        return {"text": col} if col else None
    if fmt == "prompt_completion":
        prompt, completion = overrides.get("prompt"), overrides.get("completion")
        if not (prompt and completion):
            for p, c in PROMPT_COMPLETION_PAIRS:
                if p == "input" and "instruction" in columns:
                    continue  # instruction/input/output is Alpaca
                if (prompt or p) in columns and (completion or c) in columns:
                    prompt, completion = prompt or p, completion or c
                    break
        return {"prompt": prompt, "completion": completion} if prompt and completion else None
    if fmt in ("messages", "sharegpt"):
        key = "messages" if fmt == "messages" else "conversations"
        other = "conversations" if fmt == "messages" else "messages"
        col = overrides.get(key) or overrides.get(other) or _first_present(CONVERSATION_COLUMNS, columns)
        if not col:
            return None
        result[key] = col
        _optional(result, "system", SYSTEM_COLUMNS, columns, overrides)
        _optional(result, "tools", TOOLS_COLUMNS, columns, overrides)
        return result
    if fmt == "alpaca":
        instruction = overrides.get("instruction") or ("instruction" if "instruction" in columns else None)
        output = overrides.get("output") or _first_present(ALPACA_OUTPUT, columns)
        if not (instruction and output):
            return None
        result = {"instruction": instruction}
        _optional(result, "input", ALPACA_INPUT, columns, overrides)
        result["output"] = output
        _optional(result, "system", SYSTEM_COLUMNS, columns, overrides)
        _optional(result, "history", ("history",), columns, overrides)
        return result
    raise DataError(f"unknown format '{fmt}'; use one of: auto, {', '.join(FORMATS)}")


def _column_values(sample: Sequence[dict], column: str) -> list[Any]:
    return [row.get(column) for row in sample if row.get(column) is not None]


def _candidates(
    raw_columns: list[str], sample: Sequence[dict], overrides: Mapping[str, str]
) -> list[FormatGuess]:
    """Every format the columns and sampled values support, in priority order."""
    columns = set(raw_columns)
    found: list[FormatGuess] = []

    conv_keys = [overrides[k] for k in ("messages", "conversations") if k in overrides]
    for col in conv_keys or [c for c in CONVERSATION_COLUMNS if c in columns]:
        style = _conversation_style(_column_values(sample, col))
        if style is None and not conv_keys:
            continue
        fmt = (
            "sharegpt"
            if style == "from" or ("conversations" in overrides and style != "role")
            else "messages"
        )
        mapping = _resolve_columns(
            fmt, columns, {**overrides, ("messages" if fmt == "messages" else "conversations"): col}
        )
        if mapping:
            keys = "{from, value}" if style == "from" else "{role, content}"
            found.append(FormatGuess(fmt, f"column '{col}' holds lists of {keys}", mapping))
            break

    mapping = _resolve_columns("alpaca", columns, overrides)
    if mapping and (
        _mostly_strings(_column_values(sample, mapping["instruction"])) or "instruction" in overrides
    ):
        found.append(
            FormatGuess(
                "alpaca", f"columns '{mapping['instruction']}' and '{mapping['output']}' (Alpaca)", mapping
            )
        )

    mapping = _resolve_columns("prompt_completion", columns, overrides)
    if mapping:
        kind = _kind_of_pair(_column_values(sample, mapping["prompt"]))
        found.append(
            FormatGuess(
                "prompt_completion",
                f"columns '{mapping['prompt']}' and '{mapping['completion']}' hold {kind}",
                mapping,
            )
        )

    mapping = _resolve_columns("text", columns, overrides)
    if mapping and (_mostly_strings(_column_values(sample, mapping["text"])) or "text" in overrides):
        found.append(FormatGuess("text", f"column '{mapping['text']}' holds text", mapping))
    return found


def _fits(row: dict, guess: FormatGuess) -> bool:
    """The row has every required column of ``guess`` (null values count: they are reported later)."""
    return all(guess.columns[key] in row for key in REQUIRED[guess.format])


def _formats_implied_by(overrides: Mapping[str, str]) -> set[str]:
    implied = set()
    for fmt in OUR_COLUMNS:
        if any(key in overrides for key in REQUIRED[fmt]):
            implied.add(fmt)
    if "messages" in implied or "sharegpt" in implied:
        implied |= {"messages", "sharegpt"}
    if not implied and any(k in overrides for k in ("input", "history")):
        implied.add("alpaca")
    return implied


def _conversation_column_problem(raw: RawDataset) -> str:
    """' column 'messages' holds text where ...' when a conversation-named column holds something else."""
    for col in (c for c in CONVERSATION_COLUMNS if c in raw.columns):
        for index, row in enumerate(raw.rows[:SAMPLE_ROWS]):
            value = None if row is None else row.get(col)
            if value is None:
                continue
            parsed = _maybe_json_list(value)
            if (
                isinstance(parsed, list)
                and parsed
                and isinstance(parsed[0], dict)
                and ("role" in parsed[0] or "from" in parsed[0])
            ):
                continue
            if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
                what = f"lists of objects with the keys {', '.join(repr(k) for k in list(parsed[0])[:5])}"
            elif isinstance(parsed, list) and parsed:
                what = f"lists of {_plural_kind(parsed[0])}"
            elif isinstance(parsed, list):
                what = "empty lists"
            elif isinstance(value, str):
                what = (
                    "strings" if not value.lstrip().startswith("[") else "text that is not a valid JSON list"
                )
            else:
                what = _plural_kind(value)
            line = raw.lines[index] if index < len(raw.lines) else None
            where = f"row {index}" + (f", line {line}" if line else "")
            return (
                f": column '{col}' holds {what} where a list of {{role, content}} messages (or ShareGPT "
                f"{{from, value}}) is expected; {where} is {describe_value(value)}"
            )
    return ""


def _plural_kind(value: Any) -> str:
    if isinstance(value, str):
        return "strings"
    if isinstance(value, bool):
        return "true/false values"
    if isinstance(value, (int, float)):
        return "numbers"
    if isinstance(value, dict):
        return "objects"
    if isinstance(value, list):
        return "lists"
    return type(value).__name__


def _nothing_fits(raw: RawDataset, extra: str = "") -> DataError:
    cols = ", ".join(f"'{c}'" for c in raw.columns) or "none"
    if not extra:
        extra = _conversation_column_problem(raw)
        if extra:
            return DataError(
                f"could not tell the dataset format{extra}. Fix that column, or set data.format and map other "
                f"columns with data.columns (the columns are {cols})",
                file=raw.source,
            )
    hint = ""
    if {"chosen", "rejected"} <= set(raw.columns):
        hint = " It looks like preference data (chosen/rejected) for DPO, not supervised fine-tuning data."
    return DataError(
        f"could not tell the dataset format{extra}: the columns found are {cols}. Expected one of: "
        "'text' (plain text); 'prompt' + 'completion' (or question/answer, query/response); "
        "'messages' (lists of {role, content}); 'conversations' (ShareGPT lists of {from, value}); "
        "'instruction' + 'output' (Alpaca). Set data.format and map your columns to these names." + hint,
        file=raw.source,
    )


def _check_overrides(raw: RawDataset, overrides: Mapping[str, str]) -> None:
    known = {name for names in OUR_COLUMNS.values() for name in names}
    for ours, theirs in overrides.items():
        if ours not in known:
            raise DataError(
                f"unknown column role '{ours}'; use one of: {', '.join(sorted(known))}", file=raw.source
            )
        if theirs not in raw.columns:
            cols = ", ".join(f"'{c}'" for c in raw.columns)
            raise DataError(
                f"column '{theirs}' (given for '{ours}') not found; the columns are {cols}", file=raw.source
            )


ROLE_WORDS = {
    "text": "the text",
    "prompt": "the prompt",
    "completion": "the answer the model learns",
    "messages": "the conversation",
    "conversations": "the conversation",
    "instruction": "the prompt",
    "input": "part of the prompt",
    "output": "the answer the model learns",
    "system": "the system prompt",
    "history": "the earlier turns",
    "tools": "the tool schemas",
}


def _check_distinct_columns(raw: RawDataset, guess: FormatGuess, overrides: Mapping[str, str]) -> FormatGuess:
    """One column cannot play two roles (an answer read from the prompt's column teaches the model to echo)."""
    by_column: dict[str, list[str]] = {}
    for ours, theirs in guess.columns.items():
        by_column.setdefault(theirs, []).append(ours)
    for column, ours in by_column.items():
        if len(ours) < 2:
            continue
        mapped = [o for o in ours if o in overrides]
        if len(mapped) == 1:
            key = mapped[0]
            other = next(o for o in ours if o != key)
            message = (
                f"data.columns.{key}: column '{column}' is already read as {other} ({ROLE_WORDS[other]}); one "
                f"column cannot also be {key} ({ROLE_WORDS[key]}). Map {key} to the column that holds "
                f"{ROLE_WORDS[key]}"
            )
        else:
            keys = " and ".join(f"data.columns.{o}" for o in (mapped or ours))
            roles = " and ".join(f"{o} ({ROLE_WORDS[o]})" for o in ours)
            message = f"{keys} name the same column '{column}'; one column cannot be both {roles}"
        raise DataError(message, file=raw.source)
    return guess


def detect_format(raw: RawDataset, columns: Mapping[str, str] | None = None) -> FormatGuess:
    """Guess the format of ``raw`` from its column names and a sample of its values.

    ``columns`` optionally maps our names to dataset columns (``{"prompt": "q", "completion": "a"}``);
    mapped names take precedence and restrict the guess to formats that use them. When several
    formats fit, the one that most sampled rows fit wins (ties: messages, sharegpt, alpaca,
    prompt_completion, text). Raises :class:`DataError` listing the columns when nothing fits.
    """
    overrides = dict(columns or {})
    _check_overrides(raw, overrides)
    sample = [row for row in raw.rows[:SAMPLE_ROWS] if row is not None]
    if not sample:
        first = f" (first problem: {raw.problems[0]})" if raw.problems else ""
        raise DataError(f"no row could be read, so the format cannot be detected{first}", file=raw.source)
    candidates = _candidates(raw.columns, sample, overrides)
    implied = _formats_implied_by(overrides)
    if implied:
        candidates = [c for c in candidates if c.format in implied]
    if not candidates:
        raise _nothing_fits(raw)
    scores = [sum(_fits(row, c) for row in sample) for c in candidates]
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    return _check_distinct_columns(raw, candidates[best], overrides)


def _guess_for(fmt: str, raw: RawDataset, columns: Mapping[str, str] | None) -> FormatGuess:
    overrides = dict(columns or {})
    _check_overrides(raw, overrides)
    mapping = _resolve_columns(fmt, set(raw.columns), overrides)
    if mapping is None:
        needed = " and ".join(f"'{c}'" for c in REQUIRED[fmt])
        raise _nothing_fits(raw, f" as '{fmt}' (it needs {needed})")
    return _check_distinct_columns(raw, FormatGuess(fmt, f"format set to '{fmt}'", mapping), overrides)


# -------------------------------------------------------------------------------------- conversion


def _parse_tool_calls(report: RowReporter, value: Any, field: str) -> list[dict] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            report.error(field, f"the tool call is not valid JSON ({exc.msg} at column {exc.colno})")
            return None
    if isinstance(value, dict):
        value, single = [value], True
    else:
        single = False
    if not isinstance(value, list) or not value:
        report.error(
            field, f"expected a tool call {{name, arguments}} or a list of them, got {describe_value(value)}"
        )
        return None
    calls = []
    for k, call in enumerate(value):
        f = field if single else f"{field}[{k}]"
        if not isinstance(call, dict):
            report.error(f, f"expected a tool call {{name, arguments}}, got {describe_value(call)}")
            return None
        fn = call["function"] if isinstance(call.get("function"), dict) else call
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            report.error(f"{f}.name", "the tool call has no function name")
            return None
        args = fn.get("arguments", fn.get("parameters"))
        if args is None:
            args = {}
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                report.error(
                    f"{f}.arguments", f"the arguments are not valid JSON ({exc.msg} at column {exc.colno})"
                )
                return None
        if not isinstance(args, dict):
            report.error(
                f"{f}.arguments", f"the arguments should be a JSON object, got {describe_value(args)}"
            )
            return None
        calls.append({"type": "function", "function": {"name": name, "arguments": args}})
    return calls


def _parse_tools(report: RowReporter, value: Any, field: str) -> list[dict] | None:
    """A ``tools`` cell (list or JSON text) -> list of ``{"type": "function", "function": {...}}``."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            report.error(field, f"the tools are not valid JSON ({exc.msg} at column {exc.colno})")
            return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        report.error(field, f"expected a list of tool schemas, got {describe_value(value)}")
        return None
    tools = []
    for k, tool in enumerate(value):
        if (
            isinstance(tool, dict)
            and tool.get("type") == "function"
            and isinstance(tool.get("function"), dict)
        ):
            tools.append(tool)
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            tools.append({"type": "function", "function": tool})
        else:
            report.error(
                f"{field}[{k}]",
                f"expected a function schema {{name, description, parameters}}, got {describe_value(tool)}",
            )
            return None
    return tools or None


def _content_text(report: RowReporter, content: Any, field: str) -> str | None:
    """Message content: a string, or a list of typed parts whose text is joined."""
    if not isinstance(content, list):
        return report.text(content, field)
    pieces = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            text = report.text(part, f"{field}[{j}]")
        elif isinstance(part, dict):
            kind = part.get("type", "text")
            if kind != "text":
                report.error(
                    f"{field}[{j}].type",
                    f"content part type {kind!r} is not supported; only text parts can be trained",
                )
                return None
            key = "text" if "text" in part else "value" if "value" in part else None
            if key is None:
                report.error(f"{field}[{j}]", "the text part has no 'text' (or 'value')")
                return None
            text = report.text(part[key], f"{field}[{j}].{key}")
        else:
            report.error(
                f"{field}[{j}]", f"expected a content part {{type, text}}, got {describe_value(part)}"
            )
            return None
        if text is None:
            return None
        pieces.append(text)
    return "".join(pieces)


# Per-message loss flags, as the libraries that have them spell them: "weight" 0/1 (OpenAI's fine-tuning format,
# axolotl's ShareGPT rows), "loss_weight" 0/1 (LLaMA-Factory), "training" true/false (axolotl's
# message_field_training) and "train" true/false.
MESSAGE_FLAGS = ("train", "training", "weight", "loss_weight")
_BAD_FLAG = object()


def _message_train_flag(report: RowReporter, message: dict, field: str, role: str) -> Any:
    """``False`` when the data takes this assistant message out of the loss, ``True``/``None`` otherwise, or
    ``_BAD_FLAG`` after reporting an unusable value. Flags only take answers out (``train_on`` decides what is trained
    among the rest); on a non-assistant message, which is never trained, asking to train it is a warning."""
    verdicts: list[tuple[str, bool]] = []
    for key in MESSAGE_FLAGS:
        value = message.get(key)
        if value is None:
            continue
        if key in ("train", "training"):
            if not isinstance(value, bool):
                report.error(f"{field}.{key}", f"expected true or false, got {describe_value(value)}")
                return _BAD_FLAG
            verdicts.append((key, value))
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
                report.error(
                    f"{field}.{key}",
                    f"expected 0 (not trained) or 1 (trained), got {describe_value(value)}; fractional loss "
                    "weights are not supported",
                )
                return _BAD_FLAG
            verdicts.append((key, bool(value)))
    if not verdicts:
        return None
    if len({v for _, v in verdicts}) > 1:
        said = ", ".join(f"{k}: {message[k]}" for k, _ in verdicts)
        report.error(field, f"the message's loss flags disagree ({said})")
        return _BAD_FLAG
    key, train = verdicts[0]
    if train and role != "assistant":
        report.warn(
            f"{field}.{key}",
            f"only assistant messages are trained; this {role} message stays masked (train_on: all trains every "
            "token)",
        )
        return None
    return train if role == "assistant" else None


def _convert_message(
    report: RowReporter, message: Any, field: str, roles: RoleNames
) -> tuple[dict, str] | None:
    """One message in OpenAI (role/content) or ShareGPT (from/value) style -> (message, content field)."""
    if not isinstance(message, dict):
        report.error(field, f"expected a message {{role, content}}, got {describe_value(message)}")
        return None
    role_key = "role" if "role" in message else "from" if "from" in message else None
    if role_key is None:
        report.error(field, "the message has no 'role' (or 'from')")
        return None
    raw_role = message[role_key]
    if not isinstance(raw_role, str):
        report.error(f"{field}.{role_key}", f"expected a role name, got {describe_value(raw_role)}")
        return None
    name = raw_role.strip().lower()
    content_key = next((k for k in ("content", "value", "text") if k in message), "content")
    content_field = f"{field}.{content_key}"
    content = message.get(content_key)

    if name in TOOL_CALL_ROLES:  # ShareGPT: the value is the JSON call
        calls = _parse_tool_calls(report, content, content_field)
        if calls is None:
            return None
        train = _message_train_flag(report, message, field, "assistant")
        if train is _BAD_FLAG:
            return None
        call_message: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": calls}
        if train is False:
            call_message["train"] = False
        return call_message, content_field

    role = roles.lookup(name, raw_role, sharegpt=role_key == "from")
    if role is None:
        report.error(
            f"{field}.{role_key}",
            f"role {raw_role!r} is not one of {', '.join(ROLES)}; if it is one of them under another name, "
            f"map it in the run file with data.roles, e.g. roles: {{assistant: [{raw_role.strip()}]}}",
        )
        return None

    calls = None
    raw_calls = message.get("tool_calls")
    if raw_calls is None and isinstance(message.get("function_call"), dict):
        raw_calls = message["function_call"]
        calls_field = f"{field}.function_call"
    else:
        calls_field = f"{field}.tool_calls"
    if raw_calls is not None and raw_calls != []:
        if role != "assistant":
            report.error(calls_field, f"only assistant messages can make tool calls, not {role!r}")
            return None
        calls = _parse_tool_calls(report, raw_calls, calls_field)
        if calls is None:
            return None

    if content is None and calls:
        text = ""
    elif content_key not in message:
        report.error(field, "the message has no 'content'")
        return None
    else:
        text = _content_text(report, content, content_field)
        if text is None:
            return None

    train = _message_train_flag(report, message, field, role)
    if train is _BAD_FLAG:
        return None
    result: dict[str, Any] = {"role": role, "content": text}
    if train is False:
        result["train"] = False
    if calls:
        result["tool_calls"] = calls
    return result, content_field


def _convert_messages(
    report: RowReporter, value: Any, field: str, roles: RoleNames
) -> tuple[list[dict], list[tuple[str, str]]] | None:
    value = _maybe_json_list(value)
    if not isinstance(value, list):
        if value is None:
            report.error(field, "is null; expected a list of messages")
        else:
            report.error(field, f"expected a list of messages, got {describe_value(value)}")
        return None
    messages: list[dict] = []
    fields: list[tuple[str, str]] = []
    ok = True
    for i, item in enumerate(value):
        converted = _convert_message(report, item, f"{field}[{i}]", roles)
        if converted is None:
            ok = False  # keep going: report every bad message of the row
            continue
        messages.append(converted[0])
        fields.append((f"{field}[{i}]", converted[1]))
    return (messages, fields) if ok else None


def _same_text_key(text: str) -> str:
    """Text compared for "the answer is the prompt": whitespace and case do not matter."""
    return " ".join(text.split()).casefold()


def _has_answer(messages: Sequence[dict]) -> bool:
    return any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in messages)


class _Converter:
    """Turns one raw row into one normalised example for a given format and column mapping."""

    def __init__(self, guess: FormatGuess, roles: RoleNames) -> None:
        self.roles = roles
        self.empty_answer: list[int] = []  # rows whose trained side is empty, null or missing
        self.echo: list[int] = []  # rows whose answer is the same text as their prompt
        self.format = guess.format
        self.columns = guess.columns
        self.required = [guess.columns[k] for k in REQUIRED[guess.format]]
        self.convert: Callable[[RowReporter, dict], dict | None] = {
            "text": self._text,
            "prompt_completion": self._prompt_completion,
            "messages": self._conversation,
            "sharegpt": self._conversation,
            "alpaca": self._alpaca,
        }[guess.format]

    @property
    def answer_column(self) -> str:
        """Our name for the column that holds what is trained."""
        return {"text": "text", "prompt_completion": "completion", "alpaca": "output"}.get(
            self.format, "messages" if "messages" in self.columns else "conversations"
        )

    def __call__(self, report: RowReporter, row: dict) -> dict | None:
        missing = [c for c in self.required if c not in row]
        if missing:
            self._report_missing(report, row, missing)
            if self.columns[self.answer_column] in missing:
                self.empty_answer.append(report.row)
            return None
        return self.convert(report, row)

    def _empty(self, report: RowReporter, value: Any) -> None:
        """Remember a row whose trained side is null or blank (the row's error is reported by the caller)."""
        if value is None or (isinstance(value, str) and not value.strip()) or value == []:
            self.empty_answer.append(report.row)

    def _check_echo(
        self, report: RowReporter, answer: str, prompts: Sequence[tuple[str, str | None]], field: str
    ) -> None:
        """Note a row whose trained answer is the same text as a prompt field (``prompts``: (field, text)), for the
        dataset-level check, and warn on the row. An Alpaca ``input`` equal to the output is counted but not
        warned about: tasks such as "fix the grammar" legitimately return the input unchanged now and then."""
        said = _same_text_key(answer)
        if not said:
            return
        for name, text in prompts:
            if text is not None and _same_text_key(text) == said:
                self.echo.append(report.row)
                if not name.startswith("the input"):
                    report.warn(
                        field,
                        f"the answer is the same text as {name}; training on it teaches the model to repeat its "
                        "prompt (check data.columns)",
                    )
                return

    def _report_missing(self, report: RowReporter, row: dict, missing: list[str]) -> None:
        keys = ", ".join(f"'{k}'" for k in row) or "no keys"
        other = [c for c in _candidates(list(row), [row], {}) if c.format != self.format and _fits(row, c)]
        if other:
            report.error(
                missing[0],
                f"missing: this row does not fit the '{self.format}' format of the rest of the data: it has {keys} "
                f"({other[0].format}); mixed formats in one file are not supported",
            )
        else:
            for col in missing:
                report.error(col, f"missing (the row has {keys})")

    # -- formats

    def _text(self, report: RowReporter, row: dict) -> dict | None:
        col = self.columns["text"]
        text = report.text(row[col], col)
        self._empty(report, row[col])
        if text is None:
            return None
        if not text.strip():
            report.error(col, "the text is empty")
            return None
        return {"text": text}

    def _prompt_completion(self, report: RowReporter, row: dict) -> dict | None:
        pcol, ccol = self.columns["prompt"], self.columns["completion"]
        prompt, completion = row[pcol], row[ccol]
        if isinstance(prompt, list) or isinstance(completion, list):
            return self._prompt_completion_conversational(report, prompt, completion, pcol, ccol)
        p = report.text(prompt, pcol)
        c = report.text(completion, ccol)
        self._empty(report, completion)
        if p is None or c is None:
            return None
        if not c.strip():
            report.error(ccol, "the completion is empty; there is nothing to train")
            return None
        if not p.strip():
            report.warn(pcol, "the prompt is empty")
        self._check_echo(report, c, [(f"the prompt ('{pcol}')", p)], ccol)
        return {"prompt": p, "completion": c}

    def _prompt_completion_conversational(
        self, report: RowReporter, prompt: Any, completion: Any, pcol: str, ccol: str
    ) -> dict | None:
        parts: list[tuple[list[dict], list[tuple[str, str]]] | None] = []
        for value, col, role in ((prompt, pcol, "user"), (completion, ccol, "assistant")):
            if isinstance(value, list):
                parts.append(_convert_messages(report, value, col, self.roles))
            else:  # a plain string beside a list of messages: wrap it as one message
                text = report.text(value, col)
                parts.append(([{"role": role, "content": text}], [(col, col)]) if text is not None else None)
        if parts[0] is None or parts[1] is None:
            return None
        (p_msgs, p_fields), (c_msgs, c_fields) = parts
        if not p_msgs:
            report.error(pcol, "the prompt has no messages")
        if not c_msgs:
            report.error(ccol, "the completion has no messages")
        elif not any(m["role"] == "assistant" for m in c_msgs):
            report.error(ccol, "the completion has no assistant message; there is nothing to train")
        if p_msgs and c_msgs:
            check_conversation(report, p_msgs + c_msgs, p_fields + c_fields, pcol, require_assistant=False)
        if not _has_answer(c_msgs):
            self.empty_answer.append(report.row)
        if report.has_error:
            return None
        self._check_conversation_echo(report, p_msgs + c_msgs, ccol)
        return {"prompt": p_msgs, "completion": c_msgs}

    def _check_conversation_echo(self, report: RowReporter, messages: list[dict], field: str) -> None:
        previous = None
        for message in messages:
            if message["role"] == "assistant" and previous is not None and previous["role"] == "user":
                self._check_echo(
                    report, message["content"], [("the user message before it", previous["content"])], field
                )
                if self.echo and self.echo[-1] == report.row:
                    return
            previous = message

    def _tools(self, report: RowReporter, row: dict) -> tuple[bool, list[dict] | None]:
        col = self.columns.get("tools")
        if not col:
            return True, None
        before = report.has_error
        tools = _parse_tools(report, row.get(col), col)
        return (report.has_error == before), tools

    def _system(self, report: RowReporter, row: dict) -> tuple[bool, dict | None]:
        col = self.columns.get("system")
        if not col or row.get(col) is None:
            return True, None
        text = report.text(row[col], col)
        if text is None:
            return False, None
        return True, ({"role": "system", "content": text} if text.strip() else None)

    def _conversation(self, report: RowReporter, row: dict) -> dict | None:
        col = self.columns.get("messages") or self.columns["conversations"]
        converted = _convert_messages(report, row[col], col, self.roles)
        ok_system, system = self._system(report, row)
        ok_tools, tools = self._tools(report, row)
        if converted is None or not ok_system or not ok_tools:
            return None
        messages, fields = converted
        if system is not None:
            messages = [system, *messages]
            fields = [(self.columns["system"], self.columns["system"]), *fields]
        check_conversation(report, messages, fields, col)
        if not _has_answer(messages):
            self.empty_answer.append(report.row)
        if report.has_error:
            return None
        self._check_conversation_echo(report, messages, col)
        return {"messages": messages, "tools": tools}

    def _alpaca(self, report: RowReporter, row: dict) -> dict | None:
        cols = self.columns
        icol, ocol = cols["instruction"], cols["output"]
        instruction = report.text(row[icol], icol)
        output = report.text(row[ocol], ocol)
        extra = None
        if cols.get("input") and row.get(cols["input"]) is not None:
            extra = report.text(row[cols["input"]], cols["input"])
        self._empty(report, row[ocol])
        ok_system, system = self._system(report, row)
        history = self._history(report, row)
        if instruction is None or output is None or not ok_system or history is None or report.has_error:
            return None
        user = "\n\n".join(part for part in (instruction, extra) if part and part.strip())
        if not user.strip():
            report.error(icol, "the instruction is empty")
        if not output.strip():
            report.error(ocol, "the output is empty; there is nothing to train")
        if report.has_error:
            return None
        prompts = [
            (f"the instruction ('{icol}')", instruction),
            ("the instruction and input", user),
            (f"the input ('{cols.get('input')}')", extra),
        ]
        self._check_echo(report, output, prompts, ocol)
        messages = ([system] if system else []) + history
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": output})
        return {"messages": messages, "tools": None}

    def _history(self, report: RowReporter, row: dict) -> list[dict] | None:
        col = self.columns.get("history")
        value = _maybe_json_list(row.get(col)) if col else None
        if value is None:
            return []
        if not isinstance(value, list):
            report.error(col, f"expected a list of [user, assistant] pairs, got {describe_value(value)}")
            return None
        messages: list[dict] = []
        for i, pair in enumerate(value):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                report.error(f"{col}[{i}]", f"expected a [user, assistant] pair, got {describe_value(pair)}")
                return None
            user = report.text(pair[0], f"{col}[{i}][0]")
            assistant = report.text(pair[1], f"{col}[{i}][1]")
            if user is None or assistant is None:
                return None
            if not assistant.strip():
                report.error(f"{col}[{i}][1]", "the assistant answer is empty")
                return None
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": assistant})
        return messages


def normalize_dataset(
    raw: RawDataset,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    placeholders: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    roles: Mapping[str, str | Sequence[str]] | None = None,
) -> NormalizedDataset:
    """Detect (or take) the format, convert every row to TRL's format and validate it.

    Every input row yields one entry in ``examples``: the normalised example, or ``None`` when the
    row has an ``"error"`` problem (a row is never dropped silently). ``placeholders`` fills
    ``{{name}}`` in all text; any ``{{word}}`` left gives one warning per row. ``roles`` maps our
    roles to the data's role names (``data.roles``: ``{"assistant": ["bot"]}``); unusual names read
    through a built-in alias are listed in ``notes``. A column mapping that makes most rows useless
    (the answer equals the prompt, or the trained side is empty) is a ``dataset_problems`` entry.
    ``progress(done, total)`` is called every ~1000 rows; raising from it cancels. Raises
    :class:`DataError` when the format cannot be determined, ``columns`` names a missing column, or
    one column is given two roles.
    """
    role_names = RoleNames(roles)
    if format == "auto":
        guess = detect_format(raw, columns)
    elif format in FORMATS:
        guess = _guess_for(format, raw, columns)
    else:
        raise DataError(f"unknown format '{format}'; use one of: auto, {', '.join(FORMATS)}", file=raw.source)
    convert = _Converter(guess, role_names)
    problems: list[RowProblem] = list(raw.problems)
    examples: list[dict | None] = []
    total = len(raw.rows)
    file = raw.source
    lines = raw.lines
    for index, row in enumerate(raw.rows):
        if progress is not None and index % PROGRESS_EVERY == 0:
            progress(index, total)
        if row is None:
            examples.append(None)
            continue
        report = RowReporter(
            index, file, lines[index] if index < len(lines) else None, problems, placeholders
        )
        example = convert(report, row)
        role_names.end_row()
        report.finish()
        examples.append(None if report.has_error else example)
        if example is None and not report.has_error:  # defensive: never drop a row without saying why
            report.error("", "the row could not be converted")
    if progress is not None:
        progress(total, total)
    problems.sort(key=lambda p: p.row)
    return NormalizedDataset(
        format=guess.format,
        examples=examples,
        rows=list(range(total)),
        problems=problems,
        columns=dict(guess.columns),
        source=raw.source,
        reason=guess.reason,
        dataset_problems=_dataset_problems(convert, guess, sum(row is not None for row in raw.rows), columns),
        notes=role_names.notes(),
    )


def _dataset_problems(
    convert: _Converter, guess: FormatGuess, rows: int, overrides: Mapping[str, str] | None
) -> list[str]:
    """Problems of the mapping as a whole: most rows echo their prompt, or most have nothing to train."""
    out: list[str] = []
    if not rows:
        return out
    answer = convert.answer_column
    column = guess.columns[answer]
    key = f"data.columns.{answer}"
    how = "as set in the run file" if overrides and answer in overrides else "found automatically"
    echo = len(set(convert.echo))
    if echo * 2 > rows:
        prompt_columns = [
            f"{k} '{v}'" for k, v in guess.columns.items() if k in ("prompt", "instruction", "input")
        ]
        prompt = f" ({', '.join(prompt_columns)})" if prompt_columns else ""
        out.append(
            f"the answer is the same text as the prompt in {echo} of {rows} rows: the {answer} is read from "
            f"column '{column}' ({how}) and the prompt{prompt}; training would teach the model to repeat its "
            f"prompt. Check {key}"
        )
    empty = len(set(convert.empty_answer))
    if empty * 2 > rows:
        out.append(
            f"nothing to train in {empty} of {rows} rows: the {answer} (column '{column}', {how}) is empty, null "
            f"or missing there. Check {key}"
        )
    return out
