"""Models and chat templates that do not fit: clear messages naming the folder, the field or the row."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hardening_helpers import OK_ROW, jsonl, run_subprocess, write_run


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text(
        jsonl(
            OK_ROW, {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
        )
    )
    return path


def test_model_folder_without_tokenizer(tmp_path, tiny_model_factory, data):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_factory("qwen2_5") / name, folder)
    proc = run_subprocess("audit", "--config", write_run(tmp_path, folder, data))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {folder}: this model folder has no tokenizer" in proc.stderr


def test_folder_that_is_not_a_model(tmp_path, data, cli):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    code, _, err = cli("audit", "--config", write_run(tmp_path, folder, data))
    assert code == 2 and str(folder) in err and "no config.json" in err


def test_tokenizer_without_pad_token_handled_and_told(tmp_path, tiny_model_factory, data, cli):
    model = tiny_model_factory("llama3_1")  # Llama 3 ships no pad token
    code, report, _ = cli.audit(write_run(tmp_path, model, data))
    assert code == 0
    assert any("no pad token" in n and "<|eot_id|>" in n for n in report["notes"])


def test_no_chat_template_for_conversations(tmp_path, tiny_model_factory, data, cli):
    code, _, err = cli.audit(write_run(tmp_path, tiny_model_factory("none"), data))
    assert code == 2 and "the model has no chat template" in err and "model.chat_template" in err
    code, report, _ = cli.audit(
        write_run(tmp_path, tiny_model_factory("none"), data, model={"chat_template": "chatml"})
    )
    assert code == 0 and report["template"] == "chatml"


def test_template_that_raises_is_a_row_problem(tmp_path, tiny_model_factory, data, cli):
    template = tmp_path / "strict.jinja"
    template.write_text(
        "{% if messages|length > 1 %}{{ raise_exception('only one message per chat, please') }}"
        "{% endif %}{{ messages[0].content }}"
    )
    code, report, _ = cli.audit(
        write_run(tmp_path, tiny_model_factory("qwen2_5"), data, model={"chat_template": str(template)})
    )
    assert code == 1 and report["trainable_rows"] == 0
    for d in report["dropped"]:
        assert d["line"] == d["row"] + 1
        assert (
            "the chat template failed on this conversation: only one message per chat, please" in d["reason"]
        )


def test_template_with_syntax_error_names_file_and_line(tmp_path, tiny_model_factory, data, cli):
    template = tmp_path / "broken.jinja"
    template.write_text("{{ bos_token }}\n{% for m in messages %}{{ m.content }\n{% endfor %}")
    code, _, err = cli.audit(
        write_run(tmp_path, tiny_model_factory("qwen2_5"), data, model={"chat_template": str(template)})
    )
    assert code == 2 and f"{template}:2: chat template syntax error" in err


def test_assistant_only_without_markers_prefix_preserving_uses_render_diff(
    tmp_path, tiny_model_factory, data, cli
):
    run = write_run(tmp_path, tiny_model_factory("mistral"), data, data={"train_on": "assistant"})
    code, report, _ = cli.audit(run)
    assert code == 0 and report["mask_method"] == "render-diff" and report["trainable_rows"] == 2


def test_assistant_only_with_non_prefix_preserving_template_read_by_full_render_search(
    tmp_path, tiny_model_factory, data, cli
):
    template = tmp_path / "last_turn_differs.jinja"
    template.write_text(
        "{% for m in messages %}{% if loop.last and m.role == 'assistant' %}FINAL: {{ m.content }}"
        "{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    run = write_run(
        tmp_path,
        tiny_model_factory("qwen2_5"),
        data,
        model={"chat_template": str(template)},
        data={"train_on": "assistant"},
    )
    code, report, _ = cli.audit(run)
    # Each answer is unambiguous in the full rendering, so the rows are read by full-render search (issue 19) and
    # trained on exactly the answers; the audit still exits 1 because the model would be prompted differently at
    # inference ("assistant: " vs "FINAL: "), and says how each row was read.
    assert code == 1 and report["trainable_rows"] == 2 and not report["dropped"]
    assert report["parity"], "the train/inference mismatch must be reported"
    assert report["row_methods"] == {"render-search": [0, 1]}
    # train_on: all needs no assistant spans: every row trains, and the audit still flags the inference mismatch
    run = write_run(
        tmp_path,
        tiny_model_factory("qwen2_5"),
        data,
        model={"chat_template": str(template)},
        data={"train_on": "all"},
    )
    code, report, _ = cli.audit(run)
    assert report["trainable_rows"] == 2 and report["parity"] and code == 1


def test_vocabulary_lacking_the_templates_special_tokens(tmp_path, tiny_model_factory, data, cli):
    template = tmp_path / "fancy.jinja"
    template.write_text(
        "{% for m in messages %}{{ '<|fancy_start|>' + m.role + '\\n' + m.content + '<|fancy_end|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|fancy_start|>assistant\\n' }}{% endif %}"
    )
    run = write_run(
        tmp_path,
        tiny_model_factory("qwen2_5"),
        data,
        model={"chat_template": str(template)},
        data={"train_on": "all"},
    )
    code, report, _ = cli.audit(run)
    assert code == 0
    (note,) = [n for n in report["notes"] if "vocabulary" in n]
    assert "<|fancy_start|>" in note and "<|fancy_end|>" in note


def test_builtin_template_specials_checked_against_vocab():
    from tiny_models import build_tokenizer

    from core.templates import missing_special_tokens, resolve_chat_template

    tokenizer = build_tokenizer("qwen2_5")
    assert missing_special_tokens(tokenizer, resolve_chat_template(tokenizer, "chatml")) == []
    vocab = tokenizer.get_vocab()

    class NoChatML:
        def get_vocab(self):
            return {k: v for k, v in vocab.items() if k not in ("<|im_start|>", "<|im_end|>")}

    assert missing_special_tokens(NoChatML(), resolve_chat_template(tokenizer, "chatml")) == [
        "<|im_start|>",
        "<|im_end|>",
    ]
