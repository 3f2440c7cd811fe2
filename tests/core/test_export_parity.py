"""Prompt parity of exports (core.export_parity): a normal export passes; a broken chat template, a missing stop
token and a BOS mismatch are caught with a message naming what differs and the fix. The GGUF cases are built
directly as small GGUF files (metadata + one tensor), so no conversion runs here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.export import export_adapter, export_merged, open_run_dir
from core.export_parity import (
    ParityReport,
    TrainingFacts,
    _probe_facts,
    add_end_of_turn_to_generation_config,
    check_gguf_export,
    check_hf_export,
    gguf_modelfile,
    read_gguf_metadata,
    training_facts,
)
from core.local_runners import parse_modelfile


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_factory) -> Path:
    from test_export import make_trained_run

    return make_trained_run(tmp_path_factory, tiny_model_factory)


@pytest.fixture(scope="module")
def facts(run_dir) -> TrainingFacts:
    return training_facts(open_run_dir(run_dir))


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("parity")
    adapter = export_adapter(run_dir, out / "adapter", device="cpu", dtype="fp32")
    merged = export_merged(run_dir, out / "merged", device="cpu", dtype="fp32")
    return adapter, merged


def test_training_facts_come_from_the_studio_labels(facts, run_dir):
    tok = facts.tokenizer
    assert facts.rows > 0 and len(facts.conversations) == facts.rows  # a conversation dataset
    assert facts.end_of_turn() == [tok.convert_tokens_to_ids("<|im_end|>")]  # not the trained "\n" after it
    assert "identity.jsonl" in facts.source
    assert all(c.text.startswith("<|im_start|>") for c in facts.conversations)


def test_normal_adapter_and_merged_exports_pass(exported):
    adapter, merged = exported
    for result in exported:
        report: ParityReport = result.parity
        assert report is not None and report.ok, report.lines()
        assert [c.name for c in report.checks] == ["chat template", "end of turn", "BOS"]
        assert report.path == result.path
        json.dumps(report.as_dict())  # goes into `export --json`
        assert result.as_dict()["parity"]["ok"] is True
    assert "renders the" in adapter.parity.checks[0].detail and "<|im_end|>" in adapter.parity.checks[1].detail
    assert merged.parity.lines()[0].startswith("prompt parity: OK")


def test_broken_template_is_caught(exported, facts, tmp_path):
    folder = tmp_path / "merged"
    shutil.copytree(exported[1].path, folder)
    template = (folder / "chat_template.jinja").read_text()
    # a typical hand edit: the newline after the role header is lost
    (folder / "chat_template.jinja").write_text(template.replace("'\\n' + message['content']", "message['content']")
                                                .replace("+ '\\n' +", "+"))
    report = check_hf_export(facts, folder, "merged")
    check = report.checks[0]
    assert not report.ok and check.name == "chat template" and not check.ok
    assert "renders training row" in check.detail and "training '" in check.detail and check.fix
    assert any("!!" in line for line in report.lines())


def test_missing_stop_token_is_caught_and_fixed_in_the_merged_export(exported, facts, tmp_path):
    folder = tmp_path / "merged"
    shutil.copytree(exported[1].path, folder)
    endoftext = facts.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = facts.tokenizer.convert_tokens_to_ids("<|im_end|>")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": endoftext}))
    report = check_hf_export(facts, folder, "merged")
    check = next(c for c in report.checks if c.name == "end of turn")
    assert not check.ok
    assert f"<|endoftext|> (id {endoftext})" in check.detail and f"<|im_end|> (id {im_end})" in check.detail
    assert "eos_token_id" in check.fix
    # what export_merged does when it meets this: add the end-of-turn id to generation_config.json
    note = add_end_of_turn_to_generation_config(folder, facts)
    assert "<|im_end|>" in note
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == [endoftext, im_end]
    assert check_hf_export(facts, folder, "merged").ok


# ------------------------------------------------------------------------------------------- GGUF files


def write_gguf(path: Path, tokenizer, template: str | None, *, eos: str, bos: str | None = None,
               add_bos: bool | None = False) -> Path:
    """A GGUF file with the metadata a converter writes for ``tokenizer`` and one tiny tensor."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))])
    writer.add_eos_token_id(tokenizer.convert_tokens_to_ids(eos))
    if bos is not None:
        writer.add_bos_token_id(tokenizer.convert_tokens_to_ids(bos))
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if template is not None:
        writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_parity_passes_and_the_modelfile_stops_where_training_stopped(facts, tmp_path):
    path = write_gguf(tmp_path / "ok.gguf", facts.tokenizer, facts.template, eos="<|im_end|>")
    meta = read_gguf_metadata(path)
    modelfile = gguf_modelfile(facts, meta, path.name, "my-model")
    report = check_gguf_export(facts, path, modelfile=modelfile)
    assert report.ok, report.lines()
    assert [c.name for c in report.checks] == ["chat template", "end of turn", "BOS", "Ollama template"]
    commands = parse_modelfile(modelfile.text())
    assert commands[0] == ("from", "./ok.gguf")
    assert ("parameter:stop", "<|im_end|>") in commands
    assert any(name == "template" for name, _ in commands)


def test_gguf_missing_stop_token_and_broken_template_are_caught(facts, tmp_path):
    path = write_gguf(tmp_path / "eos.gguf", facts.tokenizer, facts.template, eos="<|endoftext|>")
    meta = read_gguf_metadata(path)
    modelfile = gguf_modelfile(facts, meta, path.name)
    report = check_gguf_export(facts, path, modelfile=modelfile)
    end = next(c for c in report.checks if c.name == "end of turn")
    assert not end.ok and "<|endoftext|>" in end.detail and "<|im_end|>" in end.detail and "will not stop" in end.detail
    assert 'PARAMETER stop "<|im_end|>"' in end.fix and "--override-kv" in end.fix
    # the Modelfile written next to it still makes Ollama stop there
    assert next(c for c in report.checks if c.name == "Ollama template").ok
    assert 'PARAMETER stop "<|im_end|>"' in modelfile.text()

    broken = facts.template.replace("<|im_start|>", "<|im_start|> ")
    path = write_gguf(tmp_path / "tpl.gguf", facts.tokenizer, broken, eos="<|im_end|>")
    report = check_gguf_export(facts, path)
    assert not report.checks[0].ok and "differently" in report.checks[0].detail

    path = write_gguf(tmp_path / "none.gguf", facts.tokenizer, None, eos="<|im_end|>")
    check = check_gguf_export(facts, path).checks[0]
    assert not check.ok and "has no chat template" in check.detail


def test_gguf_bos_mismatch_is_caught(tmp_path):
    from tiny_models import build_tokenizer

    tokenizer = build_tokenizer("llama3")  # its template writes <|begin_of_text|>
    facts = _probe_facts(tokenizer, "a probe conversation")
    assert facts.starts_with_bos is True and facts.end_of_turn() == [tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    # the usual Llama 3 layout: the template writes BOS and the GGUF adds one too -> llama.cpp keeps one
    ok = write_gguf(tmp_path / "ok.gguf", tokenizer, facts.template, eos="<|eot_id|>", bos="<|begin_of_text|>",
                    add_bos=True)
    report = check_gguf_export(facts, ok)
    assert report.ok, report.lines()
    # a template without the BOS and no add_bos: the model never sees the BOS it was trained with
    no_bos = facts.template.replace("set content = bos_token + content", "set content = content")
    assert no_bos != facts.template
    bad = write_gguf(tmp_path / "bad.gguf", tokenizer, no_bos, eos="<|eot_id|>", bos="<|begin_of_text|>",
                     add_bos=False)
    bos = next(c for c in check_gguf_export(facts, bad).checks if c.name == "BOS")
    assert not bos.ok and "will not" in bos.detail and "add_bos_token=bool:true" in bos.fix


def test_unreadable_data_falls_back_to_a_probe_conversation(run_dir, tmp_path, monkeypatch):
    import core.pipeline

    def fail(*args, **kwargs):
        raise OSError("data/train.jsonl: no such file")

    monkeypatch.setattr(core.pipeline, "open_run", fail)
    facts = training_facts(open_run_dir(run_dir))
    assert facts.rows == 1 and "probe conversation" in facts.source and "no such file" in facts.source
    assert facts.end_of_turn() == [facts.tokenizer.convert_tokens_to_ids("<|im_end|>")]
