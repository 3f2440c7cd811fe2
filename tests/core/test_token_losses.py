"""Per-token losses (``sft-studio losses``, core/token_losses.py) on a tiny trained run: equal to a plain transformers
forward pass with the same labels, different per model, cached per (row, model) and keyed by the row's labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loss_run import make_loss_run

from core.token_losses import (
    LossError,
    compute_losses,
    parse_rows,
    resolve_model,
    row_fingerprint,
    run_models,
)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, tiny_model_factory) -> Path:
    return make_loss_run(tmp_path_factory, tiny_model_factory)


@pytest.fixture
def config(run_file):
    from core.config import load_run_config

    return load_run_config(run_file)


def _scores(config, checkpoints, rows=None, **kw) -> list[dict]:
    out: list[dict] = []
    compute_losses(config, checkpoints, rows, emit=out.append, device="cpu", **kw)
    return out


def _reference_model(config, folder: str | None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(config.model.name_or_path, dtype=torch.float32)
    if folder is not None:
        model = PeftModel.from_pretrained(model, folder)
    return model.eval()


def test_losses_equal_a_plain_forward_pass_with_the_same_labels(config):
    import torch
    import torch.nn.functional as F

    from core.pipeline import build_rows, open_run

    run_dir = Path(config.output_dir)
    results = _scores(config, ["adapter"], "0-4", batch_size=3)  # padded batches of rows of different lengths
    assert [r["row"] for r in results] == [0, 1, 2, 3, 4]
    built = {r.row: r.built for r in build_rows(open_run(config), range(5))}  # what preview shows
    model = _reference_model(config, str(run_dir / "adapter"))
    for result in results:
        b = built[result["row"]]
        assert result["fp"] == row_fingerprint(b.input_ids, b.labels) and result["n_tokens"] == len(b.input_ids)
        ids, labels = torch.tensor([b.input_ids]), torch.tensor([b.labels])
        with torch.no_grad():
            out = model(input_ids=ids, labels=labels)
        tokens = result["tokens"]
        assert [t["index"] for t in tokens] == [t for t in range(1, len(b.labels)) if b.labels[t] != -100]
        assert result["n_trained"] == len(tokens) > 0
        # the mean of the per-token losses is the model's own loss
        mean = sum(t["loss"] for t in tokens) / len(tokens)
        assert mean == pytest.approx(float(out.loss), abs=1e-4)
        assert result["mean_loss"] == pytest.approx(float(out.loss), abs=1e-4)
        # each token: cross-entropy of logits[t-1] against labels[t]; its probability; a sorted top-5
        logp = F.log_softmax(out.logits[0].float(), dim=-1)
        for t in tokens:
            k = t["index"]
            assert t["id"] == b.labels[k] and t["token"] == b.tokens[k].text
            manual = float(F.cross_entropy(out.logits[0, k - 1][None], labels[0, k][None]))
            assert t["loss"] == pytest.approx(manual, abs=1e-4)
            assert t["prob"] == pytest.approx(float(logp[k - 1, b.labels[k]].exp()), rel=1e-4, abs=1e-7)
            probs = [c["prob"] for c in t["top"]]
            assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
            assert t["prob"] <= probs[0] + 1e-6
            top_ids = logp[k - 1].topk(5).indices.tolist()
            assert [c["id"] for c in t["top"]] == top_ids
            if t["id"] in top_ids:
                assert t["prob"] == pytest.approx(probs[top_ids.index(t["id"])], rel=1e-5)


def test_full_logits_and_chunked_softmax_give_the_same_numbers(config, monkeypatch):
    import core.token_losses as tl

    reference = _scores(config, ["checkpoint-1"], "2-4", use_cache=False)
    monkeypatch.setattr(tl._Scorer, "KEEP_LOGITS", False)  # an architecture without logits_to_keep
    monkeypatch.setattr(tl, "SOFTMAX_CHUNK", 5)  # long rows: the log-softmax in pieces
    monkeypatch.setattr(tl, "MAX_KEPT_POSITIONS", 30)  # batches cut by scored positions
    other = _scores(config, ["checkpoint-1"], "2-4", use_cache=False)
    assert [r["row"] for r in other] == [2, 3, 4]
    for a, b in zip(reference, other, strict=True):
        assert [t["index"] for t in a["tokens"]] == [t["index"] for t in b["tokens"]]
        assert [t["top"][0]["id"] for t in a["tokens"]] == [t["top"][0]["id"] for t in b["tokens"]]
        for x, y in zip(a["tokens"], b["tokens"], strict=True):
            assert x["loss"] == pytest.approx(y["loss"], abs=1e-4) and x["prob"] == pytest.approx(y["prob"], rel=1e-3)


def test_base_checkpoints_and_adapter_give_their_own_numbers(config):
    import torch

    from core.pipeline import build_rows, open_run

    models = run_models(config)
    assert [m.label for m in models] == ["base", "checkpoint-1", "checkpoint-2", "adapter"]
    assert resolve_model(config, "2") == resolve_model(config, "checkpoint-2") == models[2]
    assert resolve_model(config, str(Path(config.output_dir) / "adapter")) == models[3]
    results = _scores(config, ["base", "checkpoint-1", "adapter"], "1")
    means = {r["model"]: r["mean_loss"] for r in results}
    assert set(means) == {"base", "checkpoint-1", "adapter"}
    assert len({round(v, 4) for v in means.values()}) == 3  # training changed the weights, step by step
    assert means["adapter"] < means["base"]  # two steps on this very data lowered its loss
    # the base under a loaded adapter (disable_adapter) is the plain base model
    b = next(iter(build_rows(open_run(config), [1]))).built
    with torch.no_grad():
        loss = _reference_model(config, None)(input_ids=torch.tensor([b.input_ids]),
                                               labels=torch.tensor([b.labels])).loss
    assert means["base"] == pytest.approx(float(loss), abs=1e-4)


def test_rows_selection_and_bad_input_on_the_command_line(run_file, config, capsys):
    from core.cli import main

    assert parse_rows("2-3", 10) == [2, 3] and parse_rows("7,1-2,7", 10) == [7, 1, 2] and parse_rows(None, 3) == [0, 1, 2]
    assert parse_rows("8-", 10) == [8, 9]
    for bad in ("9-12", "-1", "x", "3-1"):
        with pytest.raises(LossError):
            parse_rows(bad, 10)
    assert main(["losses", "--config", str(run_file), "--checkpoint", "adapter", "--rows", "3,1", "--top-k", "3",
                 "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["row"], r["model"]) for r in lines] == [(3, "adapter"), (1, "adapter")]
    assert all(len(t["top"]) == 3 for r in lines for t in r["tokens"])
    for argv, words in (
        (["--checkpoint", "checkpoint-7"], ["no such checkpoint", "checkpoint-1", "checkpoint-2", "adapter"]),
        (["--checkpoint", str(Path(config.output_dir))], ["holds no PEFT adapter"]),
        (["--rows", "0-99"], ["--rows 0-99", "rows 0 to 9"]),
    ):
        assert main(["losses", "--config", str(run_file), *argv, "--json"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "Traceback" not in captured.err
        err = [line for line in captured.err.splitlines() if line.startswith("error: ")]
        assert len(err) == 1 and all(w in err[0] for w in words), captured.err


def test_a_cache_hit_returns_the_same_numbers_without_loading_a_model(config, monkeypatch):
    import core.export
    from core.token_losses import cache_file, cached_result

    first = _scores(config, ["checkpoint-2"], "5-6")
    path = cache_file(config.output_dir, resolve_model(config, "checkpoint-2"))
    assert path.parent == Path(config.output_dir) / "token_losses" and path.is_file()

    def no_model(*_a, **_k):
        raise AssertionError("a cached result must not load a model")

    monkeypatch.setattr(core.export, "load_run_model", no_model)
    again = _scores(config, ["checkpoint-2"], "5-6")
    assert again == first
    fewer = _scores(config, ["checkpoint-2"], "5", top_k=2)  # a smaller top-k is read from the same cache
    assert [t["top"] for t in fewer[0]["tokens"]] == [t["top"][:2] for t in first[0]["tokens"]]
    assert cached_result(config.output_dir, resolve_model(config, "checkpoint-2"), 5, first[0]["fp"]) == first[0]
    # another mask gives other labels: the cached numbers are not for them
    config.data.train_on = "all"
    with pytest.raises(AssertionError, match="must not load"):
        _scores(config, ["checkpoint-2"], "5")


def test_core_token_losses_imports_no_torch():
    import subprocess
    import sys

    code = "import core.token_losses, core.losses_cli, sys; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
