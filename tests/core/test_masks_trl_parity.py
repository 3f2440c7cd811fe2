"""Preview = training: our labels equal TRL 1.16's own processing of the raw dataset.

For each template family and each format TRL reads natively, an ``SFTTrainer`` is built on the raw rows
and its prepared ``train_dataset`` (input_ids, labels — after TRL's truncation and dropping) is compared
with :class:`core.masks.ExampleBuilder`'s output. Re-run whenever TRL is upgraded.
"""

from __future__ import annotations

import json

import pytest

from core.masks import IGNORE_INDEX, ExampleBuilder
from core.templates import BUILTIN_TEMPLATES, ResolvedTemplate, TrainingTemplate, resolve_chat_template

MAX_LENGTH = 96


def _alpaca_rows(shared_datasets, n=12):
    rows = json.loads((shared_datasets / "alpaca_en_demo.json").read_text())[:n]
    out = []
    for r in rows:
        prompt = r["instruction"] + (("\n\n" + r["input"]) if r["input"] else "")
        out.append((prompt, r["output"]))
    return out


def _conversations(shared_datasets, with_system: bool):
    convs = []
    for prompt, answer in _alpaca_rows(shared_datasets):
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer[:120]}]
        convs.append(msgs)
    multi = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
        {"role": "assistant", "content": "Madrid."},
    ]
    convs.append(multi)
    if with_system:
        convs.append([{"role": "system", "content": "Answer briefly."}, *multi])
    return convs


def _trl_prepared(model_dir, rows, **config):
    """What TRL trains on: the ``train_dataset`` an SFTTrainer prepares from the raw rows."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(
        output_dir=str(model_dir / "trl-out"),
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_length=MAX_LENGTH,
        gradient_checkpointing=False,
        **config,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return [(r["input_ids"], r["labels"]) for r in trainer.train_dataset]


def _ours(model_dir, rows, train_on, template: ResolvedTemplate | None = None, method: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if template is None and tokenizer.chat_template:
        template = resolve_chat_template(tokenizer, None)
    builder = ExampleBuilder(tokenizer, template, train_on, MAX_LENGTH)
    if method == "render-diff":  # force the general method to check it against TRL's patched templates
        builder._training = TrainingTemplate(template.text, "render-diff")
    out = []
    for row in rows:
        built = builder.build(row)
        if built.dropped is None:  # TRL drops these silently; we report them (tested elsewhere)
            out.append((built.input_ids, built.labels))
    return out


def _assert_same(ours, theirs, masked: bool = True):
    assert len(ours) == len(theirs) > 0
    for k, ((ids_a, lab_a), (ids_b, lab_b)) in enumerate(zip(ours, theirs, strict=True)):
        assert ids_a == ids_b, f"example {k}: input_ids differ"
        assert lab_a == lab_b, f"example {k}: labels differ"
    has_masked = any(any(x == IGNORE_INDEX for x in lab) for _, lab in ours)
    assert has_masked == masked, "expected some prompt tokens without loss" if masked else "expected loss on all"


FAMILIES = ["chatml", "qwen2_5", "llama3", "llama3_1", "gemma", "mistral"]
NO_SYSTEM = {"gemma", "mistral"}  # their templates refuse a system role


@pytest.mark.parametrize("family", FAMILIES)
def test_text_rows_equal_trl(family, tiny_model_factory, shared_datasets):
    model = tiny_model_factory(family)
    lines = (shared_datasets / "c4_demo.jsonl").read_text().splitlines()[:6]
    rows = [{"text": json.loads(line)["text"][:400]} for line in lines]
    _assert_same(_ours(model, rows, "all"), _trl_prepared(model, rows), masked=False)


@pytest.mark.parametrize("family", ["chatml", "llama3", "mistral"])
@pytest.mark.parametrize("train_on", ["completion", "all"])
def test_prompt_completion_text_equal_trl(family, train_on, tiny_model_factory, shared_datasets):
    model = tiny_model_factory(family)
    rows = [{"prompt": p + "\n", "completion": c[:200]} for p, c in _alpaca_rows(shared_datasets)]
    theirs = _trl_prepared(model, rows, completion_only_loss=(train_on == "completion"))
    _assert_same(_ours(model, rows, train_on), theirs, masked=(train_on == "completion"))


@pytest.mark.parametrize("family", FAMILIES)
def test_conversational_prompt_completion_equal_trl(family, tiny_model_factory, shared_datasets):
    model = tiny_model_factory(family)
    rows = [{"prompt": c[:-1], "completion": c[-1:]} for c in _conversations(shared_datasets, family not in NO_SYSTEM)]
    _assert_same(_ours(model, rows, "completion"), _trl_prepared(model, rows))


@pytest.mark.parametrize("family", FAMILIES)
def test_messages_all_tokens_equal_trl(family, tiny_model_factory, shared_datasets):
    model = tiny_model_factory(family)
    rows = [{"messages": c} for c in _conversations(shared_datasets, family not in NO_SYSTEM)]
    _assert_same(_ours(model, rows, "all"), _trl_prepared(model, rows), masked=False)


@pytest.mark.parametrize("family", ["qwen2_5", "llama3", "gemma"])
def test_assistant_only_equals_trl_patched_templates(family, tiny_model_factory, shared_datasets):
    """Templates TRL can patch: same tokens and labels as TRL's assistant_only_loss."""
    model = tiny_model_factory(family)
    rows = [{"messages": c} for c in _conversations(shared_datasets, family not in NO_SYSTEM)]
    theirs = _trl_prepared(model, rows, assistant_only_loss=True)
    _assert_same(_ours(model, rows, "assistant"), theirs)


@pytest.mark.parametrize("family", ["llama3", "gemma"])
def test_render_diff_method_agrees_with_trl_patched_templates(family, tiny_model_factory, shared_datasets):
    """Our general method (render-diff), run on TRL's patched training template without its markers'
    help, finds the same assistant tokens as TRL. This is what justifies using it for templates TRL
    refuses (Llama 3.1, Mistral, custom ChatML)."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import get_training_chat_template

    model = tiny_model_factory(family)
    tokenizer = AutoTokenizer.from_pretrained(model)
    patched = get_training_chat_template(tokenizer)
    rows = [{"messages": c} for c in _conversations(shared_datasets, family not in NO_SYSTEM)]
    theirs = _trl_prepared(model, rows, assistant_only_loss=True)
    ours = _ours(model, rows, "assistant", ResolvedTemplate(patched, "file", "patched"), method="render-diff")
    _assert_same(ours, theirs)


def test_builtin_chatml_with_markers_equals_trl(tiny_model_factory, shared_datasets, tmp_path):
    """ChatML with {% generation %} markers (our built-in): TRL uses the markers directly, and so do we."""
    import shutil

    from transformers import AutoTokenizer

    src = tmp_path / "base"  # a copy: the shared "none" model must keep having no template
    shutil.copytree(tiny_model_factory("none"), src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.chat_template = BUILTIN_TEMPLATES["chatml"]
    tokenizer.save_pretrained(src)
    rows = [{"messages": c} for c in _conversations(shared_datasets, True)]
    theirs = _trl_prepared(src, rows, assistant_only_loss=True)
    ours = _ours(src, rows, "assistant")
    _assert_same(ours, theirs)


@pytest.mark.parametrize("family", ["chatml", "llama3_1", "mistral"])
def test_templates_trl_refuses_still_train_assistant_only(family, tiny_model_factory, shared_datasets):
    """Deliberate difference: TRL raises 'not training-compatible' for these; we locate the assistant turns
    by rendering, and every trained token is answer text or the end-of-turn token."""
    from transformers import AutoTokenizer

    model = tiny_model_factory(family)
    rows = [{"messages": c} for c in _conversations(shared_datasets, family not in NO_SYSTEM)]
    with pytest.raises(ValueError, match="not training-compatible"):
        _trl_prepared(model, rows, assistant_only_loss=True)
    tokenizer = AutoTokenizer.from_pretrained(model)
    builder = ExampleBuilder(tokenizer, resolve_chat_template(tokenizer, None), "assistant", 4096)
    assert builder.training_template.method == "render-diff"
    for row in rows:
        built = builder.build(row)
        trained = "".join(t.text for t in built.tokens if t.trained)
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        for answer in answers:
            assert answer.strip() in trained
        for m in row["messages"]:
            if m["role"] != "assistant" and len(m["content"]) > 12:
                assert m["content"] not in trained
        assert tokenizer.eos_token in trained or "<|im_end|>" in trained
