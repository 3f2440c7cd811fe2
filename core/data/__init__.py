"""Dataset loading, format detection, normalisation to TRL's formats, and row validation.

Qt-free and light to import: ``datasets`` and ``pyarrow`` are imported only inside the functions
that read Parquet, Arrow, saved folders or the Hub.

Typical use::

    raw = load_raw_dataset("data/train.jsonl")
    ds = normalize_dataset(raw, placeholders={"name": "Ada"})
    for problem in ds.problems:
        print(problem)          # data/train.jsonl:17: row 16: messages[2].role: role 'x' is not ...
    train_rows, eval_rows = split_eval(ds, 0.05, seed=42)
"""

from core.data.formats import FORMATS, FormatGuess, NormalizedDataset, detect_format, normalize_dataset
from core.data.loading import RawDataset, load_raw_dataset
from core.data.problems import DataError, RowProblem, summarize_problems
from core.data.splitting import split_eval

__all__ = [
    "FORMATS",
    "DataError",
    "FormatGuess",
    "NormalizedDataset",
    "RawDataset",
    "RowProblem",
    "detect_format",
    "load_raw_dataset",
    "normalize_dataset",
    "split_eval",
    "summarize_problems",
]
