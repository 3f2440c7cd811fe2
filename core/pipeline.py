"""From a run file to the examples the trainer will see: load and normalise the data, load the tokenizer,
resolve the chat template, and build every example through :class:`core.masks.ExampleBuilder`.

``preview``, ``audit``, ``train`` and the GUI's token view all go through :func:`open_run` and
:func:`build_rows`, so they cannot disagree about what a row becomes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.data import NormalizedDataset, RawDataset, RowProblem, load_raw_dataset, normalize_dataset
from core.masks import BuiltExample, ExampleBuilder, MaskError
from core.templates import ResolvedTemplate, TemplateError, missing_special_tokens, resolve_chat_template

Progress = Callable[[int, int], None]


@dataclass
class RunData:
    """Everything needed to build examples for one run."""

    config: RunConfig
    dataset: NormalizedDataset
    tokenizer: Any
    template: ResolvedTemplate | None
    builder: ExampleBuilder
    source_file: str
    lines: list[int | None]
    notes: list[str] = field(default_factory=list)  # things the user should know (pad token set, …)
    raw_columns: list[str] = field(default_factory=list)  # the file's own column names (for column mapping)


@dataclass
class RowResult:
    """One input row: either built, or why not (problems carry file/line/field)."""

    row: int
    line: int | None
    built: BuiltExample | None
    problems: list[RowProblem]

    @property
    def dropped(self) -> str | None:
        """Why this row will not be trained, or None when it will."""
        errors = [p for p in self.problems if p.severity == "error"]
        if errors:
            return "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in errors)
        if self.built is None:
            return "not built"
        return self.built.dropped


def open_tokenizer(config: RunConfig) -> tuple[Any, list[str]]:
    """Load the run's tokenizer; returns it with notes for the user."""
    from core.training.models import load_tokenizer, source_for

    tokenizer = load_tokenizer(source_for(config.model))
    notes = []
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        notes.append(f"the tokenizer has no pad token; using the EOS token {tokenizer.eos_token!r} for padding (as TRL does)")
    return tokenizer, notes


def open_run(
    config: RunConfig, progress: Progress | None = None, tokenizer: Any = None, raw: RawDataset | None = None
) -> RunData:
    """Load data and tokenizer for ``config``. Raises DataError / ModelError / TemplateError for input that
    cannot be used at all (row-level problems are kept in the dataset instead). ``raw`` reuses a dataset
    the caller already read (the app reads it once to show its columns); ``tokenizer`` likewise."""
    if raw is None:
        from resources import resolve_resource_path

        raw = load_raw_dataset(resolve_resource_path(config.data.path), progress=progress)
    dataset = normalize_dataset(
        raw,
        format=config.data.format,
        columns=config.data.columns or None,
        placeholders=config.data.placeholders or None,
        progress=progress,
        roles=config.data.roles or None,
    )
    notes: list[str] = []
    if tokenizer is None:
        tokenizer, notes = open_tokenizer(config)
    template: ResolvedTemplate | None = None
    needs_template = dataset.format != "text" and not (
        dataset.format == "prompt_completion" and _string_prompts(dataset.examples)
    )
    try:
        template = resolve_chat_template(tokenizer, config.model.chat_template)
    except TemplateError:
        if needs_template:
            raise
    if template is not None:
        missing = missing_special_tokens(tokenizer, template)
        if missing:
            notes.append(
                f"the vocabulary has no single tokens for {', '.join(missing)} used by the '{template.name}' template; "
                "they are split into pieces the model has never seen together"
            )
    builder = ExampleBuilder(
        tokenizer, template, config.data.train_on, config.data.max_length, config.data.reasoning
    )
    return RunData(
        config, dataset, tokenizer, template, builder, str(config.data.path), list(raw.lines), notes, list(raw.columns)
    )


def _string_prompts(examples: Sequence[dict | None]) -> bool:
    first = next((e for e in examples if e is not None), None)
    return first is not None and isinstance(first.get("prompt"), str)


def build_rows(
    run: RunData,
    rows: Sequence[int] | None = None,
    with_display: bool = True,
    progress: Progress | None = None,
) -> Iterator[RowResult]:
    """Build the given rows (default: all) in file order."""
    by_row: dict[int, list[RowProblem]] = {}
    for problem in run.dataset.problems:
        by_row.setdefault(problem.row, []).append(problem)
    indices = range(len(run.dataset.examples)) if rows is None else rows
    total = len(indices)
    for done, i in enumerate(indices):
        if progress is not None and done % 200 == 0:
            progress(done, total)
        example = run.dataset.examples[i]
        problems = list(by_row.get(i, []))
        line = run.lines[i] if i < len(run.lines) else None
        built = None
        if example is not None:
            try:
                built = run.builder.build(example, with_display=with_display)
            except MaskError as exc:
                problems.append(RowProblem(row=i, field=exc.field, message=str(exc), file=run.source_file, line=line))
        yield RowResult(i, line, built, problems)
    if progress is not None:
        progress(total, total)


def resolve_base_dir(config_path: str | Path | None) -> Path | None:
    return Path(config_path).resolve().parent if config_path else None


@dataclass
class TrainingRows:
    """The examples handed to the trainer, and the rows that will not be trained (reported, never silent)."""

    train: list[tuple[list[int], list[int]]]
    eval: list[tuple[list[int], list[int]]]
    dropped: list[tuple[str, RowResult]]  # (source file, result) for rows that will not be trained


def build_training_rows(run: RunData, progress: Progress | None = None) -> TrainingRows:
    """Build every training (and evaluation) example exactly as the preview does. The evaluation rows come
    from ``data.eval_path`` (a second file, same format detection) or a seeded ``data.eval_fraction`` split."""
    from core.data import split_eval

    config = run.config
    train_ids: Sequence[int] = range(len(run.dataset.examples))
    eval_run: RunData | None = None
    eval_ids: Sequence[int] = []
    if config.data.eval_path:
        from resources import resolve_resource_path

        eval_config = _with_data_path(config, resolve_resource_path(config.data.eval_path))
        eval_run = open_run(eval_config, tokenizer=run.tokenizer)
        eval_ids = range(len(eval_run.dataset.examples))
    elif config.data.eval_fraction > 0:
        train_ids, eval_ids = split_eval(run.dataset, config.data.eval_fraction, config.training.seed)
        eval_run = run
    out = TrainingRows([], [], [])
    for target, source, ids in ((out.train, run, train_ids), (out.eval, eval_run, eval_ids)):
        if source is None:
            continue
        for result in build_rows(source, ids, with_display=False, progress=progress):
            if result.dropped is None and result.built is not None:
                target.append((result.built.input_ids, result.built.labels))
            else:
                out.dropped.append((source.source_file, result))
    return out


def _with_data_path(config: RunConfig, path: str) -> RunConfig:
    import copy

    other = copy.deepcopy(config)
    other.data.path = path
    other.data.eval_path = None
    return other
