"""Golden masks: which characters carry loss, and why the others do not, per format and template."""

from __future__ import annotations

import pytest

from core.masks import IGNORE_INDEX, ExampleBuilder, MaskError
from core.templates import BUILTIN_TEMPLATES, ResolvedTemplate, TemplateError, resolve_chat_template

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]


@pytest.fixture(scope="module")
def tok():
    from tiny_models import build_tokenizer

    return build_tokenizer("none")  # no template of its own; built-ins are applied explicitly


@pytest.fixture(scope="module")
def smol_tok():
    from tiny_models import build_tokenizer

    return build_tokenizer("chatml")  # SmolLM2's own template: ChatML without markers, default system prompt


def trained_text(built) -> str:
    return "".join(t.text for t in built.tokens if t.trained)


def builtin(name: str) -> ResolvedTemplate:
    return ResolvedTemplate(BUILTIN_TEMPLATES[name], "builtin", name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chatml", "Paris.<|im_end|>Madrid.<|im_end|>"),
        ("llama3", "Paris.<|eot_id|>Madrid.<|eot_id|>"),
        ("gemma", "Paris.<end_of_turn>Madrid.<end_of_turn>"),
        ("alpaca", "Paris.<|endoftext|>Madrid.<|endoftext|>"),
        ("openassistant", "Paris.<|endoftext|>Madrid.<|endoftext|>"),
    ],
)
def test_builtin_templates_train_answers_and_their_end_of_turn(tok, name, expected):
    built = ExampleBuilder(tok, builtin(name), "assistant", 1024).build({"messages": CONV, "tools": None})
    assert built.method == "markers"
    assert trained_text(built) == expected
    reasons = {t.reason for t in built.tokens if not t.trained}
    assert "user" in reasons
    assert "system" in reasons or name in ("gemma",)  # gemma folds the system prompt into the first user turn


def test_own_template_without_markers_uses_render_diff(smol_tok):
    template = resolve_chat_template(smol_tok, None)
    built = ExampleBuilder(smol_tok, template, "auto", 1024).build({"messages": CONV[1:], "tools": None})
    assert built.train_on == "assistant" and built.method == "render-diff"
    assert trained_text(built) == "Paris.<|im_end|>\nMadrid.<|im_end|>\n"
    by_reason = {t.reason for t in built.tokens if not t.trained}
    # the default system prompt the template adds is attributed to the first message's segment
    assert {"user", "template"} <= by_reason
    assert len(built.labels) == len(built.input_ids) == built.n_tokens
    assert built.n_trained == sum(1 for t in built.tokens if t.trained)


def test_completion_mode_on_conversation_trains_only_the_last_answer(tok):
    built = ExampleBuilder(tok, builtin("chatml"), "completion", 1024).build({"messages": CONV, "tools": None})
    assert trained_text(built) == "Madrid.<|im_end|>\n"
    first_answer = [t for t in built.tokens if t.turn == 2]
    assert first_answer and all(t.reason == "context" for t in first_answer)


def test_all_mode_trains_every_token(tok):
    built = ExampleBuilder(tok, builtin("chatml"), "all", 1024).build({"messages": CONV, "tools": None})
    assert all(label != IGNORE_INDEX for label in built.labels)
    assert built.text.startswith("<|im_start|>system\nBe brief.")


def test_text_rows_get_eos_and_full_loss(tok):
    built = ExampleBuilder(tok, None, "auto", 1024).build({"text": "The quick brown fox."})
    assert built.text == "The quick brown fox.<|endoftext|>"
    assert built.labels == built.input_ids
    with pytest.raises(MaskError, match="plain text"):
        ExampleBuilder(tok, None, "assistant", 1024).build({"text": "x"})


def test_prompt_completion_strings_train_completion_plus_eos(tok):
    built = ExampleBuilder(tok, None, "auto", 1024).build({"prompt": "Capital of France?\n", "completion": "Paris."})
    assert trained_text(built) == "Paris.<|endoftext|>"
    assert {t.reason for t in built.tokens if not t.trained} == {"prompt"}


def test_truncation_is_visible_and_reported(tok):
    long_answer = "word " * 80
    conv = [{"role": "user", "content": "Say many words."}, {"role": "assistant", "content": long_answer}]
    built = ExampleBuilder(tok, builtin("chatml"), "assistant", 40).build({"messages": conv, "tools": None})
    assert len(built.input_ids) == 40 and built.n_tokens > 40
    assert built.truncated and built.eos_lost and built.dropped is None
    cut = [t for t in built.tokens if t.reason == "truncated"]
    assert len(cut) == built.n_tokens - 40 and not any(t.trained for t in cut)


def test_row_whose_prompt_fills_max_length_is_dropped_with_a_reason(tok):
    conv = [{"role": "user", "content": "long question " * 40}, {"role": "assistant", "content": "ok"}]
    built = ExampleBuilder(tok, builtin("chatml"), "assistant", 20).build({"messages": conv, "tools": None})
    assert built.dropped and "max_length=20" in built.dropped


def test_tool_calls_stay_visible_when_the_template_cannot_render_them(smol_tok):
    conv = [
        {"role": "user", "content": "Find a recipe with rice."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "search_recipes", "arguments": {"q": "rice"}}}],
        },
        {"role": "tool", "content": '{"recipes": ["fried rice"]}'},
        {"role": "assistant", "content": "Try fried rice."},
    ]
    template = resolve_chat_template(smol_tok, None)
    built = ExampleBuilder(smol_tok, template, "assistant", 4096).build({"messages": conv, "tools": None})
    text = trained_text(built)
    assert '"name": "search_recipes"' in text and "Try fried rice." in text
    assert "fried rice\"]" not in text  # the tool result is context, not trained
    assert any("tool_calls" in note for note in built.notes)
    assert any(t.reason == "tool" for t in built.tokens)


def test_template_that_is_not_prefix_preserving_is_read_in_the_full_rendering(tok):
    # renders earlier answers differently from the last one (like templates that strip reasoning): the partial
    # renderings never match the full one, so each answer is located in the full rendering instead
    odd = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}<|im_start|>assistant\n[old]"
        "{{ m['content'] }}<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    builder = ExampleBuilder(tok, ResolvedTemplate(odd, "file", "odd.jinja"), "assistant", 1024)
    built = builder.build({"messages": CONV[1:], "tools": None})
    assert built.method == "render-search"
    assert trained_text(built) == "Paris.<|im_end|>Madrid.<|im_end|>\n"
    assert "[old]Paris." in built.text  # what the model is trained on, as rendered
    # a single-turn row is prefix-preserving and unaffected
    one = builder.build({"messages": CONV[1:3], "tools": None})
    assert one.method == "render-diff" and trained_text(one) == "Paris.<|im_end|>\n"


def test_template_that_writes_an_answer_twice_is_refused_not_mis_trained(tok):
    twice = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}<|im_start|>assistant\n"
        "{{ m['content'] }} ({{ m['content'] }})<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    builder = ExampleBuilder(tok, ResolvedTemplate(twice, "file", "twice.jinja"), "assistant", 1024)
    with pytest.raises(MaskError, match="messages\\[1\\] is ambiguous"):
        builder.build({"messages": CONV[1:], "tools": None})


def test_template_errors_become_row_problems(tiny_model_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_factory("mistral"))
    builder = ExampleBuilder(tokenizer, resolve_chat_template(tokenizer, None), "all", 1024)
    with pytest.raises(MaskError, match="roles must alternate"):
        builder.build({"messages": CONV, "tools": None})


def test_model_without_template_says_what_to_set(tok):
    with pytest.raises(TemplateError, match="model.chat_template"):
        resolve_chat_template(tok, None)
    assert resolve_chat_template(tok, "llama3").source == "builtin"
    with pytest.raises(TemplateError, match="neither a built-in"):
        resolve_chat_template(tok, "chatmlx")


def test_template_file_syntax_error_names_file_and_line(tok, tmp_path):
    path = tmp_path / "broken.jinja"
    path.write_text("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}")
    with pytest.raises(TemplateError, match=r"broken.jinja:2: chat template syntax error"):
        resolve_chat_template(tok, str(path))


def test_text_the_template_adds_is_not_attributed_to_the_user(smol_tok):
    """SmolLM2's template injects a default system prompt: it is template text, not the user's turn."""
    template = resolve_chat_template(smol_tok, None)
    built = ExampleBuilder(smol_tok, template, "assistant", 1024).build({"messages": CONV[1:3], "tools": None})
    injected = [t for t in built.tokens if t.end <= built.text.index("<|im_start|>user")]
    assert injected and all(t.reason == "template" and t.role is None for t in injected)
    question = [t for t in built.tokens if t.turn == 0]
    assert question and all(t.reason == "user" for t in question)
