"""The ``losses`` subcommand of ``sft-studio`` (DESIGN.md §3.2): per-token loss of the trained tokens under a model.

    sft-studio losses --config RUN.yaml --checkpoint CKPT [--checkpoint CKPT2 ...] [--rows A-B] [--top-k 5] --json

One JSON object per (row, model) on stdout. Progress goes to stderr as ``losses: ...`` lines; with ``--from-app``
it is a marked event stream on stdout instead (``stage``, ``progress``, ``finished`` / ``failed`` / ``cancelled``,
as ``evaluate`` does) and ``stop`` or end of input on stdin cancels. Exit 0 done, 2 bad input, 1 failed,
130 cancelled (the rows scored so far stay cached).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def add_losses_parser(subparsers: Any) -> None:
    lo = subparsers.add_parser(
        "losses", help="per-token loss, probability of the label and top-k next tokens of the trained tokens under "
        "the base, a checkpoint or the adapter",
        description="Build the rows exactly as `preview` and training do and score every trained token under a model: "
        "its loss (cross-entropy of predicting it from the tokens before it), the probability of the right token and "
        "the model's top-k next tokens. One JSON object per row and model. Results are cached in "
        "<output_dir>/token_losses/, so asking again is instant.")
    lo.add_argument("--config", "-c", required=True, metavar="RUN.yaml", help="the run file")
    lo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-file setting")
    lo.add_argument("--checkpoint", action="append", default=None, metavar="CKPT",
                    help="base | adapter (the run's final adapter) | checkpoint-N | a checkpoint or adapter folder; "
                    "repeat it to score several models with one load of the base (default: base)")
    lo.add_argument("--rows", default=None, metavar="A-B", help="rows to score: A-B (inclusive), N, or a comma list "
                    "(0-based, as in preview; default: all)")
    lo.add_argument("--top-k", type=int, default=5, metavar="K", help="next-token candidates per token (default 5)")
    lo.add_argument("--batch-size", type=int, default=None, metavar="N",
                    help="rows per forward pass (default: 32 on a CUDA GPU, 8 on CPU/MPS)")
    lo.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    lo.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                    help="model precision (auto: fp32 on CPU, bf16/fp16 on GPUs)")
    lo.add_argument("--no-cache", action="store_true", help="recompute and do not write the cache")
    lo.add_argument("--json", action="store_true", help="JSON lines output (the contract format)")
    lo.add_argument("--from-app", action="store_true",
                    help="started by the desktop app: progress as marked events, `stop` or end of input cancels")
    lo.set_defaults(handler=cmd_losses)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _text(record: dict) -> str:
    if "dropped" in record:
        return f"row {record['row']} ({record['model']}): not trained: {record['dropped']}"
    tokens = record.get("tokens", [])
    mean = record.get("mean_loss")
    head = f"row {record['row']} ({record['model']}): mean loss {mean:.4f} over {len(tokens)} trained tokens"
    worst = sorted(tokens, key=lambda t: -t["loss"])[:5]
    parts = [f"{t['token']!r} {t['loss']:.2f} (p={t['prob']:.3f})" for t in worst]
    return head + ("; hardest: " + ", ".join(parts) if parts else "")


def cmd_losses(args: argparse.Namespace) -> int:
    from core.cli import _load_config
    from core.export_cli import cancel_on_stop
    from core.token_losses import LossCancelled, LossError, compute_losses
    from core.training.events import EventWriter

    config = _load_config(args.config, args.set)  # a bad run file: one error line, exit 2 (core.cli.main)
    events = EventWriter(None, stream=sys.stdout) if args.from_app else None
    cancel = cancel_on_stop(args.from_app)
    last_stage = [""]

    def progress(stage: str, done: int, total: int) -> None:
        if events is not None:
            if stage != last_stage[0]:
                events.emit("stage", message=stage)
            events.emit("progress", done=done, total=total)
        elif stage != last_stage[0]:
            print(f"losses: {stage}" + (f" ({done}/{total})" if total else ""), file=sys.stderr, flush=True)
        last_stage[0] = stage

    def emit(record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) if args.json or args.from_app else _text(record)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        summary = compute_losses(config, args.checkpoint or ["base"], args.rows, emit=emit, top_k=args.top_k,
                                 batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                                 use_cache=not args.no_cache, progress=progress, cancelled=cancel.is_set)
    except LossCancelled:
        if events is not None:
            events.emit("cancelled")
        _error("cancelled; the rows scored so far are cached")
        return EXIT_CANCELLED
    except LossError as exc:
        if events is not None:
            events.emit("failed", message=str(exc))
        _error(str(exc))
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - out of memory, a broken model: one clear line, not a traceback
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if events is not None:
            events.emit("failed", message=message)
        _error(f"scoring failed: {type(exc).__name__}: {message}")
        return EXIT_FAILED
    if events is not None:
        events.emit("finished", **summary.as_dict())
    else:
        where = f" on {summary.device} ({summary.dtype})" if summary.device else ""
        print(f"losses: {summary.rows} results ({summary.computed} computed{where} in {summary.seconds:.1f} s, "
              f"{summary.cached} from the cache, {summary.dropped} rows not trained)", file=sys.stderr)
    return EXIT_OK
