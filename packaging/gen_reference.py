"""Generate the run-file reference in README.md from the schema (``core.config.all_fields()`` metadata).

    .venv/bin/python packaging/gen_reference.py          # rewrite the section between the markers
    .venv/bin/python packaging/gen_reference.py --check  # exit 1 if README.md is out of date

The section lies between ``<!-- reference:start -->`` and ``<!-- reference:end -->``; everything between
them is generated, so edit help texts in ``core/config/schema.py`` instead. tests/test_packaging.py fails
when the README is stale.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
README = ROOT / "README.md"
START, END = "<!-- reference:start -->", "<!-- reference:end -->"
SECTION_TITLES = {
    None: "Top level",
    "model": "`model:` which model to fine-tune",
    "data": "`data:` what to train on",
    "lora": "`lora:` the adapter",
    "training": "`training:` the optimisation",
}
PATH_NOTES = {
    "dir": "A relative path is relative to the run file's folder.",
    "file_or_id": "A relative path is relative to the run file's folder.",
    "file_or_name": "A relative file path is relative to the run file's folder.",
}


def _type_name(tp: typing.Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping {_type_name(args[0])} → {_type_name(args[1])}" if args else "mapping"
    return {int: "int", float: "float", str: "string", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))


def _yaml_value(value: typing.Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)) and not value:
        return "[]" if isinstance(value, list) else "{}"
    return str(value)


def _number(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _allowed(info: typing.Any) -> str:
    parts = []
    if info.choices:
        parts.append(" | ".join(f"`{_yaml_value(c)}`" for c in info.choices))
    if info.min is not None and info.max is not None:
        lo = "<" if info.min_exclusive else "≤"
        hi = "<" if info.max_exclusive else "≤"
        parts.append(f"{_number(info.min)} {lo} x {hi} {_number(info.max)}")
    elif info.min is not None:
        parts.append(f"{'>' if info.min_exclusive else '≥'} {_number(info.min)}")
    elif info.max is not None:
        parts.append(f"{'<' if info.max_exclusive else '≤'} {_number(info.max)}")
    if info.keys:
        parts.append("keys: " + ", ".join(f"`{k}`" for k in info.keys))
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_reference() -> str:
    """The Markdown of the reference section (without the markers)."""
    from core.config import all_fields

    lines = [
        "",
        "_Generated from the schema in `core/config/schema.py` by `packaging/gen_reference.py`; do not edit by hand._",
        "Keys are dotted paths into the YAML (`training.learning_rate` is `learning_rate:` under `training:`), and",
        "the same paths work with `--set key=value`. _Advanced_ settings are folded away in the app's form.",
    ]
    section: object = object()
    for info in all_fields():
        if info.section != section:
            section = info.section
            lines += ["", f"#### {SECTION_TITLES.get(section, f'`{section}:`')}", "",
                      "| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
        typ = _type_name(info.type) + (" or null" if info.nullable else "")
        notes = [info.help]
        if info.path in PATH_NOTES:
            notes.append(PATH_NOTES[info.path])
        if info.advanced:
            notes.append("_Advanced._")
        if info.hidden:
            notes.append("_Written by the studio._")
        default = f"`{_yaml_value(info.default)}`"
        lines.append(f"| `{info.key}` | {typ} | {_cell(default)} | {_cell(_allowed(info))} | {_cell(' '.join(notes))} |")
    lines.append("")
    return "\n".join(lines)


def update(text: str) -> str:
    """``text`` (the README) with its reference section regenerated."""
    try:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"README.md has no {START} ... {END} section") from None
    return f"{head}{START}\n{render_reference()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when README.md is out of date")
    parser.add_argument("--readme", default=str(README))
    args = parser.parse_args()
    path = Path(args.readme)
    text = path.read_text(encoding="utf-8")
    new = update(text)
    if args.check:
        if new != text:
            print(f"{path}: the run-file reference is out of date; run: python packaging/gen_reference.py",
                  file=sys.stderr)
            return 1
        print(f"{path}: the run-file reference is up to date")
        return 0
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"updated the run-file reference in {path}")
    else:
        print(f"{path}: already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
