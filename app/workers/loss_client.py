"""Per-token losses for the app: the ``sft-studio losses`` child (the GUI process never imports torch) and the
results it has seen.

:class:`LossJob` runs ``sft-studio losses --config <the session's settings> --checkpoint … --rows … --from-app`` through
:class:`~app.workers.chat_client.StudioChild`: each JSON line is one (row, model) result, marked events carry stage
and progress; ``stop`` on stdin cancels (the rows scored so far stay in the run's cache).

:class:`LossStore` answers "do we have row R under model M for these tokens?" from memory, then from the run's cache
files (:func:`core.token_losses.cached_result`), so a row seen before shows at once — also in a later session.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.workers.chat_client import StudioChild, studio_child_command
from app.workers.training_supervisor import emit_signal
from core.token_losses import DEFAULT_TOP_K, ModelChoice, cached_result, row_fingerprint

CANCEL_GRACE_MS = 20_000


def session_run_config(session: Any) -> Any:
    """The session's settings with absolute paths (relative ones are relative to the run file, as training reads
    them): what the child scores, and where the run's checkpoints are."""
    from core.config import resolve_paths

    base = session.run_file.parent if session.run_file is not None else Path.cwd()
    return resolve_paths(session.config, base)


@dataclass
class ModelEntry:
    """One choice of the Tokens page's model picker."""

    id: str  # "masks" | "base" | "checkpoint-N" | "adapter" | "compare"
    text: str
    mode: str  # "masks" | "loss" | "delta"
    choices: list[ModelChoice] = field(default_factory=list)  # [model] or [base, tuned]


def model_entries(models: list[ModelChoice]) -> list[ModelEntry]:
    """Masks, then the loss under each model of the run, then base vs the newest tuned model."""
    entries = [ModelEntry("masks", "Masks — what is trained", "masks")]
    for m in models:
        text = {"base": "Loss under the base model", "adapter": "Loss under the final adapter"}.get(
            m.label, f"Loss under {m.label}")
        entries.append(ModelEntry(m.label, text, "loss", [m]))
    tuned = [m for m in models if m.kind != "base"]
    if models and models[0].kind == "base" and tuned:
        name = "final adapter" if tuned[-1].label == "adapter" else tuned[-1].label
        entries.append(ModelEntry("compare", f"Base vs tuned: change of loss ({name})", "delta",
                                  [models[0], tuned[-1]]))
    return entries


def fingerprint(built: Any) -> str:
    return row_fingerprint(built.input_ids, built.labels)


class LossStore:
    """(model key, row) -> result, for the rows' current tokens and labels."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, int], dict] = {}

    def put(self, record: dict) -> None:
        if isinstance(record.get("key"), str) and isinstance(record.get("row"), int):
            self._results[(record["key"], record["row"])] = record

    def get(self, output_dir: str | os.PathLike[str], choice: ModelChoice, row: int, fp: str | None) -> dict | None:
        """The result of ``row`` under ``choice`` for tokens with fingerprint ``fp`` (None: any; dropped rows have
        none), or None when it has not been computed."""
        record = self._results.get((choice.key, row))
        if record is not None and (fp is None or record.get("fp") == fp or "dropped" in record):
            return record
        if fp is None:
            return None
        record = cached_result(output_dir, choice, row, fp, DEFAULT_TOP_K)
        if record is not None:
            self._results[(choice.key, row)] = record
        return record


class LossJob(QObject):
    """One ``sft-studio losses`` child over some rows and models."""

    resultReceived = Signal(dict)  # one (row, model) result as the CLI prints it
    progressed = Signal(str, int, int)  # stage, done, total
    ended = Signal(int, str)  # exit code (0 done, 130 cancelled), message (the error when it failed)

    def __init__(self, config: Any, checkpoints: Sequence[str], rows: str | None, parent: QObject | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        super().__init__(parent)
        from core.config import save_run_config

        self.checkpoints = list(checkpoints)
        self.rows = rows
        self.cancelled = False
        self.stage = "starting"
        self.failure = ""
        folder = Path(tempfile.mkdtemp(prefix="sft-studio-losses-"))
        self._config_path = folder / "run.yaml"
        save_run_config(config, self._config_path)
        args = ["losses", "--config", str(self._config_path), "--json", "--from-app"]
        for spec in self.checkpoints:
            args += ["--checkpoint", spec]
        if rows:
            args += ["--rows", rows]
        self.child = StudioChild(studio_child_command(*args, *extra_args), self)
        self.child.eventReceived.connect(self._on_event)
        self.child.lineReceived.connect(self._on_line)
        self.child.finished.connect(self._on_finished)

    def start(self) -> None:
        self.child.start()

    def is_running(self) -> bool:
        return self.child.is_running()

    def cancel(self) -> None:
        """Stop at the next batch; killed if it has not ended after a grace period (a model still loading)."""
        if self.cancelled or not self.child.is_running():
            return
        self.cancelled = True
        self.child.write_line("stop")
        self.child.close_stdin()
        QTimer.singleShot(CANCEL_GRACE_MS, self.child, self.child.kill)

    def _on_line(self, line: str) -> None:
        if not line.startswith("{"):
            return  # library chatter and stderr lines stay in the child's tail
        try:
            record = json.loads(line)
        except ValueError:
            return
        if isinstance(record, dict) and "row" in record:
            emit_signal(self.resultReceived, record)

    def _on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "stage":
            self.stage = str(event.get("message") or "")
        elif kind == "progress":
            emit_signal(self.progressed, self.stage, int(event.get("done") or 0), int(event.get("total") or 0))
        elif kind == "failed":
            self.failure = str(event.get("message") or "")

    def _on_finished(self, code: int) -> None:
        message = ""
        if code not in (0, 130):
            tail = [line for line in self.child.tail(40).splitlines() if line.strip()]
            errors = [line.removeprefix("error: ") for line in tail if line.startswith("error: ")]
            message = self.failure or (errors[-1] if errors else (tail[-1] if tail else f"exit code {code}"))
        if self.cancelled and code != 0:
            code = 130
        try:
            self._config_path.unlink(missing_ok=True)
            self._config_path.parent.rmdir()
        except OSError:
            pass
        emit_signal(self.ended, code, message)
