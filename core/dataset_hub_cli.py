"""The ``dataset-info`` subcommand of ``sft-studio``: a Hub dataset's size, files, detected format and first rows,
read from a prefix of one data file, before (or instead of) downloading it.

    sft-studio dataset-info ID [--revision R] [--split S] [--config NAME] [--rows N] [--json]

Exit 0 with the facts and rows; 2 with one ``error:`` line when the Hub cannot be reached, the dataset is gated,
private, missing, or has no file the preview reads. ``core.cli`` adds it with :func:`add_dataset_parsers`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any

EXIT_OK, EXIT_USAGE = 0, 2


def add_dataset_parsers(subparsers: Any) -> None:
    """Add ``dataset-info`` to an ``argparse`` subparsers object."""
    di = subparsers.add_parser(
        "dataset-info", help="a Hub dataset's size, files, detected format and first rows, without downloading it",
        description="Show a Hugging Face Hub dataset before downloading it: its size, data files per split, licence, "
        "the card's first lines, and the first rows of a split read from the beginning of its first data file "
        "(HTTP Range requests: JSON lines, JSON arrays, CSV and text are read line by line, Parquet reads its footer "
        "and first row group), with the format the studio detects in them. Gated and private datasets use the token "
        "of `hf auth login` or HF_TOKEN. Download the whole dataset with `sft-studio download ID --dataset`.")
    di.add_argument("repo_id", metavar="ID", help="a Hub dataset id such as HuggingFaceH4/no_robots")
    di.add_argument("--revision", default=None, metavar="R", help="branch, tag or commit (default: main)")
    di.add_argument("--split", default="train", metavar="S", help="the split to preview (default: train)")
    di.add_argument("--config", default=None, metavar="NAME", dest="dataset_config",
                    help="the configuration named in the dataset card (default: its default one)")
    di.add_argument("--rows", type=int, default=20, metavar="N", help="how many rows to show (default 20, at most 1000)")
    di.add_argument("--json", action="store_true", help="print one JSON object: the facts, the rows and the format")
    di.set_defaults(handler=cmd_dataset_info)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def cmd_dataset_info(args: argparse.Namespace) -> int:
    from core.dataset_hub import HubError, dataset_facts, preview_dataset

    if args.rows < 1:
        _error("--rows must be at least 1")
        return EXIT_USAGE
    try:
        facts = dataset_facts(args.repo_id, revision=args.revision, config=args.dataset_config)
        preview = preview_dataset(args.repo_id, revision=args.revision, split=args.split, rows=args.rows, facts=facts)
    except HubError as exc:
        _error(str(exc))
        return EXIT_USAGE
    if args.json:
        print(json.dumps(preview.as_dict(), ensure_ascii=False, default=str))
        return EXIT_OK
    _print(preview)
    return EXIT_OK


def _print(preview: Any) -> None:
    from core.dataset_hub import jsonable
    from core.model_library import human_size

    facts = preview.facts
    width = max(60, min(160, shutil.get_terminal_size((120, 20)).columns))
    head = [human_size(facts.total_size), f"{len(facts.files)} file{'s' if len(facts.files) != 1 else ''}"]
    if facts.license:
        head.append(f"licence {facts.license}")
    if facts.gated:
        head.append("gated (accept its conditions on the Hub, then `hf auth login`)")
    if facts.sha:
        head.append(f"commit {facts.sha[:8]}")
    print(f"{facts.repo_id} · " + " · ".join(head))
    if facts.card:
        for line in [x for x in facts.card.splitlines() if x.strip()][:3]:
            print(f"  {line[:width - 2]}")
    if facts.configs:
        print(f"configs: {', '.join(facts.configs)} (showing {facts.config})")
    print("files:")
    split_of = {p: s for s, paths in facts.splits.items() for p in paths}
    for f in sorted(facts.files, key=lambda f: (split_of.get(f.path) is None, f.path)):
        print(f"  {split_of.get(f.path) or '':<11}{human_size(f.size):>10}  {f.path}")
    part = f"{preview.kind}, {human_size(preview.file_size)}"
    if preview.total_rows is not None:
        part += f", {preview.total_rows:,} rows in {preview.row_groups} row group{'s' if preview.row_groups != 1 else ''}"
    print(f"split {preview.split}: {preview.file} ({part})")
    if preview.format:
        print(f"format: {preview.format} ({preview.format_reason})")
    elif preview.format_error:
        print(f"format: not recognised: {preview.format_error}")
    share = f" ({100 * preview.read_fraction:.1f}% of the file)" if preview.read_fraction is not None else ""
    print(f"read {human_size(preview.bytes_read)}{share} in {preview.elapsed:.2f} s")
    if preview.note:
        print(f"note: {preview.note}")
    for problem in preview.problems[:5]:
        print(f"problem: {problem}")
    print(f"first {len(preview.rows)} row{'s' if len(preview.rows) != 1 else ''}:")
    for i, row in enumerate(preview.rows):
        text = json.dumps(_shorten(jsonable(row)), ensure_ascii=False) if row is not None else "(unreadable)"
        where = f"line {preview.lines[i]}" if preview.lines[i] else f"row {i}"
        line = f"  {where}: {text}"
        print(line if len(line) <= width else line[:width - 1] + "…")


def _shorten(value: Any, limit: int = 48) -> Any:
    """Every string cut to ``limit`` characters, so that a row's line shows all of its columns."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit - 1] + "…"
    if isinstance(value, dict):
        return {k: _shorten(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, limit) for v in value]
    return value
