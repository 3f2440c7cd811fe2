"""Evaluate a finished run: for each evaluation example generate the base and the tuned answer (greedy), and
measure the eval loss and perplexity of the tuned (and base) model on exactly the labels training used.

Writes ``<run>/evaluation.jsonl`` (one row per example: prompt, reference, base, tuned, per-row losses) and
``<run>/evaluation.json`` (the summary), each atomically (temporary file + rename): a cancelled or failed
evaluation leaves the previous files untouched.

The evaluation examples are the run's eval split (``data.eval_path`` / ``data.eval_fraction``, built by
:func:`core.pipeline.build_training_rows` exactly as in training); a run without one evaluates ``sample_size``
training rows drawn with the run's seed (and says so in the summary).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Progress = Callable[[int, int], None]
EVALUATION_FILE = "evaluation.jsonl"
SUMMARY_FILE = "evaluation.json"


class EvaluationCancelled(Exception):
    """The caller cancelled; nothing was written."""


class EvaluationError(Exception):
    """The evaluation cannot run; the message says why."""


@dataclass
class EvaluationSummary:
    run_dir: str
    rows: int
    source: str  # "eval split" | "sampled training rows"
    eval_loss: float | None
    perplexity: float | None
    base_eval_loss: float | None
    base_perplexity: float | None
    supervised_tokens: int
    max_new_tokens: int
    seconds: float
    rows_file: str
    device: str
    dtype: str
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _split_example(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, reference ids): the prompt is everything before the LAST trained span (earlier turns stay
    as history), the reference is that span. Plain-text rows trained on every token are split in half."""
    trained = [i for i, label in enumerate(labels) if label != -100]
    if not trained:
        return input_ids, []
    end = trained[-1] + 1
    start = end - 1
    while start > 0 and labels[start - 1] != -100:
        start -= 1
    if start == 0 or start <= 1 and len(input_ids) > 2:  # no prompt (text rows): continue from the first half
        start = max(1, len(input_ids) // 2)
    return input_ids[:start], input_ids[start:end]


def _select_rows(run: Any, sample_size: int, seed: int) -> tuple[list[tuple[list[int], list[int]]], str]:
    from core.pipeline import build_training_rows

    rows = build_training_rows(run)
    if rows.eval:
        return (rows.eval[:sample_size] if sample_size > 0 else rows.eval), "eval split"
    if not rows.train:
        raise EvaluationError("no row of this run's data can be built; run `sft-studio audit` on the run file")
    chosen = random.Random(seed).sample(range(len(rows.train)), min(max(sample_size, 1), len(rows.train)))
    return [rows.train[i] for i in sorted(chosen)], "sampled training rows"


def _losses(model: Any, examples: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str,
            batch_size: int, check: Callable[[], None]) -> list[tuple[float, int]]:
    """Per example: (summed token NLL over the trained labels, number of trained tokens) — the shifted
    causal-LM loss transformers computes, summed instead of averaged so that rows combine exactly."""
    import torch
    import torch.nn.functional as F

    out: list[tuple[float, int]] = []
    for start in range(0, len(examples), batch_size):
        check()
        batch = examples[start:start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (i, lab) in enumerate(batch):
            ids[row, :len(i)] = torch.tensor(i)
            labels[row, :len(lab)] = torch.tensor(lab)
            mask[row, :len(i)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
        nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
        for row in range(len(batch)):
            count = int((shift_labels[row] != -100).sum())
            out.append((float(nll[row].sum()), count))
    return out


def _generate(model: Any, tokenizer: Any, prompts: Sequence[list[int]], max_new_tokens: int, device: str,
              batch_size: int, check: Callable[[], None], cancelled: Callable[[], bool],
              step: Callable[[int], None]) -> list[str]:
    """Greedy answers, left-padded batches."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancel(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), cancelled(), dtype=torch.bool, device=input_ids.device)

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        check()
        batch = prompts[start:start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, p in enumerate(batch):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 temperature=None, top_p=None, top_k=None, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, eos_token_id=eos,
                                 stopping_criteria=StoppingCriteriaList([Cancel()]))
        check()
        for row in range(len(batch)):
            answers.append(tokenizer.decode(out[row, width:].tolist(), skip_special_tokens=True).strip())
        step(len(batch))
    return answers


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _ppl(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(loss) if loss < 700 else math.inf


def evaluate_run(run_dir: str | os.PathLike[str], *, max_new_tokens: int = 128, sample_size: int = 20,
                 batch_size: int = 8, device: str = "auto", dtype: str = "auto", progress: Progress | None = None,
                 cancelled: Callable[[], bool] | None = None) -> EvaluationSummary:
    """Generate base and tuned answers for the evaluation examples and compute eval loss and perplexity;
    writes ``evaluation.jsonl`` and ``evaluation.json`` into the run directory. ``sample_size`` caps the
    rows (0 = the whole eval split). ``progress(done, total)`` counts answers; ``cancelled()`` returning True
    stops at the next batch (or token) and raises :class:`EvaluationCancelled` without writing anything."""
    from core.export import (
        ExportError,
        inference_device,
        inference_dtype,
        load_run_model,
        load_run_tokenizer,
        open_run_dir,
    )
    from core.pipeline import open_run

    started = time.time()
    is_cancelled = cancelled or (lambda: False)

    def check() -> None:
        if is_cancelled():
            raise EvaluationCancelled("evaluation cancelled")

    try:
        run = open_run_dir(run_dir)
        device = inference_device(device)
        dtype = inference_dtype(device, dtype)
    except ExportError as exc:
        raise EvaluationError(str(exc)) from None
    config = run.config
    from resources import resolve_resource_path

    config.data.path = resolve_resource_path(config.data.path)
    try:
        data = open_run(config)
    except Exception as exc:  # noqa: BLE001 - DataError / ModelError / TemplateError carry the message
        raise EvaluationError(f"cannot read the run's data: {exc}") from None
    examples, source = _select_rows(data, sample_size, config.training.seed)
    check()
    splits = [_split_example(ids, labels) for ids, labels in examples]
    total = 2 * len(examples)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    try:
        model = load_run_model(run, device, dtype, with_adapter=True)
        tokenizer = load_run_tokenizer(run)
        base_model = None if not run.is_full_model else load_run_model(run, device, dtype, with_adapter=False)
    except ExportError as exc:
        raise EvaluationError(str(exc)) from None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    prompts = [p for p, _ in splits]
    tuned_answers = _generate(model, tokenizer, prompts, max_new_tokens, device, batch_size, check, is_cancelled, step)
    tuned_losses = _losses(model, examples, pad, device, batch_size, check)
    if base_model is not None:
        base_answers = _generate(base_model, tokenizer, prompts, max_new_tokens, device, batch_size, check,
                                 is_cancelled, step)
        base_losses = _losses(base_model, examples, pad, device, batch_size, check)
    else:
        with model.disable_adapter():
            base_answers = _generate(model, tokenizer, prompts, max_new_tokens, device, batch_size, check,
                                     is_cancelled, step)
            base_losses = _losses(model, examples, pad, device, batch_size, check)
    check()

    def mean(losses: list[tuple[float, int]]) -> float | None:
        count = sum(c for _, c in losses)
        return sum(s for s, _ in losses) / count if count else None

    lines = []
    for k, ((prompt, reference), t_ans, b_ans, (t_sum, t_n), (b_sum, b_n)) in enumerate(
            zip(splits, tuned_answers, base_answers, tuned_losses, base_losses, strict=True)):
        lines.append(json.dumps({
            "index": k,
            "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
            "reference": tokenizer.decode(reference, skip_special_tokens=True).strip(),
            "base": b_ans,
            "tuned": t_ans,
            "tuned_loss": t_sum / t_n if t_n else None,
            "base_loss": b_sum / b_n if b_n else None,
            "supervised_tokens": t_n,
        }, ensure_ascii=False))
    loss, base_loss = mean(tuned_losses), mean(base_losses)
    notes = []
    if source != "eval split":
        notes.append("the run has no eval split (data.eval_path / data.eval_fraction): these rows were trained on, "
                     "so the loss is a training loss, not a held-out one")
    summary = EvaluationSummary(
        run_dir=str(run.run_dir), rows=len(lines), source=source, eval_loss=loss, perplexity=_ppl(loss),
        base_eval_loss=base_loss, base_perplexity=_ppl(base_loss),
        supervised_tokens=sum(c for _, c in tuned_losses), max_new_tokens=max_new_tokens,
        seconds=round(time.time() - started, 2), rows_file=str(run.run_dir / EVALUATION_FILE), device=device,
        dtype=dtype, notes=notes,
    )
    _write_atomically(run.run_dir / EVALUATION_FILE, "".join(line + "\n" for line in lines))
    _write_atomically(run.run_dir / SUMMARY_FILE, json.dumps(summary.as_dict(), indent=2, default=str) + "\n")
    return summary


def read_evaluation(run_dir: str | os.PathLike[str]) -> tuple[list[dict], dict | None]:
    """The rows and summary of a previous evaluation (empty / None when there is none)."""
    run = Path(run_dir)
    rows: list[dict] = []
    path = run / EVALUATION_FILE
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
    summary_path = run / SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    return rows, summary
