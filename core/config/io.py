"""Reading, writing and checking run files.

Every problem is collected before anything is raised, so a user fixes a run file in one pass:
:class:`ConfigError` carries a list of :class:`ConfigProblem`, each naming the dotted key, the file and
the line of the offending key, e.g. ``run.yaml:12: training.learning_rate must be > 0, got -1``.

Relative paths
--------------
A run file's relative paths mean "relative to the run file's folder", so that a run file and its data
can be moved together. Resolution is a separate, pure step, :func:`resolve_paths`, which returns a new
config; :func:`load_run_config` applies it by default (``resolve=True``) to the path settings the file
actually writes. Settings the file leaves out keep their defaults untouched (the default
``data.path``, ``resources/sample_chat.jsonl``, is relative to the project root, not to the run file).
To get the config exactly as written, for editing and saving it back, load with ``resolve=False``.
Which settings are paths, and how each is told apart from a Hub id or a built-in name, is declared in
the schema's ``path`` metadata (see ``core.config.schema``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.config.schema import (
    SCHEMA_VERSION,
    SECTIONS,
    FieldInfo,
    RunConfig,
    all_fields,
    get_value,
    set_value,
)


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a run config: the dotted key, a full sentence, and where it was found."""

    key: str
    """Dotted key (``"training.learning_rate"``); empty for problems with the whole file."""
    message: str
    """A full sentence that names the key, e.g. ``training.learning_rate must be > 0, got -1``."""
    file: str | None = None
    line: int | None = None
    """1-based line of the offending key in ``file``."""

    def __str__(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message


class ConfigError(Exception):
    """A run config that cannot be used; ``problems`` lists every reason, in file order where known."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------- field kinds and values

_FIELDS: dict[str, FieldInfo] = {info.key: info for info in all_fields()}
_TOP_LEVEL = {info.name: info for info in _FIELDS.values() if info.section is None}


_KINDS = {key: info.kind for key, info in _FIELDS.items()}
_EXPECTED = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "list": "a list of strings",
    "dict": "a mapping of names to strings",
    "str_or_list": "a string or a list of strings",
}


def _fmt(value: Any) -> str:
    """A value as the user would write it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(_TOKEN_VALUE.sub("hf_***", value))  # never echo a secret into logs or dialogs
    if isinstance(value, (dict, list)):
        return _TOKEN_VALUE.sub("hf_***", repr(value))
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # -1 in the file is -1.0 once converted; show it as written
    return repr(value)


def _fmt_bound(bound: float) -> str:
    if isinstance(bound, float) and bound.is_integer():
        return str(int(bound))
    return repr(bound)


def _type_error(info: FieldInfo, raw: Any) -> str:
    expected = _EXPECTED[_KINDS[info.key]]
    if info.nullable:
        expected += " or null"
    return f"{info.key} must be {expected}, got {_fmt(raw)}"


def _number(raw: Any, integer: bool) -> int | float | None:
    """``raw`` as a finite number, or None. Numeric strings count: YAML 1.1 reads ``2e-4`` as a string."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        text = raw.strip()
        try:
            raw = int(text)
        except ValueError:
            try:
                raw = float(text)
            except ValueError:
                return None
    if isinstance(raw, int):
        return raw if integer else float(raw)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return None
        if integer:
            return int(raw) if raw.is_integer() else None
        return raw
    return None


def _coerce(raw: Any, info: FieldInfo) -> tuple[Any, str | None]:
    """Convert a value read from YAML (or a ``--set`` override) to the field's type.

    Returns ``(value, None)`` or ``(None, message)``. Lenient where the intent is unambiguous: ints for
    floats, numeric strings for numbers, a single string for a list of strings, numbers as mapping values.
    """
    if raw is None:
        return (None, None) if info.nullable else (None, _type_error(info, raw))
    kind = _KINDS[info.key]
    if kind in ("int", "float"):
        value = _number(raw, integer=kind == "int")
        return (value, None) if value is not None else (None, _type_error(info, raw))
    if kind == "bool":
        return (raw, None) if isinstance(raw, bool) else (None, _type_error(info, raw))
    if kind == "str":
        return (raw, None) if isinstance(raw, str) else (None, _type_error(info, raw))
    if kind in ("list", "str_or_list"):
        if isinstance(raw, str):
            return (raw if kind == "str_or_list" else [raw]), None
        if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            return list(raw), None
        return None, _type_error(info, raw)
    # dict[str, str]; a field with ``names`` metadata also takes a list of names per key (kept comma-separated)
    names = bool(info.metadata.get("names"))
    if isinstance(raw, dict) and all(
        (isinstance(v, (str, int, float)) and not isinstance(v, bool))
        or (names and isinstance(v, list) and all(isinstance(x, str) for x in v))
        for v in raw.values()
    ):
        return {str(k): ", ".join(v) if isinstance(v, list) else str(v) for k, v in raw.items()}, None
    return None, _type_error(info, raw)


def _type_ok(value: Any, info: FieldInfo) -> bool:
    """Strict type check for an in-memory value (no conversion)."""
    if value is None:
        return info.nullable
    kind = _KINDS[info.key]
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "str_or_list":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _hint(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _check_value(value: Any, info: FieldInfo) -> list[tuple[str, str]]:
    """Problems with one field's value as ``(key, message)``: type, bounds, choices, contents."""
    key = info.key
    if not _type_ok(value, info):
        return [(key, _type_error(info, value))]
    if value is None:
        return []
    out: list[tuple[str, str]] = []
    if info.choices is not None and value not in info.choices:
        allowed = ", ".join(_fmt(c) if c is None else str(c) for c in info.choices)
        out.append((key, f"{key} must be one of {allowed}; got {_fmt(value)}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            out.append((key, f"{key} must be a finite number, got {_fmt(value)}"))
        elif info.min is not None and (value <= info.min if info.min_exclusive else value < info.min):
            op = ">" if info.min_exclusive else ">="
            out.append((key, f"{key} must be {op} {_fmt_bound(info.min)}, got {_fmt(value)}"))
        elif info.max is not None and (value >= info.max if info.max_exclusive else value > info.max):
            op = "<" if info.max_exclusive else "<="
            out.append((key, f"{key} must be {op} {_fmt_bound(info.max)}, got {_fmt(value)}"))
    if isinstance(value, str) and not value.strip():
        null = " (use null for none)" if info.nullable else ""
        out.append((key, f"{key} must not be empty{null}"))
    if isinstance(value, list):
        if _KINDS[key] == "str_or_list" and not value:
            out.append((key, f"{key} must name at least one module"))
        if any(not item.strip() for item in value):
            out.append((key, f"{key} must not contain empty strings"))
    if isinstance(value, dict):
        for name, column in value.items():
            entry = f"{key}.{name}"
            if info.keys is not None and name not in info.keys:
                allowed = ", ".join(info.keys)
                out.append((entry, f"unknown key '{entry}' (allowed: {allowed}){_hint(name, info.keys)}"))
            elif not name.strip():
                out.append((key, f"{key} must not have an empty name"))
            elif info.keys is not None and not column.strip(" ,"):
                what = "at least one role name" if info.metadata.get("names") else "a column"
                out.append((entry, f"{entry} must name {what}, got ''"))
    return out


# Secrets never belong in a run file: it is copied into every run folder, shared and committed.
_TOKEN_KEYS = {
    "token", "hf_token", "hub_token", "use_auth_token", "auth_token", "access_token", "api_key",
    "huggingface_token", "hf_api_token", "wandb_api_key",
}  # fmt: skip
_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
_TOKEN_HELP = (
    "access tokens are never stored in run files (they are copied into every run folder); set the HF_TOKEN "
    "environment variable or log in once with `hf auth login`"
)


def _token_key_message(key: str) -> str:
    return f"{key}: {_TOKEN_HELP}"


def _secret_values(cfg: RunConfig) -> list[tuple[str, str]]:
    """Settings whose value looks like a Hugging Face access token (the value itself is never repeated)."""
    out: list[tuple[str, str]] = []
    for key in _FIELDS:
        value = get_value(cfg, key)
        texts: list[str] = []
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, list):
            texts = [v for v in value if isinstance(v, str)]
        elif isinstance(value, dict):
            texts = [v for v in value.values() if isinstance(v, str)] + [k for k in value if isinstance(k, str)]
        if any(_TOKEN_VALUE.search(t) for t in texts):
            out.append((key, f"{key} holds what looks like a Hugging Face access token; {_TOKEN_HELP}"))
    return out


def _shared_columns(columns: Any) -> list[tuple[str, str]]:
    """data.columns giving one column two roles: the model would learn from the wrong text (an answer read from
    the prompt's column teaches it to echo the prompt)."""
    if not isinstance(columns, dict):
        return []
    out: list[tuple[str, str]] = []
    first: dict[str, str] = {}
    for role, column in columns.items():
        if not isinstance(column, str) or not column.strip():
            continue
        other = first.setdefault(column, role)
        if other != role and {other, role} != {"messages", "conversations"}:
            out.append(
                (
                    f"data.columns.{role}",
                    f"data.columns.{role} and data.columns.{other} both name the column '{column}'; one column "
                    "cannot play two roles (map each to its own column)",
                )
            )
    return out


def _shared_role_names(roles: Any) -> list[tuple[str, str]]:
    """data.roles giving one role name to two roles."""
    if not isinstance(roles, dict):
        return []
    out: list[tuple[str, str]] = []
    first: dict[str, str] = {}
    for role, names in roles.items():
        if not isinstance(names, str):
            continue
        for name in (n.strip().lower() for n in names.split(",")):
            other = first.setdefault(name, role) if name else role
            if other != role:
                out.append(
                    (
                        f"data.roles.{role}",
                        f"data.roles.{role} and data.roles.{other} both list the name '{name}'; a role name can "
                        "mean only one role",
                    )
                )
    return out


def _cross_checks(cfg: RunConfig) -> list[tuple[str, str]]:
    """Problems that involve several fields, as ``(key, message)``; the key is where the line points."""
    out: list[tuple[str, str]] = []
    t, d, m = cfg.training, cfg.data, cfg.model
    if t.max_steps == 0:
        out.append(
            ("training.max_steps", "training.max_steps must be -1 (use num_train_epochs) or > 0, got 0")
        )
    if _num(t.warmup_steps) and t.warmup_steps >= 1 and not float(t.warmup_steps).is_integer():
        out.append(
            (
                "training.warmup_steps",
                "training.warmup_steps must be a whole number of steps, or below 1 for a fraction of all "
                f"steps, got {_fmt(t.warmup_steps)}",
            )
        )
    out.extend(_shared_columns(d.columns))
    out.extend(_shared_role_names(d.roles))
    if d.eval_path is not None and _num(d.eval_fraction) and d.eval_fraction > 0:
        out.append(("data.eval_fraction", "set either data.eval_path or data.eval_fraction, not both"))
    if t.eval_steps is not None and d.eval_path is None and d.eval_fraction == 0:
        out.append(
            (
                "training.eval_steps",
                "training.eval_steps is set but there is no evaluation data; set data.eval_path or "
                "data.eval_fraction",
            )
        )
    if m.load_in_4bit is True:
        if cfg.lora.enabled is False:
            out.append(
                (
                    "model.load_in_4bit",
                    "model.load_in_4bit needs lora.enabled: 4-bit weights cannot be fine-tuned directly",
                )
            )
        if t.device in ("cpu", "mps"):
            out.append(
                ("model.load_in_4bit", f"model.load_in_4bit needs CUDA, but training.device is '{t.device}'")
            )
    if d.format == "text" and d.train_on in ("completion", "assistant"):
        out.append(
            (
                "data.train_on",
                f"data.train_on '{d.train_on}' needs prompt/completion or conversation rows, but data.format is "
                "'text' (plain text has no prompt or answer to pick); use train_on: all or auto",
            )
        )
    if t.precision == "fp16" and t.device == "cpu":
        out.append(("training.precision", "training.precision fp16 needs a GPU; use fp32 or bf16 on the CPU"))
    return out


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(cfg: RunConfig) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    sections_ok = True
    for name, cls in SECTIONS.items():
        if not isinstance(getattr(cfg, name, None), cls):
            out.append(
                (name, f"{name} must be a {cls.__name__}, got {type(getattr(cfg, name, None)).__name__}")
            )
            sections_ok = False
    for info in _FIELDS.values():
        if info.section and not isinstance(getattr(cfg, info.section, None), SECTIONS[info.section]):
            continue
        out.extend(_check_value(get_value(cfg, info.key), info))
    version = cfg.schema_version
    if _num(version) and version > SCHEMA_VERSION:
        out.append(("schema_version", _future_version_message(version)))
    if sections_ok:
        out.extend(_cross_checks(cfg))
        out.extend(_secret_values(cfg))
    return out


def _future_version_message(version: Any) -> str:
    return (
        f"schema_version {version} is newer than this SFT Studio understands (up to {SCHEMA_VERSION}); "
        "upgrade SFT Studio to use this run file"
    )


def validate_run_config(cfg: RunConfig) -> list[ConfigProblem]:
    """Every problem with an in-memory config: types (strict, no conversion), bounds, choices, and
    cross-field rules. An empty list means the config can be trained."""
    return [ConfigProblem(key, message) for key, message in _validate(cfg)]


# --------------------------------------------------------------------------- dict <-> config


# Names users bring from TRL/transformers scripts or other tools, and where that setting lives here.
_RENAMED = {
    "max_seq_length": "data.max_length",
    "dataset_text_field": "data.columns",
    "completion_only_loss": "data.train_on",
    "assistant_only_loss": "data.train_on",
    "model_name_or_path": "model.name_or_path",
    "use_cpu": "training.device",
    "bf16": "training.precision",
    "fp16": "training.precision",
    "warmup_ratio": "training.warmup_steps",
    "epochs": "training.num_train_epochs",
    "lr": "training.learning_rate",
    "batch_size": "training.per_device_train_batch_size",
}


def _unknown_key(key: str, name: str, siblings: Iterable[str]) -> str:
    """Message for an unknown key; suggests a near sibling, a renamed setting, or the same name elsewhere."""
    if name.rpartition(".")[2].strip().lower() in _TOKEN_KEYS:
        return _token_key_message(key)
    hint = _hint(name, siblings)
    last = name.rpartition(".")[2]
    if not hint and last in _RENAMED:
        hint = f"; did you mean '{_RENAMED[last]}'?"
    if not hint:
        elsewhere = [k for k, info in _FIELDS.items() if info.name == last and k != key]
        if elsewhere:
            hint = f"; did you mean '{elsewhere[0]}'?"
    return f"unknown key '{key}'{hint}"


def _build(
    data: Any, file: str | None, lines: Mapping[str, int], problems: list[tuple[str, str]] | None = None
) -> RunConfig:
    """A config from parsed YAML; raises ConfigError listing every problem (``problems`` are earlier ones)."""
    problems = list(problems or [])
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            [
                ConfigProblem(
                    "",
                    "a run file must be a mapping with the sections "
                    f"{', '.join(SECTIONS)}; got {type(data).__name__}",
                    file,
                    lines.get(""),
                )
            ]
        )
    if "schema_version" in data:
        version, message = _coerce(data["schema_version"], _FIELDS["schema_version"])
        if message is None and version > SCHEMA_VERSION:
            # Newer files may use keys we do not know; listing them would only bury the real problem.
            raise ConfigError(
                [
                    ConfigProblem(
                        "schema_version", _future_version_message(version), file, lines.get("schema_version")
                    )
                ]
            )

    cfg = RunConfig()
    top_names = [*_TOP_LEVEL, *SECTIONS]
    for raw_name, raw_section in data.items():
        name = str(raw_name)
        if name in SECTIONS:
            if raw_section is None:  # a section whose keys are all commented out
                continue
            if not isinstance(raw_section, Mapping):
                problems.append((name, f"{name} must be a mapping of settings, got {_fmt(raw_section)}"))
                continue
            section = getattr(cfg, name)
            names = [f.name for f in dataclasses.fields(section)]
            for raw_key, raw in raw_section.items():
                key = f"{name}.{raw_key}"
                info = _FIELDS.get(key)
                if info is None:
                    problems.append((key, _unknown_key(key, str(raw_key), names)))
                    continue
                value, message = _coerce(raw, info)
                if message:
                    problems.append((key, message))
                else:
                    setattr(section, info.name, value)
        elif name in _TOP_LEVEL:
            value, message = _coerce(data[raw_name], _TOP_LEVEL[name])
            if message:
                problems.append((name, message))
            else:
                setattr(cfg, name, value)
        else:
            problems.append((name, _unknown_key(name, name, top_names)))

    coerce_failed = {key for key, _ in problems}
    problems.extend((key, msg) for key, msg in _validate(cfg) if key not in coerce_failed)
    if problems:
        found = [ConfigProblem(key, msg, file, lines.get(key)) for key, msg in problems]
        found.sort(key=lambda p: p.line if p.line is not None else 1 << 30)
        raise ConfigError(found)
    return cfg


def config_from_dict(data: Mapping[str, Any], source: str | None = None) -> RunConfig:
    """A validated config from a plain mapping shaped like the run file.

    Values are converted as when loading YAML (ints for floats, numeric strings for numbers). ``source``
    names where the mapping came from in problem messages. Raises :class:`ConfigError` with every problem.
    """
    return _build(data, source, {})


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain data in schema order (``schema_version`` first), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in SECTIONS:
            out[f.name] = {sf.name: plain(getattr(value, sf.name)) for sf in dataclasses.fields(value)}
        else:
            out[f.name] = plain(value)
    return out


# --------------------------------------------------------------------------- YAML


def _key_lines(node: yaml.Node, prefix: str, lines: dict[str, int], problems: list[tuple[str, str]]) -> None:
    """Record the 1-based line of every mapping key by dotted path; flag keys set twice."""
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in lines:
            problems.append((key, f"{key} is set twice (lines {lines[key]} and {line})"))
        else:
            lines[key] = line
        _key_lines(value_node, key, lines, problems)


def _parse_yaml(text: str, file: str | None) -> tuple[Any, dict[str, int], list[tuple[str, str]]]:
    """The parsed YAML, the line of every key, and keys set twice; a syntax error raises ConfigError."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = f"{exc.problem} ({exc.context})" if exc.context else str(exc.problem)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigProblem("", f"invalid YAML: {what}", file, line)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("", f"invalid YAML: {exc}", file)]) from exc
    lines: dict[str, int] = {"": 1}
    duplicates: list[tuple[str, str]] = []
    if root is not None:
        lines[""] = root.start_mark.line + 1
        _key_lines(root, "", lines, duplicates)
    return data, lines, duplicates


def load_run_config(path: str | os.PathLike[str], *, resolve: bool = True) -> RunConfig:
    """Read and validate a YAML run file.

    Missing sections and keys take their defaults; a missing ``schema_version`` means 1. Every problem
    (YAML syntax, unknown keys with a did-you-mean hint, wrong types, bounds, choices, cross-field
    rules) is reported at once in one :class:`ConfigError`, each with the line of its key.

    With ``resolve=True`` the relative paths the file writes are made absolute against the file's folder
    (see :func:`resolve_paths`); ``resolve=False`` returns the config exactly as written.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigProblem("", f"cannot read the run file: {reason}", file)]) from exc
    data, lines, duplicates = _parse_yaml(text, file)
    cfg = _build(data, file, lines, duplicates)
    if resolve:
        written = [key for key in _FIELDS if key in lines]
        cfg = resolve_paths(cfg, Path(path).parent, keys=written)
    return cfg


class _Dumper(yaml.SafeDumper):
    """Readable block YAML: lists indented under their key, multi-line strings as literal blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_run_config(cfg: RunConfig) -> str:
    """The config as YAML text, keys in schema order. Floats are written so they read back as floats
    (PyYAML writes ``2e-05`` as ``2.0e-05``: YAML 1.1 reads an exponent without a dot as a string)."""
    return yaml.dump(
        config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100, indent=2
    )


def save_run_config(cfg: RunConfig, path: str | os.PathLike[str]) -> Path:
    """Write the config as YAML atomically and return the path.

    The text goes to a temporary file in the same folder, which then replaces ``path``, so a crash or
    an error never leaves a half-written run file. Missing parent folders are created. The config is
    saved as it is, without validation.
    """
    target = Path(path)
    text = dump_run_config(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


# --------------------------------------------------------------------------- paths

_LOCAL_SUFFIXES = {
    ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt",
    ".gz", ".bz2", ".xz", ".zst", ".gguf", ".jinja", ".j2",
}  # fmt: skip


def _looks_local(value: str) -> bool:
    return (
        value in (".", "..")
        or value.startswith(("./", "../", ".\\", "..\\", "~"))
        or Path(value).suffix.lower() in _LOCAL_SUFFIXES
    )


def _resolved(value: str, kind: str, base: Path) -> str:
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    candidate = base / expanded
    if kind == "dir":
        keep = True
    elif kind == "file_or_id":  # may be a Hub id such as "org/model"
        keep = candidate.exists() or _looks_local(value)
    else:  # "file_or_name": may be a built-in template name such as "chatml"
        keep = _looks_local(value) or "/" in value or "\\" in value
    return os.path.normpath(candidate) if keep else value


def resolve_paths(
    cfg: RunConfig, base_dir: str | os.PathLike[str], *, keys: Iterable[str] | None = None
) -> RunConfig:
    """A copy of ``cfg`` whose relative paths are made absolute against ``base_dir``.

    Only settings whose schema metadata declares a ``path`` kind are touched (``keys`` narrows them
    further): ``output_dir`` always; ``model.name_or_path``, ``data.path`` and ``data.eval_path`` when
    the path exists under ``base_dir`` or looks like a local file (``./``, ``~``, a data/GGUF suffix), so
    Hub ids and ``bundled:`` names pass through; ``model.chat_template`` when it looks like a file path
    rather than a built-in name. ``~`` is expanded. ``cfg`` itself is not changed.
    """
    base = Path(base_dir).absolute()
    wanted = set(keys) if keys is not None else None
    out = copy.deepcopy(cfg)
    for key, info in _FIELDS.items():
        if info.path is None or (wanted is not None and key not in wanted):
            continue
        value = get_value(out, key)
        if isinstance(value, str) and value.strip():
            set_value(out, key, _resolved(value, info.path, base))
    return out


# --------------------------------------------------------------------------- overrides


def _parse_override(text: str, info: FieldInfo) -> Any:
    """The raw value of ``key=text`` before type conversion: YAML for structured values, text for strings."""
    stripped = text.strip()
    kind = _KINDS[info.key]
    if info.nullable and stripped in ("null", "~", "None"):
        return None
    if kind == "str" or (kind in ("list", "str_or_list") and not stripped.startswith("[")):
        return stripped
    return yaml.safe_load(stripped) if stripped else None


def apply_overrides(cfg: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """A copy of ``cfg`` with ``key=value`` overrides applied (the CLI's ``--set``).

    Values are parsed with the field's type: ``training.learning_rate=1e-4``, ``training.eval_steps=null``,
    ``lora.target_modules=[q_proj, v_proj]``; one mapping entry can be set with a three-part key such as
    ``data.columns.prompt=question``. Each overridden value is checked (type, bounds, choices); cross-field
    rules are left to :func:`validate_run_config`. Raises :class:`ConfigError` listing every bad override,
    with a did-you-mean hint for unknown keys.
    """
    out = copy.deepcopy(cfg)
    problems: list[ConfigProblem] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            problems.append(
                ConfigProblem(
                    key, f"override '{item}' must look like key=value, e.g. training.learning_rate=1e-4"
                )
            )
            continue
        info = _FIELDS.get(key)
        entry: str | None = None
        if info is None:
            head, _, tail = key.rpartition(".")
            parent = _FIELDS.get(head)
            if parent is not None and _KINDS[head] == "dict" and tail:
                info, entry = parent, tail
            else:
                problems.append(ConfigProblem(key, _unknown_key(key, key, _FIELDS)))
                continue
        try:
            raw = (
                _parse_override(text, info)
                if entry is None
                else {
                    **get_value(out, info.key),
                    entry: text.strip(),
                }
            )
        except yaml.YAMLError:
            problems.append(
                ConfigProblem(key, f"{key}: cannot read {text.strip()!r} as {_EXPECTED[_KINDS[info.key]]}")
            )
            continue
        value, message = _coerce(raw, info)
        if message is not None:
            problems.append(ConfigProblem(key, message.replace(info.key, key, 1) if entry else message))
            continue
        found = _check_value(value, info)
        if found:
            problems.extend(ConfigProblem(k, m) for k, m in found)
            continue
        set_value(out, info.key, value)
    if problems:
        raise ConfigError(problems)
    return out
