"""Security defaults: no remote code, no pickle weights, no tokens in run files, sandboxed templates, and
paths relative to the run file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hardening_helpers import OK_ROW, jsonl, run_subprocess, write_run

from core.config import ConfigError, field_info, load_run_config
from core.training.models import ModelError, load_model, load_tokenizer, resolve_model_source, source_for


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text(jsonl(OK_ROW, OK_ROW))
    return path


def _remote_code_model(tmp_path: Path, tiny: Path, marker: Path) -> Path:
    folder = tmp_path / "custom-code-model"
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "studio_custom"
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "configuration_custom.py").write_text(
        payload + "from transformers import PretrainedConfig\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'studio_custom'\n"
    )
    (folder / "tokenization_custom.py").write_text(payload)
    return folder


def test_trust_remote_code_field_defaults_off_and_explains_itself():
    info = field_info("model.trust_remote_code")
    assert info.default is False and info.type is bool
    assert "code" in info.help and "trust" in info.help
    pickle = field_info("model.allow_pickle_weights")
    assert pickle.default is False and "pickle" in pickle.help.lower()


def test_model_needing_remote_code_refused_by_default(tmp_path, tiny_model_factory, data, cli):
    marker = tmp_path / "code-ran"
    folder = _remote_code_model(tmp_path, tiny_model_factory("qwen2_5"), marker)
    with pytest.raises(ModelError) as excinfo:
        load_model(resolve_model_source(str(folder)))
    assert "model.trust_remote_code: true" in str(excinfo.value) and str(folder) in str(excinfo.value)
    # The tokenizer has a built-in class, so transformers loads that one and ignores the shipped code.
    assert load_tokenizer(resolve_model_source(str(folder))).is_fast
    code, _, _ = cli("audit", "--config", write_run(tmp_path, folder, data))
    assert code == 0
    assert not marker.exists()  # the model's code never ran


def test_trust_remote_code_passed_through_when_set(tmp_path, tiny_model_factory, monkeypatch):
    import transformers

    seen = {}

    def fake(name, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    cfg = load_run_config(
        write_run(
            tmp_path, tiny_model_factory("qwen2_5"), tmp_path / "d.jsonl", model={"trust_remote_code": True}
        )
    )
    source = source_for(cfg.model)
    assert source.trust_remote_code is True and source.allow_pickle_weights is False
    with pytest.raises(ModelError):
        load_model(source)
    assert seen["trust_remote_code"] is True and seen["use_safetensors"] is True


def test_pickle_only_weights_refused_unless_allowed(tmp_path, tiny_model_factory):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_factory("qwen2_5"), folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError) as excinfo:
        load_model(resolve_model_source(str(folder)))
    message = str(excinfo.value)
    assert (
        str(folder) in message
        and "pytorch_model.bin" in message
        and "model.allow_pickle_weights: true" in message
    )
    model = load_model(resolve_model_source(str(folder), allow_pickle_weights=True))
    assert model.config.num_hidden_layers >= 1


def test_safetensors_enforced_for_hub_ids(monkeypatch):
    import transformers

    seen = {}

    def fake(name, **kwargs):
        seen.update(kwargs)
        raise OSError(f"{name} does not appear to have a file named model.safetensors")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    with pytest.raises(ModelError) as excinfo:
        load_model(resolve_model_source("some-org/old-model"))
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False
    assert "model.allow_pickle_weights" in str(excinfo.value)


# --------------------------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("where", ["model", "training", None])
@pytest.mark.parametrize("key", ["token", "hf_token", "hub_token", "use_auth_token"])
def test_token_keys_in_run_file_rejected_without_echoing_value(tmp_path, where, key):
    secret = "hf_" + "s3cr3t" * 6
    doc: dict = {"model": {"name_or_path": "org/m"}}
    if where:
        doc.setdefault(where, {})[key] = secret
    else:
        doc[key] = secret
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    text = str(excinfo.value)
    assert "access tokens are never stored in run files" in text and "HF_TOKEN" in text
    assert secret not in text


def test_token_looking_value_rejected_anywhere(tmp_path):
    secret = "hf_" + "AbCdEf0123" * 4
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({"model": {"name_or_path": "org/m"}, "data": {"placeholders": {"name": secret}}})
    )
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    assert "data.placeholders holds what looks like a Hugging Face access token" in str(excinfo.value)
    assert secret not in str(excinfo.value)
    path.write_text(yaml.safe_dump({"model": secret}))  # a wrong type must not echo it either
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    assert secret not in str(excinfo.value)


def test_hf_token_from_environment_never_written_to_run_files(tmp_path, tiny_model_factory, data):
    secret = "hf_testsecret" + "Z9" * 15
    run = write_run(
        tmp_path,
        tiny_model_factory("qwen2_5"),
        data,
        training={"max_steps": 1, "save_steps": 1, "device": "cpu", "precision": "fp32"},
    )
    proc = run_subprocess(
        "train", "--config", run, env={"HF_TOKEN": secret, "HUGGING_FACE_HUB_TOKEN": secret}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {"run.yaml", "events.jsonl", "train.log"} <= {p.name for p in written}
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in proc.stdout and secret not in proc.stderr


# ------------------------------------------------------------------------------------------ templates

HOSTILE = {
    "mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "include": "{% include '/etc/passwd' %}",
    "import": "{% import '/etc/passwd' as p %}{{ p }}",
    "namespace": "{{ namespace.__init__.__globals__['__builtins__']['open']('/etc/passwd').read() }}",
    "attr": "{{ (messages|attr('__class__')).__base__.__subclasses__() }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_cannot_run_code_or_read_files(
    tmp_path, tiny_model_factory, data, cli, name, monkeypatch
):
    marker = tmp_path / "MARKER"
    monkeypatch.chdir(tmp_path)
    template = tmp_path / f"{name}.jinja"
    template.write_text(HOSTILE[name].replace("MARKER", str(marker)))
    run = write_run(
        tmp_path,
        tiny_model_factory("qwen2_5"),
        data,
        model={"chat_template": str(template)},
        data={"train_on": "all"},
    )
    code, report, err = cli.audit(run)
    assert not marker.exists()
    assert code in (1, 2)
    text = json.dumps(report) + err if report else err
    assert "root:" not in text  # /etc/passwd was not read
    if report is not None:
        assert report["trainable_rows"] == 0
        assert all(d["line"] == d["row"] + 1 for d in report["dropped"])
        assert all("the chat template failed on this conversation" in d["reason"] for d in report["dropped"])


def test_render_path_is_jinjas_sandbox(tiny_model_factory):
    from transformers import AutoTokenizer

    from core.templates import TemplateError, render_conversation

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_factory("qwen2_5"))
    with pytest.raises(TemplateError) as excinfo:
        render_conversation(tokenizer, HOSTILE["mro"], OK_ROW["messages"])
    assert "unsafe" in str(excinfo.value)


# -------------------------------------------------------------------------------------------- paths


def test_paths_resolve_relative_to_run_file_from_another_cwd(tmp_path, tiny_model_factory):
    project = tmp_path / "my project"
    (project / "data").mkdir(parents=True)
    (project / "templates").mkdir()
    (project / "data" / "train.jsonl").write_text(jsonl(OK_ROW))
    shutil.copy(Path(__file__).parent / "corpus" / "bom_crlf.jsonl", project / "data" / "eval.jsonl")
    (project / "templates" / "chat.jinja").write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    model = project / "models" / "tiny"
    shutil.copytree(tiny_model_factory("qwen2_5"), model)
    run = project / "run.yaml"
    run.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": "./models/tiny", "chat_template": "templates/chat.jinja"},
                "data": {"path": "data/train.jsonl", "train_on": "all", "max_length": 128},
                "output_dir": "runs/one",
            }
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_subprocess("audit", "--config", run, "--json", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["source"] == str(project / "data" / "train.jsonl")
    assert report["template"] == str(project / "templates" / "chat.jinja")
    cfg = load_run_config(run)
    assert cfg.output_dir == str(project / "runs" / "one")
    assert not (elsewhere / "runs").exists()
    # a missing relative file is reported at its resolved place, not the cwd
    run.write_text(run.read_text().replace("data/train.jsonl", "data/missing.jsonl"))
    proc = run_subprocess("audit", "--config", run, cwd=elsewhere)
    assert proc.returncode == 2 and str(project / "data" / "missing.jsonl") in proc.stderr
