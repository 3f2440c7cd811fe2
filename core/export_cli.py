"""The ``export``, ``evaluate`` and ``chat-worker`` subcommands of ``sft-studio``.

``core.cli`` adds them with :func:`add_export_parsers`; each parser carries its handler as ``args.handler``
(also listed in :data:`COMMANDS`). The handlers print one clear message on failure and return an exit code:
0 success, 1 the export/evaluation failed, 2 unusable input (no run directory, bad option), 130 cancelled.

``python -m core.export_cli ...`` runs the same commands on their own.

    sft-studio export RUN_DIR --adapter OUT [--merged OUT] [--gguf OUT] [--hub USER/NAME] [--dtype auto]
    sft-studio export RUN_DIR --script OUT     # standalone TRL + PEFT script (works before training too)
    sft-studio evaluate RUN_DIR [--max-new-tokens 128] [--limit 20] [--json]
    sft-studio chat-worker            # JSON-lines protocol on stdin/stdout, see core.chat
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def add_export_parsers(subparsers: Any) -> None:
    """Add ``export``, ``evaluate`` and ``chat-worker`` to an ``argparse`` subparsers object."""
    ex = subparsers.add_parser(
        "export", help="export a finished run: adapter, merged model, GGUF, or push to the Hub",
        description="Export a finished run. Each export is written to a temporary folder next to OUT, verified by "
        "reloading it, then renamed into place; a failure leaves nothing behind.")
    ex.add_argument("run_dir", metavar="RUN_DIR", help="the run's output_dir (holds run.yaml and adapter/)")
    ex.add_argument("--adapter", metavar="OUT", help="write the PEFT adapter + tokenizer + model card to folder OUT")
    ex.add_argument("--merged", metavar="OUT", help="write the base model with the adapter merged in (safetensors)")
    ex.add_argument("--gguf", metavar="OUT",
                    help="write a GGUF file for llama.cpp / Ollama / LM Studio into folder OUT, with an Ollama Modelfile")
    ex.add_argument("--gguf-type", default="f16", choices=("f16", "bf16", "q8_0", "f32", "auto"),
                    help="GGUF tensor type (default f16; q8_0 is about half the size, auto picks a 16-bit type)")
    ex.add_argument("--hub", metavar="USER/NAME", help="push the adapter to this Hugging Face Hub repository")
    ex.add_argument("--script", metavar="OUT",
                    help="write a standalone TRL + PEFT train.py (+ config.yaml and the data) into folder OUT that "
                    "trains exactly the tokens the studio trains, without SFT Studio; needs only RUN_DIR/run.yaml")
    ex.add_argument("--public", action="store_true", help="create the Hub repository public (default private)")
    ex.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                    help="precision of the merged weights (auto: bf16 on GPUs that support it, else fp32 on CPU)")
    ex.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to load the model for export")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT folder (only once complete)")
    ex.add_argument("--json", action="store_true", help="print the results as JSON")
    ex.set_defaults(handler=cmd_export)

    ev = subparsers.add_parser(
        "evaluate", help="answer the eval split with base and tuned model; write evaluation.jsonl and the loss",
        description="Generate greedy base and tuned answers for the run's eval split (or LIMIT sampled training rows "
        "when it has none), compute eval loss and perplexity, and write evaluation.jsonl + evaluation.json into "
        "the run directory. Progress is streamed as marked JSON events on stdout.")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="answer length limit (default 128)")
    ev.add_argument("--limit", type=int, default=20, metavar="N",
                    help="evaluate at most N rows (default 20; 0 = the whole eval split)")
    ev.add_argument("--batch-size", type=int, default=8, metavar="N")
    ev.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    ev.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    ev.add_argument("--from-app", action="store_true",
                    help="started by the desktop app: `stop` or end of input on stdin cancels")
    ev.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    ev.set_defaults(handler=cmd_evaluate)

    cw = subparsers.add_parser(
        "chat-worker", help="serve base/tuned chat over JSON lines on stdin/stdout (used by the desktop app)",
        description="The chat engine as a child process; the protocol is documented in core/chat.py.")
    cw.set_defaults(handler=cmd_chat_worker)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> int:
    from core.export import ExportError, export_run

    script = getattr(args, "script", None)
    if not (args.adapter or args.merged or args.gguf or args.hub or script):
        _error("nothing to export: give --adapter OUT, --merged OUT, --gguf OUT, --script OUT and/or --hub USER/NAME")
        return EXIT_USAGE

    def progress(message: str) -> None:
        print(f"export: {message}", file=sys.stderr, flush=True)

    if script:
        from core.script_export import load_script_config

        try:
            load_script_config(args.run_dir)
        except ExportError as exc:  # no run.yaml, or a broken one: unusable input, nothing written
            _error(str(exc))
            return EXIT_USAGE
    results = []
    try:
        if args.adapter or args.merged or args.gguf or args.hub:
            results = export_run(args.run_dir, adapter=args.adapter, merged=args.merged, gguf=args.gguf, hub=args.hub,
                                 dtype=args.dtype, device=args.device, gguf_type=args.gguf_type,
                                 overwrite=args.overwrite, private=not args.public, progress=progress)
        if script:
            from core.script_export import export_script

            results.append(export_script(args.run_dir, script, overwrite=args.overwrite, progress=progress))
    except ExportError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a library error outside the staged write: still one clear line
        _error(f"export failed: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}")
        return EXIT_FAILED
    # Each kind is exported on its own (core.export.export_run): report every one, fail if any failed.
    failed = [r for r in results if getattr(r, "error", None)]
    for r in failed:
        _error(r.error if len(results) == 1 else f"{r.kind} export to {r.path} failed, nothing written: {r.error}")
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            if getattr(r, "error", None):
                print(f"{r.kind}: FAILED, nothing written to {r.path} (see the error above)")
                continue
            check = f", reload check max |Δlogit| {r.max_abs_diff:.2g}" if r.max_abs_diff is not None else ""
            print(f"{r.kind}: {r.path} ({len(r.files)} files{check})")
            for note in r.notes:
                print(f"  {note}")
            parity = getattr(r, "parity", None)
            for line in parity.lines() if parity is not None else []:
                print(f"  {line}")
            if r.commands:
                print("  run it locally:")
                for c in r.commands:
                    print(f"    {c['tool']}: {c['command']}")
    return EXIT_FAILED if failed else EXIT_OK


def cancel_on_stop(from_app: bool) -> threading.Event:
    """An event set when the app that started this child says ``stop`` or goes away (end of input on stdin);
    a terminal run (``from_app`` false) is never cancelled that way."""
    cancel = threading.Event()
    if from_app:
        def watch() -> None:
            for line in sys.stdin:
                if line.strip() == "stop":
                    break
            cancel.set()

        threading.Thread(target=watch, daemon=True).start()
    return cancel


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.evaluate import EvaluationCancelled, EvaluationError, evaluate_run
    from core.training.events import EventWriter

    events = EventWriter(None, stream=sys.stdout)
    cancel = cancel_on_stop(args.from_app)
    try:
        summary = evaluate_run(args.run_dir, max_new_tokens=args.max_new_tokens, sample_size=args.limit,
                               batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                               progress=lambda done, total: events.emit("progress", done=done, total=total),
                               cancelled=cancel.is_set)
    except EvaluationCancelled:
        events.emit("cancelled")
        _error("evaluation cancelled; nothing was written")
        return EXIT_CANCELLED
    except EvaluationError as exc:
        events.emit("failed", message=str(exc))
        _error(str(exc))
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - out of memory, a broken model: one clear line, not a traceback
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        events.emit("failed", message=message)
        _error(f"evaluation failed: {message}")
        return EXIT_FAILED
    events.emit("finished", **summary.as_dict())
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2, default=str))
    else:
        ppl = f"{summary.perplexity:.3g}" if summary.perplexity is not None else "–"
        print(f"evaluated {summary.rows} rows ({summary.source}): eval loss {summary.eval_loss}, perplexity {ppl}; "
              f"wrote {summary.rows_file}", file=sys.stderr)
    return EXIT_OK


def cmd_chat_worker(args: argparse.Namespace) -> int:
    from core.chat import run_chat_worker

    return run_chat_worker()


COMMANDS = {"export": cmd_export, "evaluate": cmd_evaluate, "chat-worker": cmd_chat_worker}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sft-studio")
    add_export_parsers(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
