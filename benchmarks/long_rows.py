"""The synthetic long row of ``long_context.py`` and ``unsloth_long.py`` (torch only, no project import, so that the
Unsloth script can use it under its own trl pin)."""

from __future__ import annotations

PROMPT_SHARE = 0.10  # the first 10 % of the row is prompt (no loss)


def long_row(length: int, vocab: int, seed: int = 0) -> dict:
    """One row of ``length`` tokens: a prompt (no loss) and a continuation whose next token is a fixed permutation
    of the previous one (learnable), as in throughput.py's rows."""
    import torch

    g = torch.Generator().manual_seed(seed)
    perm = (torch.randperm(vocab - 10, generator=g) + 10).tolist()
    ids = [int(torch.randint(10, vocab, (1,), generator=g))]
    for _ in range(length - 1):
        ids.append(perm[ids[-1] - 10])
    prompt = int(length * PROMPT_SHARE)
    return {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}
