"""The ``sft-studio`` command (DESIGN.md §3.2): the desktop app when run bare, headless subcommands otherwise.

User mistakes (bad run file, unreadable data, missing model) print one clear message naming the file,
line/row and field, and exit non-zero — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_OK, EXIT_PROBLEMS, EXIT_UNREADABLE = 0, 1, 2


class _UserError(Exception):
    def __init__(self, message: str, code: int = EXIT_UNREADABLE) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sft-studio",
        description="SFT Studio: see every token's loss mask, then fine-tune with TRL + PEFT. "
        "Run without a command to open the desktop app.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser, required: bool = True) -> None:
        sp.add_argument("--config", "-c", required=required, metavar="RUN.yaml", help="the run file")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-file setting, e.g. --set training.learning_rate=1e-4 (repeatable)")

    g = sub.add_parser("gui", help="open the desktop app")
    g.add_argument("run_file", nargs="?", metavar="RUN.yaml")
    g.add_argument("--page", help="page to show (data, template, tokens, ...)")
    g.add_argument("--row", type=int, help="row to show on the page")
    g.add_argument("--screenshot", metavar="OUT.png", help="render the page offscreen, save a PNG and exit")

    pv = sub.add_parser("preview", help="print what training will see, one JSON object per example")
    with_config(pv)
    pv.add_argument("--json", action="store_true", help="JSON lines output (the contract format)")
    pv.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N rows")
    pv.add_argument("--row", type=int, action="append", default=None, metavar="N", help="only row N (repeatable)")
    pv.add_argument("--reasons", action="store_true",
                    help="with --json, also why each token carries no loss (\"reasons\"), how the row was read "
                         "(\"method\") and the tokens each mask rule took out (\"masked_by\")")

    au = sub.add_parser("audit", help="check dataset and template without training (exit 0 clean, 1 problems, 2 unreadable)")
    with_config(au)
    au.add_argument("--json", action="store_true", help="print the report as JSON")

    tr = sub.add_parser(
        "train", help="train headless, writing the run directory",
        description="Train headless. Stop gracefully (checkpoint + adapter) with Ctrl-C, a STOP file in the run "
        "directory, or `stop` on a piped stdin; `pause` / `resume` on stdin hold and continue at a step boundary.")
    tr.add_argument("--config", "-c", metavar="RUN.yaml", help="the run file")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-file setting")
    tr.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                    help="continue from the newest complete checkpoint (of RUN_DIR, or of the run file's output_dir)")
    tr.add_argument("--from-app", action="store_true",
                    help="started by the desktop app: end of input on stdin means stop (save and exit)")

    be = sub.add_parser(
        "bench", help="time a few real training steps of this exact run: tokens/s, peak memory vs estimate, MFU",
        description="Train --warmup + --steps optimizer steps of the run (same data, model and automatic choices as "
        "`train`) into a temporary folder and report trained tokens per second, seconds per step, peak memory "
        "against the memory estimate, and an estimated MFU. Nothing is kept. One process (distributed settings are "
        "not launched).")
    be.add_argument("--config", "-c", metavar="RUN.yaml", help="the run file")
    be.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-file setting")
    be.add_argument("--steps", type=int, default=5, help="optimizer steps to time (default 5)")
    be.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, allocator; default 2)")
    be.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ce = sub.add_parser("cluster-export", help="write run.yaml, an accelerate config, launch.sh and a Slurm template "
                        "to take this run to a multi-GPU machine or cluster")
    with_config(ce)
    ce.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the files into")

    from core.export_cli import add_export_parsers

    add_export_parsers(sub)  # export, evaluate, chat-worker

    from core.model_library_cli import add_library_parsers

    add_library_parsers(sub)  # models, download
    from core.dataset_hub_cli import add_dataset_parsers

    add_dataset_parsers(sub)  # dataset-info: a Hub dataset's size, files, format and first rows before downloading
    from core.losses_cli import add_losses_parser

    add_losses_parser(sub)  # losses: per-token loss under the base, a checkpoint or the adapter

    pr = sub.add_parser("probe", help="print device, model and memory-estimate facts as JSON (the app asks this way "
                        "so that its own process never initialises CUDA)")
    pr.add_argument("--config", "-c", metavar="RUN.yaml")
    pr.add_argument("--device", default=None, help="auto | cuda | mps | cpu (default: auto)")

    iv = sub.add_parser("init", help="write a starter run file that trains offline on the bundled sample data")
    iv.add_argument("path", nargs="?", default="run.yaml", metavar="RUN.yaml")
    iv.add_argument("--force", action="store_true", help="overwrite an existing file")
    return p


def _load_config(path: str | None, overrides: Sequence[str]):
    from core.config import ConfigError, apply_overrides, load_run_config, validate_run_config

    if not path:
        raise _UserError("--config RUN.yaml is required (create one with: sft-studio init run.yaml)")
    try:
        config = load_run_config(path)
        if overrides:
            config = apply_overrides(config, overrides)
            problems = validate_run_config(config)
            if problems:
                raise ConfigError(problems)
    except ConfigError as exc:
        raise _UserError("\n".join(str(p) for p in exc.problems) or str(exc)) from None
    from resources import resolve_resource_path

    config.data.path = resolve_resource_path(config.data.path)
    return config


def _open_run(config):
    from core.data import DataError
    from core.pipeline import open_run
    from core.templates import TemplateError
    from core.training.models import ModelError

    try:
        return open_run(config)
    except (DataError, ModelError, TemplateError) as exc:
        raise _UserError(str(exc)) from None


def cmd_preview(args: argparse.Namespace) -> int:
    from core.pipeline import build_rows

    config = _load_config(args.config, args.set)
    run = _open_run(config)
    n = len(run.dataset.examples)
    rows: Sequence[int] = range(n if args.limit is None else min(n, args.limit))
    if args.row:
        bad = [r for r in args.row if not 0 <= r < n]
        if bad:
            raise _UserError(f"--row {bad[0]}: the dataset has rows 0 to {n - 1}")
        rows = args.row
    out = sys.stdout
    for result in build_rows(run, rows):
        reason = result.dropped
        if reason is not None:
            obj = {"row": result.row, "dropped": reason}
        else:
            built = result.built
            assert built is not None
            obj = {
                "row": result.row,
                "input_ids": built.input_ids,
                "labels": built.labels,
                "tokens": [t.text for t in built.tokens[: len(built.input_ids)]],
            }
            if getattr(args, "reasons", False):
                # why each token carries no loss (a key of core.masks.REASONS; null = trained), how the row was read
                obj["reasons"] = [t.reason for t in built.tokens[: len(built.input_ids)]]
                obj["method"] = built.method
                obj["masked_by"] = built.masked_by
        if args.json:
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        else:
            out.write(_preview_text(result) + "\n")
    return EXIT_OK


def _preview_text(result) -> str:
    if result.dropped is not None:
        return f"row {result.row}: not trained: {result.dropped}"
    built = result.built
    parts = []
    for t in built.tokens:
        parts.append(f"[{t.text}]" if t.trained else t.text)
    return f"row {result.row} ({built.n_trained} of {len(built.input_ids)} tokens trained, [brackets] = loss):\n" + "".join(parts)


def cmd_audit(args: argparse.Namespace) -> int:
    from core.audit import audit_run, format_report

    config = _load_config(args.config, args.set)
    run = _open_run(config)
    report = audit_run(run)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
    else:
        print(format_report(report))
    return EXIT_OK if report.clean else EXIT_PROBLEMS


def _log_tail(path: Path, lines: int = 30) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def cmd_train(args: argparse.Namespace) -> int:
    import faulthandler

    from core.training.control import TrainingControl, stdin_is_readable_safely
    from core.training.events import EventWriter
    from core.training.session import (
        EXIT_CONFIG,
        EXIT_CRASH,
        EXIT_DATA,
        EXIT_OOM,
        TrainingFailed,
        run_training,
    )

    faulthandler.enable()  # a native crash (CUDA, bitsandbytes) still leaves a Python stack on stderr
    config_path = args.config
    resume = args.resume is not None
    if resume and args.resume:
        config_path = config_path or str(Path(args.resume) / "run.yaml")
    config = _load_config(config_path, args.set)
    if resume and args.resume:
        config.output_dir = str(Path(args.resume).resolve())
    from core.training.distributed import check_distributed, in_rank_child, run_launcher, wants_launcher

    if in_rank_child():  # one rank of a multi-process run (started by accelerate's launcher)
        return _train_rank(config, resume)
    problems = check_distributed(config)
    if problems:
        raise _UserError("\n".join(f"{config_path}: {p}" if config_path else p for p in problems))
    out = Path(config.output_dir)
    from core.training.rundir import RunDirBusy, RunDirLock

    try:  # before anything is written: a second run must not touch the first run's files
        lock = RunDirLock(out).acquire()
    except RunDirBusy as exc:
        raise _UserError(str(exc)) from None
    except OSError as exc:  # read-only folder, a file in the way, a full disk: nothing was written
        raise _UserError(_output_dir_error(out, exc)) from None
    (out / "STOP").unlink(missing_ok=True)
    from core.model_library import remember_model

    remember_model(config.model.name_or_path)  # the model library lists recently trained models
    # Started by the app, EOF on stdin means the app is gone: stop (and save) rather than linger as an orphan.
    # From a terminal, stdin is read only when it is a pipe (`echo stop | ...`); a TTY is left alone (a run in the
    # background would be stopped by SIGTTIN) and EOF is ignored (nohup, cron, CI).
    control = TrainingControl(out, eof_means_stop=args.from_app)
    if args.from_app or stdin_is_readable_safely():
        control.start_stdin_reader()
    control.install_signal_handlers()
    events = EventWriter(out / "events.jsonl", stream=sys.stdout)
    codes = {"config": EXIT_CONFIG, "data": EXIT_DATA, "oom": EXIT_OOM}
    if wants_launcher(config):  # several processes: this one only launches and supervises them
        (out / "PAUSE").unlink(missing_ok=True)
        try:
            return run_launcher(config, resume=resume, control=control, events=events, log_tail=_log_tail,
                                exit_codes={**codes, "crash": EXIT_CRASH})
        finally:
            events.close()
            lock.release()
    try:
        result = run_training(config, events=events, resume=resume, control=control)
    except TrainingFailed as exc:
        events.emit("failed", kind=exc.kind, message=str(exc), hint=exc.hint, log_tail=_log_tail(out / "train.log"))
        print(f"error: {exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return codes.get(exc.kind, EXIT_CRASH)
    except _UserError:
        raise
    except Exception as exc:
        kind, hint = _failure_kind(exc), ""
        if kind == "crash":
            import traceback

            with open(out / "train.log", "a", encoding="utf-8") as fh:
                traceback.print_exc(file=fh)
            hint = "the last lines of train.log show where it failed; `sft-studio train --resume` continues from the last checkpoint"
            print(f"error: training crashed: {type(exc).__name__}: {exc}\n(details in {out / 'train.log'})", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        events.emit("failed", kind=kind, message=f"{type(exc).__name__}: {exc}" if kind == "crash" else str(exc), hint=hint,
                    log_tail=_log_tail(out / "train.log"))
        return codes.get(kind, EXIT_CRASH)
    finally:
        events.close()
        lock.release()
    how = f"stopped ({control.stop_reason}) at step {result.steps}" if result.stopped_early else f"done: {result.steps} steps"
    print(f"{how}, adapter saved to {result.adapter_dir}", file=sys.stderr)
    return EXIT_OK


def _output_dir_error(out: Path, exc: OSError) -> str:
    """Why the run folder cannot be used, naming it (not the .lock file inside it)."""
    import errno

    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "the folder is not writable (permission denied)" if exc.errno != errno.EROFS else (
            "the folder is on a read-only file system")
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = "a file is in the way where the folder should be"
    elif exc.errno == errno.ENOSPC:
        reason = "the disk is full"
    return f"output_dir {out}: cannot write the run there: {reason}. Choose another output_dir (--set output_dir=PATH)"


def _exit_code(kind: str) -> int:
    """The exit status of a failure kind (config, data, oom, crash)."""
    from core.training.session import EXIT_CONFIG, EXIT_CRASH, EXIT_DATA, EXIT_OOM

    return {"config": EXIT_CONFIG, "data": EXIT_DATA, "oom": EXIT_OOM}.get(kind, EXIT_CRASH)


def _failure_kind(exc: BaseException) -> str:
    from core.config import ConfigError
    from core.data import DataError
    from core.templates import TemplateError
    from core.training.devices import DeviceError
    from core.training.models import ModelError

    if isinstance(exc, (ConfigError, ModelError, TemplateError, DeviceError)):
        return "config"
    if isinstance(exc, DataError):
        return "data"
    return "crash"


def _train_rank(config, resume: bool) -> int:
    """One rank of a multi-process run. Rank 0 writes the events, run.yaml, train.log and the adapter; rank N logs to
    train.rank{N}.log. A failure leaves .rank{N}.failure.json for the wrapper, which reports the first one."""
    import signal
    import traceback

    from core.training.control import TrainingControl
    from core.training.distributed import (
        CHILD_ENV,
        SilentEvents,
        exit_with_launcher,
        rank,
        record_rank_failure,
        redirect_rank_output,
    )
    from core.training.events import EventWriter
    from core.training.session import (
        EXIT_CONFIG,
        EXIT_CRASH,
        EXIT_DATA,
        EXIT_OOM,
        TrainingFailed,
        run_training,
    )

    n, out = rank(), Path(config.output_dir)
    wrapped = os.environ.get(CHILD_ENV) == "1"  # our wrapper reports failures; under a bare `accelerate launch`, rank 0
    if n != 0:
        redirect_rank_output(out, n)
    if wrapped:
        if hasattr(signal, "SIGINT"):
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the wrapper turns Ctrl-C into a STOP file for every rank
        if os.name == "posix":
            exit_with_launcher()
    control = TrainingControl(out, watch_pause_file=True)
    events = EventWriter(out / "events.jsonl", stream=sys.stdout) if n == 0 else SilentEvents()
    codes = {"config": EXIT_CONFIG, "data": EXIT_DATA, "oom": EXIT_OOM, "crash": EXIT_CRASH}
    try:
        result = run_training(config, events=events, resume=resume, control=control)
    except Exception as exc:
        if isinstance(exc, TrainingFailed):
            kind, message, hint = exc.kind, str(exc), exc.hint
        else:
            kind = _failure_kind(exc)
            message = f"{type(exc).__name__}: {exc}" if kind == "crash" else str(exc)
            hint = "the rank's log shows where it failed; `sft-studio train --resume` continues from the last checkpoint"
            if n == 0 and kind == "crash":
                with open(out / "train.log", "a", encoding="utf-8") as fh:
                    traceback.print_exc(file=fh)
            traceback.print_exc()
        record_rank_failure(out, n, kind, message, hint)
        if n == 0 and not wrapped:
            events.emit("failed", kind=kind, message=f"rank 0 failed: {message}", hint=hint, rank=0,
                        log_tail=_log_tail(out / "train.log"))
        print(f"error: rank {n}: {message}", file=sys.stderr)
        return codes.get(kind, EXIT_CRASH)
    finally:
        events.close()
    if n == 0:
        how = f"stopped ({control.stop_reason}) at step {result.steps}" if result.stopped_early else f"done: {result.steps} steps"
        print(f"{how}, adapter saved to {result.adapter_dir}", file=sys.stderr)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from core.training.bench import run_bench
    from core.training.session import TrainingFailed

    if args.steps < 1 or args.warmup < 1:
        raise _UserError("--steps and --warmup must be at least 1")
    config = _load_config(args.config, args.set)
    try:
        result = run_bench(config, steps=args.steps, warmup=args.warmup)
    except TrainingFailed as exc:
        print(f"error: {exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return _exit_code(exc.kind)
    except Exception as exc:  # noqa: BLE001 - reported like `train` does, without a traceback
        kind = _failure_kind(exc)
        print(f"error: {type(exc).__name__}: {exc}" if kind == "crash" else f"error: {exc}", file=sys.stderr)
        return _exit_code(kind)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        for line in result.auto_choices:
            print(f"auto: {line}")
        print("\n".join(result.lines()))
    return EXIT_OK


def cmd_cluster_export(args: argparse.Namespace) -> int:
    from core.training.distributed import check_distributed, export_cluster

    config = _load_config(args.config, args.set)
    problems = [p for p in check_distributed(config) if "not installed" not in p]  # the cluster may have DeepSpeed
    if problems:
        raise _UserError("\n".join(problems))
    written = export_cluster(config, Path(args.out_dir))
    for path in written:
        print(path)
    n = config.distributed.num_processes
    print(f"wrote {len(written)} files for {n} GPU process{'es' if n > 1 else ''} per machine; run "
          f"{Path(args.out_dir) / 'launch.sh'} there, or submit {Path(args.out_dir) / 'train.slurm'} with sbatch",
          file=sys.stderr)
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    from core.probe import main as probe_main

    return probe_main((["--config", args.config] if args.config else []) + (["--device", args.device] if args.device else []))


def cmd_init(args: argparse.Namespace) -> int:
    from resources import starter_run_yaml

    path = Path(args.path)
    if path.exists() and not args.force:
        raise _UserError(f"{path}: already exists (use --force to overwrite)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(starter_run_yaml(), encoding="utf-8")
    except OSError as exc:
        raise _UserError(f"{path}: cannot write the run file ({exc.strerror or exc})") from None
    print(f"wrote {path}: trains bundled:SmolLM2-135M-Instruct on the sample data, offline. Next: "
          f"sft-studio audit --config {path}", file=sys.stderr)
    return EXIT_OK


# How to open the desktop app: registered by app.entry (the `sft-studio` command), so that core never imports Qt
# or app. `python -m core.cli` (what training and chat children run) has the headless commands only.
gui_launcher: Callable[..., int] | None = None


def cmd_gui(args: argparse.Namespace) -> int:
    if gui_launcher is None:
        raise _UserError("the desktop app is opened by the `sft-studio` command (or `python -m app.entry`); "
                         "`python -m core.cli` runs the headless commands only")
    return gui_launcher(
        run_file=getattr(args, "run_file", None),
        page=getattr(args, "page", None),
        row=getattr(args, "row", None),
        screenshot=getattr(args, "screenshot", None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].lower().endswith((".yaml", ".yml")):
        argv.insert(0, "gui")  # `sft-studio run.yaml` (file managers' "Open with") opens it in the app
    args = _parser().parse_args(argv)
    commands = {"preview": cmd_preview, "audit": cmd_audit, "train": cmd_train, "init": cmd_init, "gui": cmd_gui,
                "probe": cmd_probe, "cluster-export": cmd_cluster_export, "bench": cmd_bench}
    command = getattr(args, "handler", None) or commands.get(args.command or "gui", cmd_gui)
    try:
        return command(args)
    except _UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # a file or folder the command must write or read: say which, never a traceback
        if exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE


if __name__ == "__main__":
    sys.exit(main())
