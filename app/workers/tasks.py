"""The jobs the workers run: plain functions over core (no Qt), so they are easy to test and reason about."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.config import RunConfig
from core.data import NormalizedDataset, load_raw_dataset, normalize_dataset
from core.pipeline import RowResult, RunData, build_rows, open_run, open_tokenizer
from core.templates import TemplateError, TrainingTemplate
from core.training.models import ModelError
from resources import resolve_resource_path

Progress = Callable[[int, int], None]


@dataclass
class LoadedRun:
    """What a load produced. ``run`` is None when the data loaded but the model, template or format did not
    work out; ``error`` then says why and ``dataset`` (when the format was understood) still shows the rows."""

    config: RunConfig
    run: RunData | None
    dataset: NormalizedDataset | None
    raw_columns: list[str]
    raw_rows: int
    error: str | None = None
    error_kind: str | None = None  # "model" | "template" | "format"
    tokenizer: Any = None
    tokenizer_notes: list[str] = field(default_factory=list)
    training: TrainingTemplate | None = None
    training_error: str | None = None


@dataclass
class RowView:
    """One row built for display with a given ``train_on`` / ``max_length``."""

    row: int
    result: RowResult
    train_on: str
    max_length: int | None
    parity: str | None = None
    parity_checked: bool = False
    # (training text, the prompt at inference before the final answer, how they differ): core.templates
    inference: tuple[str, str, str] | None = None


def effective_config(cfg: RunConfig) -> RunConfig:
    """A copy with the default ``resources/…`` data path mapped to the installed file."""
    out = copy.deepcopy(cfg)
    out.data.path = resolve_resource_path(str(out.data.path))
    return out


def load_run(cfg: RunConfig, tokenizer: Any = None, tokenizer_notes: list[str] | None = None,
             progress: Progress | None = None) -> LoadedRun:
    """Load data and tokenizer for ``cfg`` (reusing ``tokenizer`` when given). Raises DataError only when the
    file itself cannot be read; model, template and format trouble come back in ``LoadedRun.error``."""
    from core.data import DataError

    cfg = effective_config(cfg)
    raw = load_raw_dataset(cfg.data.path, progress=progress)
    columns = list(raw.columns)
    notes = list(tokenizer_notes or [])

    def data_only(message: str, kind: str) -> LoadedRun:
        try:
            dataset = normalize_dataset(raw, cfg.data.format, cfg.data.columns or None,
                                        cfg.data.placeholders or None, progress, roles=cfg.data.roles or None)
        except DataError:
            dataset = None
        return LoadedRun(cfg, None, dataset, columns, len(raw.rows), message, kind, tokenizer, notes)

    if tokenizer is None:
        try:
            tokenizer, notes = open_tokenizer(cfg)
        except ModelError as exc:
            return data_only(str(exc), "model")
    try:
        run = open_run(cfg, progress=progress, tokenizer=tokenizer)
    except TemplateError as exc:
        return data_only(str(exc), "template")
    except DataError as exc:
        return LoadedRun(cfg, None, None, columns, len(raw.rows), str(exc), "format", tokenizer, notes)
    run.notes = notes + [n for n in run.notes if n not in notes]
    loaded = LoadedRun(cfg, run, run.dataset, columns, len(raw.rows), tokenizer=tokenizer, tokenizer_notes=notes)
    if run.template is not None and run.dataset.format != "text":
        try:
            loaded.training = run.builder.training_template  # decided once; imports TRL on first use
        except Exception as exc:  # shown on the Template page; rows report their own problems
            loaded.training_error = str(exc)
    return loaded


def with_builder(run: RunData, builder: Any) -> RunData:
    return dataclasses.replace(run, builder=builder)


def build_row(run: RunData, builder: Any, row: int, parity: bool = True) -> RowView:
    """Build one row exactly as training will (through core's ExampleBuilder)."""
    from core.audit import inference_parity

    local = with_builder(run, builder)
    for attempt in range(3):
        try:
            result = next(build_rows(local, [row], with_display=True))
            break
        except RuntimeError as exc:  # the Rust tokenizer refuses a concurrent borrow while the audit runs
            if "borrow" not in str(exc).lower() or attempt == 2:
                raise
    view = RowView(row, result, builder.train_on, builder.max_length)
    if parity and result.built is not None and result.built.kind == "conversation":
        try:
            view.parity = inference_parity(local, row)
        except Exception as exc:  # never hide the row because the parity probe failed
            view.parity = f"the parity check could not run: {exc}"
        view.parity_checked = True
        example = local.dataset.examples[row] or {}
        if local.template is not None and isinstance(example.get("messages"), list):
            from core.templates import inference_vs_training

            try:
                view.inference = inference_vs_training(local.tokenizer, local.template, example["messages"],
                                                       example.get("tools"))
            except Exception:  # noqa: BLE001 - a template that cannot render this row is reported by the builder
                view.inference = None
    return view


def audit(run: RunData, builder: Any, progress: Progress | None = None) -> Any:
    from core.audit import audit_run

    return audit_run(with_builder(run, builder), progress=progress)
