"""The ``models`` and ``download`` subcommands of ``sft-studio`` (the model library, DESIGN.md §3.2).

    sft-studio models [--config RUN.yaml] [--json] [--no-fit] [--add PATH] [--remove PATH]
    sft-studio download ID [--revision R] [--repo-type model|dataset | --dataset]

``models`` lists the bundled model, the Hugging Face cache, LM Studio's and Ollama's models, added folders/GGUF files
and recent models, each with its size and the fit check's verdict for the run file (or the default run) on this
machine; ``--json`` prints one JSON object per model, as each verdict is ready. ``download`` fetches a Hub
repository into the Hugging Face cache with a progress line on stderr (bytes, speed, ETA) and prints the local path;
Ctrl+C keeps what arrived (exit 130) and the same command resumes. ``core.cli`` adds both with
:func:`add_library_parsers`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def add_library_parsers(subparsers: Any) -> None:
    """Add ``models`` and ``download`` to an ``argparse`` subparsers object."""
    mo = subparsers.add_parser(
        "models", help="the model library: local, cached, LM Studio and Ollama models with size and fit for the run",
        description="List the models this machine has (bundled, Hugging Face cache, LM Studio, Ollama, added folders "
        "and .gguf files, recent) with architecture, parameters, size, quantisation, context length, chat template "
        "and the memory fit check's verdict for the run file (--config) or the default run.")
    mo.add_argument("--config", "-c", metavar="RUN.yaml", help="the run the fit verdicts are for (default: the defaults)")
    mo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-file setting")
    mo.add_argument("--json", action="store_true", help="one JSON object per model (as each fit verdict is ready)")
    mo.add_argument("--no-fit", action="store_true", help="skip the fit verdicts (no torch import: instant)")
    mo.add_argument("--device", default=None, help="auto | cuda | mps | cpu: the device the verdicts are for")
    mo.add_argument("--source", action="append", default=None, metavar="SOURCE",
                    help="only these sources (repeatable): bundled, hf-cache, lm-studio, ollama, added, recent")
    mo.add_argument("--add", metavar="PATH", help="remember a model folder, a folder of models or a .gguf file")
    mo.add_argument("--remove", metavar="PATH", help="forget an added folder or file")
    mo.set_defaults(handler=cmd_models)

    dl = subparsers.add_parser(
        "download", help="download a Hub model or dataset into the Hugging Face cache with progress; resumable",
        description="Download a Hugging Face Hub repository into the Hugging Face cache (HF_HUB_CACHE / HF_HOME) "
        "through huggingface_hub, with a progress line on stderr, and print the local folder. Ctrl+C keeps what "
        "arrived; running the same command again resumes (HTTP Range). Gated and private repositories use the token "
        "of `hf auth login` or HF_TOKEN.")
    dl.add_argument("repo_id", metavar="ID", help="a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct")
    dl.add_argument("--revision", default=None, metavar="R", help="branch, tag or commit (default: main)")
    dl.add_argument("--repo-type", default="model", choices=("model", "dataset"))
    dl.add_argument("--dataset", action="store_const", const="dataset", dest="repo_type",
                    help="ID is a dataset (the same as --repo-type dataset); preview it first with `sft-studio "
                    "dataset-info ID`")
    dl.add_argument("--include", action="append", default=None, metavar="PATTERN",
                    help="only files matching this pattern, e.g. '*.Q4_K_M.gguf' (repeatable)")
    dl.add_argument("--progress-json", action="store_true", help=argparse.SUPPRESS)  # the app: marked events
    dl.set_defaults(handler=cmd_download)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------------ models


def cmd_models(args: argparse.Namespace) -> int:
    from core.model_library import (
        SOURCE_LABELS,
        SOURCES,
        add_location,
        estimate_fits,
        list_models,
        remove_location,
    )

    if args.add:
        try:
            print(f"added {add_location(args.add)}", file=sys.stderr)
        except (OSError, ValueError) as exc:
            _error(str(exc))
            return EXIT_USAGE
    if args.remove and not remove_location(args.remove):
        _error(f"{args.remove}: not an added folder or file")
        return EXIT_USAGE
    bad = [s for s in args.source or [] if s not in SOURCES]
    if bad:
        _error(f"--source {bad[0]}: choose from {', '.join(SOURCES)}")
        return EXIT_USAGE
    config = None
    if not args.no_fit:
        if args.config or args.set:
            from core.cli import _load_config

            config = _load_config(args.config, args.set) if args.config else None
            if config is None:
                _error("--set needs --config RUN.yaml")
                return EXIT_USAGE
    started = time.perf_counter()
    entries = list_models(args.source)
    listed = time.perf_counter() - started
    out = sys.stdout

    def emit(entry: Any) -> None:
        if args.json:
            out.write(json.dumps(entry.as_dict(), ensure_ascii=False, default=str) + "\n")
            out.flush()

    device = None
    if args.no_fit:
        for entry in entries:
            emit(entry)
    else:
        device = estimate_fits(entries, config, device=args.device, on_entry=emit)
    if not args.json:
        _print_table(entries, SOURCE_LABELS)
        what = f"the run {args.config}" if args.config else "the default run"
        where = f" on {device['description']}" if device else ""
        fits = "" if args.no_fit else f"; fit verdicts for {what}{where}"
        print(f"{len(entries)} models (listed in {listed:.2f} s){fits}", file=sys.stderr)
    return EXIT_OK


def _print_table(entries: list[Any], labels: dict[str, str]) -> None:
    from core.model_library import fit_label, human_params, human_size, template_label

    rows = [("SOURCE", "MODEL", "SIZE", "PARAMS", "QUANT", "CTX", "TEMPLATE", "FIT")]
    for e in entries:
        rows.append((
            labels.get(e.source, e.source), e.name, human_size(e.size), human_params(e.params), e.dtype or "–",
            str(e.context_length or "–"), template_label(e), e.note or fit_label(e.fit),
        ))
    widths = [min(60, max(len(r[i]) for r in rows)) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c[:60].ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for e in entries:  # the exact text to put into model.name_or_path, when it differs from the name
        if e.spec != e.name and e.path:
            print(f"  {e.name}: model.name_or_path = {e.spec}")


# ---------------------------------------------------------------------------------------------------- download


def cmd_download(args: argparse.Namespace) -> int:
    import signal

    from core.model_hub import DownloadCancelled, HubError, download
    from core.model_library import human_size, remember_model

    events = None
    if args.progress_json:
        from core.training.events import EventWriter

        events = EventWriter(None, stream=sys.stdout)
    tty = sys.stderr.isatty()
    last: list[Any] = [time.monotonic(), None]  # without a terminal: a line every 2 s, and the last one

    def progress(report: Any) -> None:
        if events is not None:
            events.emit("progress", **report.as_dict())
        now = time.monotonic()
        if tty:
            sys.stderr.write("\r" + report.line().ljust(100)[:120])
            sys.stderr.flush()
        elif now - last[0] >= 2.0 or (report.total and report.done >= report.total):
            print(report.line(), file=sys.stderr, flush=True)
            last[0] = now
        last[1] = report

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # the app's Cancel (SIGTERM) takes the same path as Ctrl+C

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, stop)
    try:
        path = download(args.repo_id, revision=args.revision, repo_type=args.repo_type, progress=progress,
                        allow_patterns=args.include)
    except (DownloadCancelled, KeyboardInterrupt):
        report = last[1]
        kept = f" ({human_size(report.done)} of {human_size(report.total)} kept)" if report is not None else ""
        if tty:
            sys.stderr.write("\n")
        print(f"cancelled{kept}; run the same command again to resume", file=sys.stderr)
        if events is not None:
            events.emit("cancelled")
        return EXIT_CANCELLED
    except HubError as exc:
        if tty and last[1] is not None:
            sys.stderr.write("\n")
        _error(str(exc))
        if events is not None:
            events.emit("failed", kind=exc.kind, message=str(exc))
        return EXIT_USAGE if exc.kind in ("gated", "auth", "not_found", "offline") else EXIT_FAILED
    if tty:
        sys.stderr.write("\n")
    if args.repo_type == "model":
        remember_model(args.repo_id if not args.revision else path)
    if events is not None:
        events.emit("done", path=path)
    print(path)
    return EXIT_OK
