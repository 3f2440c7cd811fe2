"""Dataset + template checks without training: row problems, token lengths against ``max_length``,
truncation, rows with nothing to train, the trained-token share, and the inference/training parity of
the chat template. Used by ``sft-studio audit`` and the app's Data page.

What makes a report not clean (``sft-studio audit`` exits 1): rows that will not be trained, row errors,
rows whose trained answer loses its end to truncation (each one is also a row problem, so the row is not
"ok" anywhere), problems of the dataset as a whole (a column mapping that makes most rows echo their
prompt or leaves nothing to train), and template parity issues. Warnings and notes alone keep it clean."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from core.data import RowProblem
from core.pipeline import RunData, build_rows

Progress = Callable[[int, int], None]


@dataclass
class ParityIssue:
    row: int
    message: str


@dataclass
class AuditReport:
    source: str
    format: str
    rows: int
    trainable_rows: int
    problems: list[RowProblem]
    dropped: list[tuple[int, int | None, str]]  # (row, line, reason) for rows that will not be trained
    template: str | None
    mask_method: str | None
    train_on: str
    max_length: int
    lengths: list[int]  # tokens per built row, before truncation
    truncated_rows: list[int]
    eos_lost_rows: list[int]  # trained rows whose trained answer loses its end (and end-of-turn token) to truncation
    trained_tokens: int
    total_tokens: int  # after truncation
    parity: list[ParityIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dataset_problems: list[str] = field(default_factory=list)  # problems of the data as a whole (column mapping)
    eos_lost_tokens: list[int] = field(default_factory=list)  # tokens of each eos_lost_rows row, before truncation
    masked_by: dict[str, int] = field(default_factory=dict)  # mask rule -> tokens it took out of the loss (trained rows)
    row_methods: dict[str, list[int]] = field(default_factory=dict)  # how the rows were read: method -> rows
    reasoning: str = "train"

    @property
    def errors(self) -> list[RowProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[RowProblem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def clean(self) -> bool:
        return (
            not self.dropped
            and not self.errors
            and not self.eos_lost_rows
            and not self.parity
            and not self.dataset_problems
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = [
            {"row": p.row, "line": p.line, "file": p.file, "field": p.field, "message": p.message, "severity": p.severity}
            for p in self.problems
        ]
        data["dropped"] = [{"row": r, "line": line, "reason": reason} for r, line, reason in self.dropped]
        data["length_stats"] = length_stats(self.lengths)
        data["trained_share"] = self.trained_share
        data.pop("lengths")
        data["clean"] = self.clean
        return data

    @property
    def trained_share(self) -> float:
        return self.trained_tokens / self.total_tokens if self.total_tokens else 0.0


def length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 1),
    }


EOS_LOST = "truncated at max_length"


def _answer_field(run: RunData) -> str:
    """The column that holds what is trained (where a cut-off answer is)."""
    columns, fmt = run.dataset.columns, run.dataset.format
    key = {"text": "text", "prompt_completion": "completion", "alpaca": "output"}.get(fmt)
    if key is None:
        key = "messages" if "messages" in columns else "conversations"
    return columns.get(key, key)


def audit_run(run: RunData, progress: Progress | None = None, parity_sample: int = 50) -> AuditReport:
    """Build every row (exactly as training will) and collect what a user must know before training."""
    problems: list[RowProblem] = []
    answer_field = _answer_field(run)
    max_length = run.builder.max_length
    dropped: list[tuple[int, int | None, str]] = []
    lengths, truncated, eos_lost, eos_tokens = [], [], [], []
    trained_tokens = total_tokens = trainable = 0
    masked_by: dict[str, int] = {}
    row_methods: dict[str, list[int]] = {}
    parity: list[ParityIssue] = []
    checked = 0
    for result in build_rows(run, with_display=False, progress=progress):
        problems.extend(result.problems)
        reason = result.dropped
        built = result.built
        if built is not None:
            lengths.append(built.n_tokens)
            row_methods.setdefault(built.method, []).append(result.row)
            for rule, count in built.masked_by.items():
                masked_by[rule] = masked_by.get(rule, 0) + count
            if built.truncated:
                truncated.append(result.row)
            if built.eos_lost and reason is None:  # a row with nothing left to train is reported as dropped
                eos_lost.append(result.row)
                eos_tokens.append(built.n_tokens)
                problems.append(
                    RowProblem(
                        result.row,
                        answer_field,
                        f"{EOS_LOST}={max_length}: the end of the trained answer and its end-of-turn token are cut "
                        f"off (the row has {built.n_tokens} tokens), so the model does not learn to stop here; "
                        f"raise data.max_length to {built.n_tokens} or more, or shorten the row",
                        run.source_file,
                        result.line,
                        "warning",
                    )
                )
            for note in built.notes:
                problems.append(RowProblem(result.row, "", note, run.source_file, result.line, "warning"))
        if len(parity) < 5 and checked < parity_sample:
            example = run.dataset.examples[result.row]
            if example is not None and "messages" in example:
                checked += 1
                issue = inference_parity(run, result.row)
                if issue:
                    parity.append(ParityIssue(result.row, issue))
        if reason is not None:
            dropped.append((result.row, result.line, reason))
            continue
        assert built is not None
        trainable += 1
        trained_tokens += built.n_trained
        total_tokens += len(built.input_ids)
    method = None
    if run.template is not None and run.builder.train_on in ("auto", "assistant") and run.dataset.format != "text":
        try:
            method = run.builder.training_template.method
        except Exception:  # reported per row already
            method = None
    return AuditReport(
        source=run.source_file,
        format=run.dataset.format,
        rows=len(run.dataset.examples),
        trainable_rows=trainable,
        problems=problems,
        dropped=dropped,
        template=run.template.name if run.template else None,
        mask_method=method,
        train_on=run.builder.train_on,
        max_length=run.builder.max_length or 0,
        lengths=lengths,
        truncated_rows=truncated,
        eos_lost_rows=eos_lost,
        trained_tokens=trained_tokens,
        total_tokens=total_tokens,
        parity=parity,
        notes=list(run.notes) + [n for n in run.dataset.notes if n not in run.notes],
        dataset_problems=list(run.dataset.dataset_problems),
        eos_lost_tokens=eos_tokens,
        masked_by=masked_by,
        row_methods=row_methods,
        reasoning=getattr(run.builder, "reasoning", "train"),
    )


def inference_parity(run: RunData, row: int) -> str | None:
    """At inference the model sees the conversation up to the last answer rendered with the generation
    prompt; those tokens must be a prefix of the training tokens. Returns how they diverge, or None."""
    example = run.dataset.examples[row]
    if not example or "messages" not in example or run.template is None:
        return None
    messages = example["messages"]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        return None
    tok = run.tokenizer
    try:
        prompt = tok.apply_chat_template(messages[:last], tools=example.get("tools"), chat_template=run.template.text,
                                         tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages, tools=example.get("tools"), chat_template=run.template.text,
                                       tokenize=False)
    except Exception:
        return None  # the row's own problem is reported by the builder
    if not full.startswith(prompt):
        k = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), min(len(prompt), len(full)))
        kind = "whitespace drift" if prompt[k:k + 1].isspace() or full[k:k + 1].isspace() else "different text"
        return (f"{kind}: the inference prompt differs from the training text at character {k} "
                f"({prompt[k:k + 25]!r} vs {full[k:k + 25]!r})")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tok(full, add_special_tokens=False)["input_ids"]
    if f_ids[: len(p_ids)] != p_ids:
        k = next(i for i, (a, b) in enumerate(zip(p_ids, f_ids, strict=False)) if a != b) if any(
            a != b for a, b in zip(p_ids, f_ids, strict=False)) else len(p_ids) - 1
        return (f"a token merges across the prompt/answer boundary: at inference token {k} is "
                f"{tok.decode(p_ids[k:k + 1])!r}, in training {tok.decode(f_ids[k:k + 1])!r}")
    bos = tok.bos_token
    if bos and full.startswith(bos + bos):
        return f"the BOS token {bos!r} appears twice at the start (the template writes it and so does the tokenizer)"
    return None


def format_report(report: AuditReport, limit: int = 30) -> str:
    """Human-readable audit summary."""
    lines = [f"dataset   {report.source}", f"format    {report.format}, {report.rows} rows, {report.trainable_rows} will be trained"]
    if report.template:
        method = f", assistant tokens found by {report.mask_method}" if report.mask_method else ""
        lines.append(f"template  {report.template}{method}; train_on: {report.train_on}")
    stats = length_stats(report.lengths)
    if stats:
        lines.append(
            f"tokens    min {stats['min']}, median {stats['median']:g}, p95 {stats['p95']}, max {stats['max']} "
            f"(max_length {report.max_length})"
        )
    lines.append(f"truncated {len(report.truncated_rows)} rows longer than max_length; "
                 f"{len(report.eos_lost_rows)} of them lose the end of a trained answer")
    lines.append(f"trained   {report.trained_tokens} of {report.total_tokens} tokens ({100 * report.trained_share:.1f}%) carry loss")
    if len(report.row_methods) > 1 or "render-search" in report.row_methods:
        from core.masks import METHODS

        read = [f"{len(rows)} by {METHODS.get(m, m)}" + (f" (rows {_row_list(rows)})" if m == "render-search" else "")
                for m, rows in sorted(report.row_methods.items(), key=lambda kv: -len(kv[1]))]
        lines.append("read      " + "; ".join(read))
    if report.masked_by:
        from core.masks import REASONS

        lines.append("masked    " + "; ".join(f"{count} tokens: {REASONS.get(rule, rule)}"
                                             for rule, count in report.masked_by.items()))
    for note in report.notes:
        lines.append(f"note      {note}")
    for problem in report.dataset_problems:
        lines.append(f"problem   {problem}")
    for issue in report.parity:
        lines.append(f"parity    row {issue.row}: {issue.message}")
    if report.eos_lost_rows:
        n = len(report.eos_lost_rows)
        line_of = {p.row: p.line for p in report.problems if p.message.startswith(EOS_LOST)}
        lines.append(f"\n{n} row{'s' if n != 1 else ''} lose the end of a trained answer to truncation at max_length "
                     f"{report.max_length} (the model does not learn to stop on them); "
                     f"data.max_length {max(report.eos_lost_tokens)} keeps them whole:")
        for row, tokens in list(zip(report.eos_lost_rows, report.eos_lost_tokens, strict=True))[:limit]:
            line = line_of.get(row)
            where = f"{report.source}:{line}: " if line else f"{report.source}: "
            lines.append(f"  {where}row {row}: {tokens} tokens")
        if n > limit:
            lines.append(f"  … and {n - limit} more (use --json for all)")
    if report.dropped:
        lines.append(f"\n{len(report.dropped)} rows will NOT be trained:")
        for row, line, reason in report.dropped[:limit]:
            where = f"{report.source}:{line}: " if line else f"{report.source}: "
            lines.append(f"  {where}row {row}: {reason}")
        if len(report.dropped) > limit:
            lines.append(f"  … and {len(report.dropped) - limit} more (use --json for all)")
    warnings = [p for p in report.warnings if not p.message.startswith(EOS_LOST)]
    if warnings:
        lines.append(f"\n{len(warnings)} warnings:")
        for p in warnings[:limit]:
            lines.append(f"  {p}")
        if len(warnings) > limit:
            lines.append(f"  … and {len(warnings) - limit} more (use --json for all)")
    lines.append("\nclean: nothing to fix" if report.clean else "\nproblems found (exit code 1)")
    return "\n".join(lines)


def _row_list(rows: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", … {len(rows) - limit} more" if len(rows) > limit else "")
