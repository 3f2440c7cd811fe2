"""Helpers for comparing the studio's labels with TRL's own dataset preparation (preview = training, proven)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

IGNORE = -100


def trl_prepared(model_dir: Path, rows: list[dict], max_length: int = 4096, **config: Any) -> list[tuple[list, list]]:
    """What TRL trains on: the ``train_dataset`` an SFTTrainer prepares from the raw rows."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(
        output_dir=str(model_dir / "trl-out"), use_cpu=True, bf16=False, report_to=[], max_length=max_length,
        gradient_checkpointing=False, **config,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return [(list(r["input_ids"]), list(r["labels"])) for r in trainer.train_dataset]


def trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of trained positions as (start, stop)."""
    runs, start = [], None
    for k, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and start is None:
            start = k
        elif label == IGNORE and start is not None:
            runs.append((start, k))
            start = None
    return runs


def without_runs(labels: list[int], drop: set[int]) -> list[int]:
    """``labels`` with the trained runs numbered in ``drop`` (0-based, in order) set to -100."""
    out = list(labels)
    for n, (a, b) in enumerate(trained_runs(labels)):
        if n in drop:
            out[a:b] = [IGNORE] * (b - a)
    return out


def decoded_runs(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    return [tokenizer.decode(ids[a:b]) for a, b in trained_runs(labels)]
