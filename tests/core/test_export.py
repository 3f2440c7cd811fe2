"""Exports of a finished run on a tiny model: the adapter and the merged model reload with plain PEFT /
transformers and give the same logits; a failed write leaves nothing behind; GGUF and Hub fail clearly."""

from __future__ import annotations

import argparse
import errno
import json
import os
from pathlib import Path

import pytest
import yaml

from core.export import (
    ExportError,
    check_destination,
    export_adapter,
    export_gguf,
    export_merged,
    open_run_dir,
    probe_input_ids,
    push_to_hub,
    staged_folder,
)
from core.training.events import read_events

_RUNS: dict[str, Path] = {}


def make_trained_run(tmp_path_factory, tiny_model_factory, family: str = "qwen2_5") -> Path:
    """A finished 3-step run on a tiny model with an eval split (cached per family for the whole session;
    also used by test_chat.py and test_evaluate.py)."""
    if family in _RUNS:
        return _RUNS[family]
    from core.config import load_run_config
    from core.training.session import run_training

    tmp = tmp_path_factory.mktemp(f"export-run-{family}")
    questions = ["Who are you?", "What is your name?", "hi", "hello", "Introduce yourself."]
    data = tmp / "identity.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{q} ({i})"},
        {"role": "assistant", "content": "I am Studio Helper, the assistant of SFT Studio."},
    ]}) + "\n" for i in range(4) for q in questions))
    cfg = {
        "model": {"name_or_path": str(tiny_model_factory(family))},
        "data": {"path": str(data), "max_length": 128, "eval_fraction": 0.2},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "training": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 0.01, "logging_steps": 1,
                     "save_steps": 3, "seed": 0},
        "output_dir": str(tmp / "run"),
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_training(load_run_config(tmp / "run.yaml"))
    _RUNS[family] = tmp / "run"
    return _RUNS[family]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_factory) -> Path:
    return make_trained_run(tmp_path_factory, tiny_model_factory)


def _base_plus_adapter_logits(run_dir: Path, adapter: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = open_run_dir(run_dir).config
    base = AutoModelForCausalLM.from_pretrained(config.model.name_or_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = probe_input_ids(AutoTokenizer.from_pretrained(adapter))
    with torch.no_grad():
        return model(ids).logits, ids


def test_adapter_export_reloads_with_identical_logits(run_dir, tmp_path):
    import torch

    out = tmp_path / "exports" / "my-adapter"
    result = export_adapter(run_dir, out, device="cpu", dtype="fp32")
    assert result.path == str(out.resolve()) and result.max_abs_diff is not None and result.max_abs_diff < 1e-6
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "README.md"):
        assert (out / name).is_file(), name
    assert set(result.files) == {p.name for p in out.iterdir()}
    expected, ids = _base_plus_adapter_logits(run_dir, run_dir / "adapter")
    got, ids2 = _base_plus_adapter_logits(run_dir, out)
    assert torch.equal(ids, ids2)  # same chat template -> same prompt
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not list(out.parent.glob(".*export-tmp*"))


def test_model_card_states_base_model_method_and_losses(run_dir, tmp_path):
    out = tmp_path / "card"
    export_adapter(run_dir, out, device="cpu", dtype="fp32")
    card = (out / "README.md").read_text()
    config = open_run_dir(run_dir).config
    events = read_events(run_dir / "events.jsonl")
    final_loss = [e["loss"] for e in events if e["type"] == "metrics" and "loss" in e][-1]
    eval_loss = [e["eval_loss"] for e in events if e["type"] == "metrics" and "eval_loss" in e][-1]
    assert config.model.name_or_path in card
    assert "identity.jsonl" in card and "LoRA" in card and "r=8" in card and "lora_alpha=16" in card
    assert f"{final_loss:.4g}" in card and f"{eval_loss:.4g}" in card
    assert "PeftModel.from_pretrained" in card
    assert "--enable-lora --lora-modules" in card


def test_merged_export_matches_base_plus_adapter(run_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    result = export_merged(run_dir, out, dtype="fp32", device="cpu")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    expected, ids = _base_plus_adapter_logits(run_dir, run_dir / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = merged(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4


def _fail_after_partial_write(tensors, path, *args, **kwargs):
    Path(path).write_bytes(b"half a tensor")  # a real full disk leaves a partial file behind
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("kind", ["adapter", "merged"])
def test_disk_full_leaves_nothing_behind(run_dir, tmp_path, monkeypatch, kind):
    import peft.peft_model
    import transformers.modeling_utils

    monkeypatch.setattr(peft.peft_model, "safe_save_file", _fail_after_partial_write)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _fail_after_partial_write)
    out = tmp_path / "out" / "export"
    exporter = export_adapter if kind == "adapter" else export_merged
    with pytest.raises(ExportError, match="disk is full") as info:
        exporter(run_dir, out, device="cpu", dtype="fp32")
    assert "Traceback" not in str(info.value)
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temp folder either


def test_failed_overwrite_keeps_the_previous_export(run_dir, tmp_path, monkeypatch):
    import peft.peft_model

    out = tmp_path / "adapter"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")
    with pytest.raises(ExportError, match="not empty"):
        export_adapter(run_dir, out, device="cpu", dtype="fp32")
    monkeypatch.setattr(peft.peft_model, "safe_save_file", _fail_after_partial_write)
    with pytest.raises(ExportError):
        export_adapter(run_dir, out, device="cpu", dtype="fp32", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_destinations_that_would_destroy_the_run_or_escape_are_refused(run_dir, tmp_path):
    run = open_run_dir(run_dir)
    for bad in (run_dir, run_dir / "adapter", run_dir / "adapter" / "x", run_dir / "checkpoints", run_dir.parent):
        with pytest.raises(ExportError, match="overwrite the run"):
            check_destination(bad, run, overwrite=True)
    assert check_destination(run_dir / "exports" / "adapter", run) == (run_dir / "exports" / "adapter").resolve()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        check_destination(tmp_path / "file", run)
    # a file that resolves outside the export folder is rejected and nothing is kept
    dest = tmp_path / "escape"
    with pytest.raises(ExportError, match="outside"), staged_folder(dest) as tmp:
        (tmp / "tokenizer.json").symlink_to(tmp_path / "file")
    assert not dest.exists() and not list(tmp_path.glob(".escape*"))


def test_gguf_failure_keeps_the_other_exports_and_says_why(run_dir, tmp_path, monkeypatch, capsys):
    """LLAMA_CPP_DIR pointing nowhere falls back to the packaged converter, which refuses this run's random
    tokenizer (its pre-tokenizer hash is unknown to llama.cpp): the GGUF fails with one clear line and nothing
    written, the adapter asked for in the same command is still exported, and the exit code says something failed."""
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path / "no-llama"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    args = _parser().parse_args(["export", str(run_dir), "--adapter", str(tmp_path / "a"), "--gguf",
                                 str(tmp_path / "gguf"), "--device", "cpu", "--dtype", "fp32", "--json"])
    assert args.handler(args) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [(r["kind"], r["ok"]) for r in results] == [("adapter", True), ("gguf", False)]
    assert results[0]["parity"]["ok"] and results[1]["parity"] is None
    error = results[1]["error"]
    assert "pre-tokenizer is unknown to llama.cpp's converter" in error and "--merged" in error
    assert f"error: gguf export to {tmp_path / 'gguf'} failed, nothing written: " in captured.err
    assert "Traceback" not in captured.err
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "gguf").exists() and not list(tmp_path.glob(".gguf*"))


_FAKE_CONVERTER = '''
import argparse, json, pathlib
import gguf, numpy as np
p = argparse.ArgumentParser()
p.add_argument("model"); p.add_argument("--outfile"); p.add_argument("--outtype")
a = p.parse_args()
cfg = json.loads((pathlib.Path(a.model) / "config.json").read_text())
assert (pathlib.Path(a.model) / "model.safetensors").is_file()
w = gguf.GGUFWriter(a.outfile, "llama")
w.add_block_count(cfg["num_hidden_layers"])
w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float16))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
'''


def test_gguf_from_a_broken_converter_is_caught_by_the_verification(run_dir, tmp_path, monkeypatch):
    """A user's llama.cpp checkout (LLAMA_CPP_DIR) is used in preference to the package; a converter that writes
    an incomplete file fails the reload check and nothing is kept."""
    llama = tmp_path / "llama.cpp"
    llama.mkdir()
    (llama / "convert_hf_to_gguf.py").write_text(_FAKE_CONVERTER)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(llama))
    out = tmp_path / "gguf"
    with pytest.raises(ExportError, match="verification failed: transformers cannot load the written gguf.f16.gguf"):
        export_gguf(run_dir, out, outtype="f16", dtype="fp32", device="cpu")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["llama.cpp"]


def test_gguf_without_space_fails_before_converting(run_dir, tmp_path, monkeypatch):
    from collections import namedtuple

    import core.gguf_convert

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(core.gguf_convert.shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))
    monkeypatch.setattr(core.gguf_convert, "run_converter", lambda *a, **k: pytest.fail("converter started"))
    with pytest.raises(ExportError, match="not enough disk space for the GGUF file") as info:
        export_gguf(run_dir, tmp_path / "gguf", dtype="fp32", device="cpu")
    assert "1 MiB is free" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_hub_push_needs_a_token_and_the_network(run_dir, monkeypatch):
    import core.export

    monkeypatch.setattr(core.export, "hub_token", lambda: None)
    with pytest.raises(ExportError, match="hf auth login"):
        push_to_hub(run_dir, "me/my-adapter")
    with pytest.raises(ExportError, match="user/name"):
        push_to_hub(run_dir, "no-slash", token="hf_secret")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="cannot be reached") as info:
        push_to_hub(run_dir, "me/my-adapter", token="hf_secret")
    assert "hf_secret" not in str(info.value)


def _parser():
    from core.export_cli import add_export_parsers

    parser = argparse.ArgumentParser(prog="sft-studio")
    add_export_parsers(parser.add_subparsers(dest="command"))
    return parser


def test_cli_export_adapter(run_dir, tmp_path, capsys):
    args = _parser().parse_args(["export", str(run_dir), "--adapter", str(tmp_path / "a"), "--device", "cpu",
                                 "--dtype", "fp32", "--json"])
    assert args.handler(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert results[0]["kind"] == "adapter" and (tmp_path / "a" / "adapter_model.safetensors").is_file()

    args = _parser().parse_args(["export", str(run_dir)])
    assert args.handler(args) == 2
    assert "nothing to export" in capsys.readouterr().err

    args = _parser().parse_args(["export", str(tmp_path), "--merged", str(tmp_path / "m")])
    assert args.handler(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a run directory" in err and "Traceback" not in err
