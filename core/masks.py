"""The one function that turns an example into what the model trains on.

:class:`ExampleBuilder` turns a normalised example (TRL's formats: ``text``; ``prompt``/``completion`` as
strings or message lists; ``messages`` + ``tools``) into ``input_ids``, ``labels`` (−100 where no loss)
and per-token display data. The token view shows its output; the trainer receives a dataset mapped
through it (TRL keeps an existing ``labels`` column as is), so the preview *is* the training data.

It follows TRL 1.16's ``SFTTrainer._prepare_dataset`` token for token where TRL can do the job (tests
compare the two) and goes further where TRL cannot: assistant-only loss for any prefix-preserving
template (``render-diff``, see :mod:`core.templates`), tool calls kept visible for templates that do not
render ``tool_calls``, and truncation / empty rows reported instead of silently dropped.

Mask rules a user sets (each masked token says which rule masked it, and :attr:`BuiltExample.masked_by` counts them):

* per-message flags from the data: an assistant message marked ``"train": false`` (or ``"weight": 0``, OpenAI's
  fine-tuning format; ``"training": false``, axolotl; ``"loss_weight": 0``, LLaMA-Factory) is not trained. Flags can
  only take an answer out: ``train_on`` decides what is trained among the rest. See :mod:`core.data.formats`.
* ``train_on: last_assistant``: only the final assistant message of each conversation (and its end-of-turn token),
  as LLaMA-Factory's ``mask_history``.
* ``reasoning`` (``data.reasoning``): ``train`` the ``<think>…</think>`` blocks of trained answers, ``mask`` them
  (the block and the whitespace after it; the answer after it stays trained), or ``mask_empty``: mask only blocks
  with nothing inside (Qwen3's templates write ``<think>\n\n</think>\n\n`` into answers without reasoning).

Templates that are not prefix-preserving (Mistral v0.3 writes the system prompt into the *last* user turn only, so
a partial rendering never matches the full one) are read in the full rendering instead (``render-search``): each
assistant message is located by rendering the conversation once more with that message's content replaced by a
sentinel, which must change exactly one place of the text (see :meth:`ExampleBuilder._search_turn`). Only rows where
that is ambiguous are refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.templates import (
    ResolvedTemplate,
    TemplateError,
    TrainingTemplate,
    render_conversation,
    template_renders_tool_calls,
    tool_calls_as_text,
    training_template_for,
)

IGNORE_INDEX = -100
TRAIN_ON_CHOICES = ("auto", "all", "completion", "assistant", "last_assistant")
REASONING_CHOICES = ("train", "mask", "mask_empty")

# Why a token carries no loss. None on a TokenInfo means the token is trained.
REASONS = {
    "system": "system prompt",
    "user": "user turn",
    "tool": "tool result",
    "prompt": "prompt (only the completion is trained)",
    "template": "chat-template text (role headers, text the template adds), not from the data",
    "context": "earlier turn (only the last answer is trained)",
    "truncated": "beyond max_length: cut off",
    # mask rules (counted per rule in BuiltExample.masked_by and the audit)
    "marked": "message marked train: false (or weight: 0) in the data",
    "last_assistant": "earlier answer (train_on: last_assistant)",
    "reasoning": "reasoning block (data.reasoning: mask)",
    "empty_reasoning": "empty reasoning block (data.reasoning: mask_empty)",
}
RULE_REASONS = ("marked", "last_assistant", "reasoning", "empty_reasoning")

# How the assistant tokens of a row were found, in words (the audit and the token view say it per row).
METHODS = {
    "all": "every token",
    "completion": "the completion after the prompt",
    "markers": "the template's {% generation %} markers",
    "trl-patched": "TRL's training version of the template",
    "render-diff": "prefix renderings (each turn adds its answer)",
    "render-search": "full-render search (each answer located in the whole rendering with a sentinel)",
}

# Reasoning blocks: (opening tag, closing tag). <think> is Qwen3 / DeepSeek-R1 / QwQ / SmolLM3; [THINK] Magistral.
REASONING_TAGS = (("<think>", "</think>"), ("[THINK]", "[/THINK]"), ("<|begin_of_thought|>", "<|end_of_thought|>"))


class MaskError(Exception):
    """This example cannot be turned into training tokens; the message says why in plain words."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass
class TokenInfo:
    """Display data for one token (core returns data; the app picks colours)."""

    id: int
    text: str  # the token's text as decoded on its own
    start: int  # character span in BuiltExample.text (start == end for tokens added outside the text)
    end: int
    role: str | None  # "system" | "user" | "assistant" | "tool" | "prompt" | "completion" | "text" | None
    turn: int | None  # index of the message the token belongs to
    trained: bool
    reason: str | None  # key of REASONS when not trained
    special: bool = False


@dataclass
class BuiltExample:
    """One example as the trainer will see it, plus everything the preview shows."""

    input_ids: list[int]  # after truncation to max_length
    labels: list[int]  # same length; IGNORE_INDEX where no loss
    tokens: list[TokenInfo]  # every token incl. those cut off by truncation; empty when built with_display=False
    text: str  # the rendered training text
    kind: str  # "text" | "prompt_completion" | "conversation"
    train_on: str  # resolved: "all" | "completion" | "assistant"
    method: str  # how the mask was found for this row: a key of METHODS
    n_tokens: int  # before truncation
    truncated: bool
    eos_lost: bool  # truncation cut the end-of-turn token of a trained answer
    dropped: str | None = None  # why nothing of this example is trained (the trainer would skip it)
    notes: list[str] = field(default_factory=list)
    masked_by: dict[str, int] = field(default_factory=dict)  # mask rule (RULE_REASONS key) -> tokens it masked

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def example_kind(example: dict) -> str:
    if "messages" in example:
        return "conversation"
    if "prompt" in example and "completion" in example:
        return "prompt_completion"
    if "text" in example:
        return "text"
    raise MaskError("the example has none of text, prompt/completion, messages", field="")


def resolve_train_on(train_on: str, kind: str) -> str:
    """Turn ``auto`` into the concrete mode for this kind of example (DESIGN.md §3.1) and reject modes that
    make no sense for it."""
    if train_on not in TRAIN_ON_CHOICES:
        raise MaskError(f"train_on must be one of {', '.join(TRAIN_ON_CHOICES)}, got {train_on!r}", "train_on")
    if train_on == "auto":
        return {"text": "all", "prompt_completion": "completion", "conversation": "assistant"}[kind]
    if kind == "text" and train_on != "all":
        raise MaskError(
            f"data.train_on is '{train_on}' but this row is plain text: there is no prompt or answer to pick. "
            "Use train_on: all, or a prompt/completion or conversation format.",
            "train_on",
        )
    return train_on


def message_excluded(message: dict) -> bool:
    """Whether the data took this message out of the loss (``"train": false`` after normalisation)."""
    return message.get("train") is False


def _for_template(message: dict) -> dict:
    """The message as the chat template sees it: without the studio's ``train`` flag."""
    return {k: v for k, v in message.items() if k != "train"} if "train" in message else message


class ExampleBuilder:
    """Builds training examples for one tokenizer + template + ``train_on`` + ``max_length`` + ``reasoning``.

    Construct once per run (it inspects the template once), then call :meth:`build` per example.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: ResolvedTemplate | None,
        train_on: str = "auto",
        max_length: int | None = 1024,
        reasoning: str = "train",
    ) -> None:
        if reasoning not in REASONING_CHOICES:
            raise MaskError(f"reasoning must be one of {', '.join(REASONING_CHOICES)}, got {reasoning!r}", "reasoning")
        self.tokenizer = tokenizer
        self.template = template
        self.train_on = train_on
        self.max_length = max_length
        self.reasoning = reasoning
        self._special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._training: TrainingTemplate | None = None
        self._tool_calls_rendered: dict[str, bool] = {}
        self._end_markers: tuple[str, ...] | None = None

    def with_settings(self, **changes: Any) -> ExampleBuilder:
        """A builder for the same tokenizer and template with some of ``train_on``, ``max_length``, ``reasoning``
        changed (the app switches them live); the template inspection is kept when the template is the same."""
        settings = {"train_on": self.train_on, "max_length": self.max_length, "reasoning": self.reasoning, **changes}
        other = ExampleBuilder(self.tokenizer, self.template, **settings)
        other._training, other._tool_calls_rendered = self._training, self._tool_calls_rendered
        return other

    # -- template helpers -------------------------------------------------------------------------------
    def _require_template(self) -> ResolvedTemplate:
        if self.template is None:
            raise MaskError(
                "this row is a conversation but no chat template is available; set model.chat_template", "messages"
            )
        return self.template

    @property
    def training_template(self) -> TrainingTemplate:
        """Template and method used for assistant-only loss (decided once per builder)."""
        if self._training is None:
            self._training = training_template_for(self.tokenizer, self._require_template())
        return self._training

    def _prepare_messages(self, messages: list[dict], template: str, notes: list[str]) -> list[dict]:
        """Keep tool calls visible for templates that do not render ``tool_calls``."""
        if not any(m.get("tool_calls") for m in messages):
            return messages
        if template not in self._tool_calls_rendered:
            self._tool_calls_rendered[template] = template_renders_tool_calls(self.tokenizer, template)
        if self._tool_calls_rendered[template]:
            return messages
        notes.append("the chat template does not render tool_calls; the calls are written into the answer as JSON")
        return [tool_calls_as_text(m) if m.get("tool_calls") else m for m in messages]

    def _render(self, template: str, messages: list[dict], tools: Any, agp: bool = False) -> str:
        try:
            return render_conversation(
                self.tokenizer, template, [_for_template(m) for m in messages], tools, add_generation_prompt=agp
            )
        except TemplateError as exc:
            raise MaskError(str(exc), "messages") from None

    # -- tokenisation -----------------------------------------------------------------------------------
    def _encode(self, text: str, add_special_tokens: bool) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def _ids(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    # -- the one function -------------------------------------------------------------------------------
    def build(self, example: dict, with_display: bool = True) -> BuiltExample:
        """Turn one normalised example into ``input_ids``/``labels`` and display data.

        Raises :class:`MaskError` when the example cannot be built (template refuses it, assistant turns cannot be
        located unambiguously, …). ``with_display=False`` skips work that only the preview needs (role attribution
        of template markup)."""
        kind = example_kind(example)
        train_on = resolve_train_on(self.train_on, kind)
        if kind == "text":
            return self._build_text(example, with_display)
        if kind == "prompt_completion":
            if isinstance(example["prompt"], str) != isinstance(example["completion"], str):
                raise MaskError("prompt and completion must both be text or both be message lists", "completion")
            if isinstance(example["prompt"], str):
                return self._build_pc_text(example, train_on, with_display)
            return self._build_pc_conversation(
                list(example["prompt"]), list(example["completion"]), example.get("tools"), train_on, with_display
            )
        messages = list(example["messages"])
        if train_on == "completion":
            last = _last_assistant(messages)
            if last is None:
                raise MaskError("the conversation has no assistant turn to train on", "messages")
            built = self._build_pc_conversation(
                messages[:last], messages[last:], example.get("tools"), "completion", with_display
            )
            built.kind = "conversation"
            return built
        return self._build_conversation(messages, example.get("tools"), train_on, with_display)

    # text ----------------------------------------------------------------------------------------------
    def _build_text(self, example: dict, with_display: bool) -> BuiltExample:
        text = example["text"]
        eos = self.tokenizer.eos_token
        if eos and not text.endswith(eos):  # as TRL: the model learns where a document ends
            text = text + eos
        ids, offsets = self._encode(text, add_special_tokens=True)
        spans = [(0, len(text), "text", None)]
        trained = [True] * len(ids)
        rules = self._mask_reasoning(text, offsets, trained)
        return self._finish(
            ids, offsets, text, trained, spans, "text", "all", "all", [], {}, with_display, rules
        )

    # prompt/completion as strings ----------------------------------------------------------------------
    def _build_pc_text(self, example: dict, train_on: str, with_display: bool) -> BuiltExample:
        prompt, completion = example["prompt"], example["completion"]
        eos = self.tokenizer.eos_token
        if eos and not completion.endswith(eos):
            completion = completion + eos
        text = prompt + completion
        prompt_ids = self._ids(prompt, add_special_tokens=True)
        ids, offsets = self._encode(text, add_special_tokens=True)
        prompt_len = _common_prefix_length(prompt_ids, ids)
        notes = []
        if prompt_len < len(prompt_ids):
            notes.append(
                "the prompt's last token merges with the completion's first; the completion starts where they diverge "
                f"({self.tokenizer.decode(prompt_ids[prompt_len:])!r} is not a token boundary)"
            )
        if train_on in ("assistant", "last_assistant"):
            raise MaskError(
                f"train_on '{train_on}' needs conversations; this row is a text prompt/completion", "prompt"
            )
        trained = [True] * len(ids) if train_on == "all" else [i >= prompt_len for i in range(len(ids))]
        boundary = offsets[prompt_len][0] if prompt_len < len(ids) else len(text)
        spans = [(0, boundary, "prompt", None), (boundary, len(text), "completion", None)]
        reasons = {"prompt": "prompt"}
        rules = self._mask_reasoning(text, offsets, trained)
        return self._finish(
            ids, offsets, text, trained, spans, "prompt_completion", train_on, train_on, notes, reasons, with_display,
            rules,
        )

    # conversational prompt/completion (and messages with train_on=completion) --------------------------
    def _build_pc_conversation(
        self, prompt: list[dict], completion: list[dict], tools: Any, train_on: str, with_display: bool
    ) -> BuiltExample:
        resolved = self._require_template()
        notes: list[str] = []
        template = resolved.text
        method = train_on
        if train_on in ("assistant", "last_assistant"):
            template = self.training_template.text
            method = self.training_template.method
        prompt = self._prepare_messages(prompt, template, notes)
        completion = self._prepare_messages(completion, template, notes)
        messages = prompt + completion
        prompt_text = self._render(template, prompt, tools, agp=True)
        text = self._render(template, messages, tools)
        prompt_ids = self._ids(prompt_text, add_special_tokens=False)
        ids, offsets = self._encode(text, add_special_tokens=False)
        prompt_len = _common_prefix_length(prompt_ids, ids)
        if prompt_len < len(prompt_ids):
            notes.append(
                "the prompt rendered with the generation prompt is not a prefix of the full conversation; "
                f"they diverge at token {prompt_len} ({self.tokenizer.decode(prompt_ids[prompt_len:])!r})"
            )
        located: dict[int, tuple[int, int]] | None = None
        if train_on == "all":
            trained = [True] * len(ids)
        else:
            trained = [i >= prompt_len for i in range(len(ids))]
            if train_on in ("assistant", "last_assistant"):
                amask, located, method = self._assistant_mask(template, method, messages, tools, text, ids, offsets)
                trained = [a and b for a, b in zip(trained, amask, strict=True)]
        rules = {}
        if train_on != "all":
            first = len(prompt) if train_on == "completion" else 0
            rules = self._apply_exclusions(
                template, messages, tools, text, offsets, trained, located, self._exclusions(messages, train_on), first
            )
        rules.update(self._mask_reasoning(text, offsets, trained))
        spans = self._message_spans(template, messages, tools, text, located) if with_display else []
        reasons = {"system": "system", "user": "user", "tool": "tool", "assistant": "context"}
        if not with_display or not spans:
            boundary = offsets[prompt_len][0] if prompt_len < len(ids) else len(text)
            spans = [(0, boundary, "prompt", None), (boundary, len(text), "completion", None)]
            reasons = {"prompt": "prompt"}
        return self._finish(
            ids, offsets, text, trained, spans, "prompt_completion", train_on, method, notes, reasons, with_display,
            rules,
        )

    # conversations -------------------------------------------------------------------------------------
    def _build_conversation(self, messages: list[dict], tools: Any, train_on: str, with_display: bool) -> BuiltExample:
        resolved = self._require_template()
        notes: list[str] = []
        if train_on == "all":
            template, method = resolved.text, "all"
        else:
            template, method = self.training_template.text, self.training_template.method
        messages = self._prepare_messages(messages, template, notes)
        text = self._render(template, messages, tools)
        ids, offsets = self._encode(text, add_special_tokens=False)
        located: dict[int, tuple[int, int]] | None = None
        rules: dict[int, str] = {}
        if train_on == "all":
            trained = [True] * len(ids)
            if any(message_excluded(m) for m in messages):
                notes.append("train_on: all trains every token; the messages marked train: false are trained too")
        else:
            trained, located, method = self._assistant_mask(template, method, messages, tools, text, ids, offsets)
            rules = self._apply_exclusions(
                template, messages, tools, text, offsets, trained, located, self._exclusions(messages, train_on)
            )
        rules.update(self._mask_reasoning(text, offsets, trained))
        if method == "render-search":
            notes.extend(_dropped_messages_note(messages, text))
        spans = self._message_spans(template, messages, tools, text, located) if with_display else []
        reasons = {"system": "system", "user": "user", "tool": "tool", "assistant": "template"}
        return self._finish(
            ids, offsets, text, trained, spans, "conversation", train_on, method, notes, reasons, with_display, rules
        )

    # -- locating the assistant turns -------------------------------------------------------------------
    def _assistant_mask(
        self,
        template: str,
        method: str,
        messages: list[dict],
        tools: Any,
        text: str,
        ids: list[int],
        offsets: list[tuple[int, int]],
    ) -> tuple[list[bool], dict[int, tuple[int, int]] | None, str]:
        """The tokens of every assistant turn, the character span of each turn when it was located here (None for
        the marker methods, whose blocks transformers finds), and the method this row was read with."""
        if method in ("markers", "trl-patched"):
            try:
                out = self.tokenizer.apply_chat_template(
                    [_for_template(m) for m in messages],
                    tools=tools,
                    chat_template=template,
                    tokenize=True,
                    return_dict=True,
                    return_assistant_tokens_mask=True,
                )
            except Exception as exc:
                raise MaskError(f"the chat template failed on this conversation: {exc}", "messages") from None
            if list(out["input_ids"]) != ids:  # cannot happen unless the tokenizer is non-deterministic
                raise MaskError("internal: tokenising the rendered text twice gave different tokens", "messages")
            return [bool(m) for m in out["assistant_masks"]], None, method
        wanted = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        located, how = self._locate_turns(template, messages, tools, text, wanted)
        return _tokens_in_spans(list(located.values()), offsets, len(ids)), located, how

    def _locate_turns(
        self, template: str, messages: list[dict], tools: Any, text: str, wanted: list[int]
    ) -> tuple[dict[int, tuple[int, int]], str]:
        """Character span of each assistant message in ``wanted`` within ``text`` (the full rendering), and how it
        was found: ``render-diff`` when every turn is what rendering it adds after the generation prompt (the
        template is prefix-preserving for this row), else ``render-search`` for the whole row."""
        spans: dict[int, tuple[int, int]] = {}
        try:
            for i in wanted:
                before = self._render(template, messages[:i], tools, agp=True)
                upto = self._render(template, messages[: i + 1], tools)
                if not upto.startswith(before) or not text.startswith(upto):
                    break
                if len(upto) > len(before):
                    spans[i] = (len(before), len(upto))
            else:
                return spans, "render-diff"
        except MaskError:  # a partial conversation the template refuses: the full rendering decides
            pass
        spans = {}
        floor = 0
        for i in wanted:
            span = self._search_turn(template, messages, tools, text, i, floor)
            spans[i] = span
            floor = span[1]
        return spans, "render-search"

    def _search_turn(
        self, template: str, messages: list[dict], tools: Any, text: str, i: int, floor: int
    ) -> tuple[int, int]:
        """Locate assistant message ``i`` in the full rendering ``text``, after character ``floor`` (the previous
        answer's end). The conversation is rendered again with this message's content replaced by a sentinel; the
        sentinel must appear exactly once and the rest of the text must be unchanged, so the content is exactly
        ``text[len(before):len(text) - len(after)]``. The answer then starts where the generation prompt would end
        (whitespace the template writes before the answer that the generation prompt does not end with is the
        model's to write) and ends with the turn: where rendering the conversation up to this message ends when that
        is a prefix of ``text``, else after the end-of-turn token that follows the content."""
        where = f"messages[{i}]"
        sentinel = "SftStudioAnswer" + str(i)
        while sentinel in text:
            sentinel += "X"
        probe = [dict(m) for m in messages]
        probe[i]["content"] = sentinel
        rendered = self._render(template, probe, tools)
        at = rendered.find(sentinel)
        if at < 0:
            raise MaskError(
                f"cannot locate the assistant turn at {where}: the chat template does not write its content into the "
                "rendering (a tool-call turn of a template that is not prefix-preserving?), so its tokens cannot be "
                "found safely; use train_on: all, or a template with {% generation %} markers.",
                where,
            )
        if rendered.find(sentinel, at + 1) >= 0:
            raise MaskError(
                f"the assistant turn at {where} is ambiguous: the chat template writes its content in more than one "
                "place; use train_on: all, or a template with {% generation %} markers.",
                where,
            )
        before, after = rendered[:at], rendered[at + len(sentinel):]
        if not (text.startswith(before) and text.endswith(after) and len(before) + len(after) <= len(text)):
            raise MaskError(
                f"the assistant turn at {where} is ambiguous: replacing its content changes other parts of the "
                "rendering; use train_on: all, or a template with {% generation %} markers.",
                where,
            )
        c0, c1 = len(before), len(text) - len(after)
        if c0 < floor:
            raise MaskError(f"the assistant turns are out of order in the rendering at {where}", where)
        start = c0
        pad = len(before) - len(before.rstrip())
        if pad:
            try:
                prompt = self._render(template, messages[:i], tools, agp=True)
                pad -= len(prompt) - len(prompt.rstrip())
            except MaskError:
                pad = 0
            if pad > 0:
                start = max(floor, c0 - pad)
        end = c1
        try:
            upto = self._render(template, messages[: i + 1], tools)
        except MaskError:
            upto = ""
        if upto and text.startswith(upto) and len(upto) >= c1:
            end = len(upto)
        else:
            rest = text[c1:]
            stripped = rest.lstrip()
            for marker in self._end_of_turn_markers():
                if stripped.startswith(marker):
                    end = c1 + (len(rest) - len(stripped)) + len(marker)
                    break
        return start, end

    def _end_of_turn_markers(self) -> tuple[str, ...]:
        """Tokens that close a turn: EOS and the vocabulary's end-of-turn control tokens."""
        if self._end_markers is None:
            names = set(getattr(self.tokenizer, "all_special_tokens", []) or [])
            added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
            names.update(getattr(t, "content", str(t)) for t in added.values())
            found = [n for n in names if _END_OF_TURN.search(n)]
            eos = self.tokenizer.eos_token
            self._end_markers = tuple(dict.fromkeys([eos] if eos else [])) + tuple(
                sorted((n for n in found if n != eos), key=len, reverse=True)
            )
        return self._end_markers

    # -- mask rules -------------------------------------------------------------------------------------
    def _exclusions(self, messages: list[dict], train_on: str) -> dict[int, str]:
        """Assistant messages taken out of the loss, with the rule that takes them out."""
        out = {i: "marked" for i, m in enumerate(messages) if m.get("role") == "assistant" and message_excluded(m)}
        if train_on == "last_assistant":
            last = _last_assistant(messages)
            for i, m in enumerate(messages):
                if m.get("role") == "assistant" and i != last:
                    out.setdefault(i, "last_assistant")
        return out

    def _apply_exclusions(
        self,
        template: str,
        messages: list[dict],
        tools: Any,
        text: str,
        offsets: list[tuple[int, int]],
        trained: list[bool],
        located: dict[int, tuple[int, int]] | None,
        exclude: dict[int, str],
        first: int = 0,
    ) -> dict[int, str]:
        """Untrain the tokens of the excluded assistant messages (in place); returns token -> rule. A trained run of
        tokens (a marker block, a completion) that holds an excluded answer and no other answer is untrained whole,
        so a masked answer's role header or end-of-turn token is not left trained."""
        exclude = {i: why for i, why in exclude.items() if i >= first}
        if not exclude or not any(trained):
            return {}
        wanted = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and i >= first]
        if located is None or any(i not in located for i in wanted):
            located, _ = self._locate_turns(template, messages, tools, text, wanted)
        index = _TokenIndex(offsets)
        ranges = {i: index.tokens(span) for i, span in located.items() if i >= first}
        runs = _runs(trained)
        owners = [{i for i, r in ranges.items() if r and r[0] < b and r[-1] >= a} for a, b in runs]
        rules: dict[int, str] = {}
        for i, why in exclude.items():
            toks = set(ranges.get(i, []))
            for (a, b), owner in zip(runs, owners, strict=True):
                if i in owner and owner <= set(exclude):
                    toks.update(range(a, b))
            for k in toks:
                if trained[k]:
                    trained[k] = False
                    rules[k] = why
        return rules

    def _mask_reasoning(self, text: str, offsets: list[tuple[int, int]], trained: list[bool]) -> dict[int, str]:
        """Untrain the tokens of reasoning blocks per ``reasoning`` (in place); returns token -> rule."""
        if self.reasoning == "train" or not any(trained):
            return {}
        rules: dict[int, str] = {}
        for start, end, empty in reasoning_blocks(text, offsets, trained):
            if self.reasoning == "mask_empty" and not empty:
                continue
            why = "empty_reasoning" if empty and self.reasoning == "mask_empty" else "reasoning"
            for k, (s, e) in enumerate(offsets):
                if e <= s or not trained[k]:
                    continue
                piece = text[s:e]
                core_s = s + (len(piece) - len(piece.lstrip()))
                core_e = e - (len(piece) - len(piece.rstrip()))
                inside = (start <= s and e <= end) if core_s >= core_e else (start <= core_s and core_e <= end)
                if inside:
                    trained[k] = False
                    rules[k] = why
        return rules

    # -- display ----------------------------------------------------------------------------------------
    def _message_spans(
        self,
        template: str,
        messages: list[dict],
        tools: Any,
        text: str,
        located: dict[int, tuple[int, int]] | None = None,
    ) -> list[tuple[int, int, str, int | None]]:
        """Character segment of each message, from rendering growing prefixes. Where the template is not
        prefix-preserving, the rest is found by searching each message's content in order (and the located assistant
        turns); what is found nowhere is attributed to no message."""
        spans: list[tuple[int, int, str, int | None]] = []
        start = 0
        done = 0
        for i, message in enumerate(messages):
            try:
                upto = self._render(template, messages[: i + 1], tools)
            except MaskError:
                break
            if not text.startswith(upto) or len(upto) < start:
                break
            # Text before the message's own content is the template's: role headers, and anything it adds by
            # itself (e.g. SmolLM2's default system prompt) — attributed to no message, so shown as template.
            content = message.get("content")
            at = -1
            if isinstance(content, str) and content.strip():
                at = text.find(content, start, len(upto))
                if at < 0:
                    at = text.find(content.strip(), start, len(upto))
                if at < 0 and not message.get("tool_calls"):
                    # the template leaves this message out here (Mistral v0.3's system prompt): template text
                    spans.append((start, len(upto), "", None))
                    start = len(upto)
                    done = i + 1
                    continue
            if at > start:
                spans.append((start, at, "", None))
                spans.append((at, len(upto), message.get("role", "?"), i))
            else:
                spans.append((start, len(upto), message.get("role", "?"), i))
            start = len(upto)
            done = i + 1
        for i in range(done, len(messages)):
            message = messages[i]
            if located and i in located and located[i][0] >= start:
                s, e = located[i]
            else:
                content = message.get("content")
                needle = content.strip() if isinstance(content, str) else ""
                s = text.find(needle, start) if needle else -1
                if s < 0:
                    continue
                e = s + len(needle)
            if s > start:
                spans.append((start, s, "", None))
            spans.append((s, e, message.get("role", "?"), i))
            start = e
        return spans

    # -- shared tail ------------------------------------------------------------------------------------
    def _finish(
        self,
        ids: list[int],
        offsets: list[tuple[int, int]],
        text: str,
        trained: Sequence[bool],
        spans: list[tuple[int, int, str, int | None]],
        kind: str,
        train_on: str,
        method: str,
        notes: list[str],
        reasons: dict[str, str],
        with_display: bool = True,
        rules: dict[int, str] | None = None,
    ) -> BuiltExample:
        rules = rules or {}
        tokens: list[TokenInfo] = []
        n = len(ids)
        limit = n if self.max_length is None else min(n, self.max_length)
        if not with_display:  # training and audits need ids and labels only; decoding pieces is the slow part
            spans, offsets_for_display = [], []
        else:
            offsets_for_display = offsets
        spans = [sp for sp in spans if sp[1] > sp[0]]  # a message may render to nothing (folded system prompt)
        span_i = 0
        for k, (tid, (s, e)) in enumerate(zip(ids, offsets_for_display, strict=False)):
            # a token is attributed by its first visible character (SentencePiece's "▁word" starts at the space)
            piece_text = text[s:e]
            at = s + (len(piece_text) - len(piece_text.lstrip())) if piece_text.strip() else s
            while span_i < len(spans) and at >= spans[span_i][1]:
                span_i += 1
            role, turn = None, None
            if span_i < len(spans) and spans[span_i][0] <= at:
                role, turn = spans[span_i][2] or None, spans[span_i][3]
            is_trained = bool(trained[k]) and k < limit
            reason = None
            if k >= limit:
                reason = "truncated"
            elif k in rules:
                reason = rules[k]
            elif not trained[k]:
                reason = reasons.get(role or "", "template")
            piece = self.tokenizer.decode([tid], clean_up_tokenization_spaces=False)
            if "\ufffd" in piece and e > s:
                piece = text[s:e]
            tokens.append(TokenInfo(tid, piece, s, e, role, turn, is_trained, reason, tid in self._special_ids))
        labels = [tid if t else IGNORE_INDEX for tid, t in zip(ids, trained, strict=True)]
        kept_ids, kept_labels = ids[:limit], labels[:limit]
        truncated = limit < n
        eos_lost = False
        if truncated:
            last_trained = max((k for k, lab in enumerate(labels) if lab != IGNORE_INDEX), default=-1)
            eos_lost = last_trained >= limit
        masked_by: dict[str, int] = {}
        for k, why in rules.items():
            if k < limit:
                masked_by[why] = masked_by.get(why, 0) + 1
        dropped = None
        if not any(lab != IGNORE_INDEX for lab in kept_labels):
            if any(lab != IGNORE_INDEX for lab in labels):
                dropped = (
                    f"no trained token within max_length={self.max_length}: the first trained token is at position "
                    f"{next(k for k, lab in enumerate(labels) if lab != IGNORE_INDEX)} of {n}"
                )
            elif masked_by:
                dropped = "nothing left to train: every answer token is masked by " + "; ".join(
                    REASONS[why] for why in masked_by
                )
            else:
                dropped = "no token of this example is trained (empty answer?)"
        return BuiltExample(
            input_ids=kept_ids,
            labels=kept_labels,
            tokens=tokens,
            text=text,
            kind=kind,
            train_on=train_on,
            method=method,
            n_tokens=n,
            truncated=truncated,
            eos_lost=eos_lost,
            dropped=dropped,
            notes=notes,
            masked_by=masked_by,
        )


def build_example(
    example: dict,
    tokenizer: Any,
    template: ResolvedTemplate | None,
    train_on: str = "auto",
    max_length: int | None = 1024,
    reasoning: str = "train",
) -> BuiltExample:
    """Convenience wrapper: build one example (see :class:`ExampleBuilder`)."""
    return ExampleBuilder(tokenizer, template, train_on, max_length, reasoning).build(example)


def reasoning_blocks(
    text: str, offsets: Sequence[tuple[int, int]] | None = None, trained: Sequence[bool] | None = None
) -> list[tuple[int, int, bool]]:
    """Reasoning blocks in ``text``: ``(start, end, empty)`` character spans from an opening tag to the closing
    tag and the whitespace after it; ``empty`` when nothing but whitespace is inside. A closing tag without an
    opening one (DeepSeek-R1's generation prompt opens the block) starts at the trained run of tokens it ends, when
    ``offsets``/``trained`` are given."""
    blocks: list[tuple[int, int, bool]] = []
    for opener, closer in REASONING_TAGS:
        pos = 0
        while True:
            close = text.find(closer, pos)
            if close < 0:
                break
            open_at = text.rfind(opener, pos, close)
            if open_at >= 0:
                start, inner = open_at, text[open_at + len(opener):close]
            elif offsets is not None and trained is not None:
                start = _trained_run_start(close, offsets, trained)
                if start is None:
                    pos = close + len(closer)
                    continue
                inner = text[start:close]
            else:
                pos = close + len(closer)
                continue
            end = close + len(closer)
            while end < len(text) and text[end].isspace():
                end += 1
            blocks.append((start, end, not inner.strip()))
            pos = close + len(closer)
    return sorted(blocks)


def _trained_run_start(char: int, offsets: Sequence[tuple[int, int]], trained: Sequence[bool]) -> int | None:
    k = next((k for k, (s, e) in enumerate(offsets) if s <= char < e), None)
    if k is None or not trained[k]:
        return None
    while k > 0 and trained[k - 1]:
        k -= 1
    return offsets[k][0]


def _last_assistant(messages: Sequence[dict]) -> int | None:
    return max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)


def _dropped_messages_note(messages: Sequence[dict], text: str) -> list[str]:
    """Messages whose content the training text does not contain (Mistral v0.3 writes the system prompt only into a
    final user turn, so a conversation that ends with an answer is trained without it)."""
    notes = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if m.get("role") in ("system", "user") and isinstance(content, str) and content.strip():
            if content.strip() not in text:
                notes.append(
                    f"the chat template leaves messages[{i}] ({m['role']}) out of the training text; the model trains "
                    "without it (at inference this template may place it elsewhere: compare the Template page)"
                )
    return notes


# Names of control tokens that close a turn (EOS is always one).
_END_OF_TURN = re.compile(r"(?i)^(</s>|<\|eot_id\|>|<\|im_end\|>|<end_of_turn>|<\|end\|>|<\|endoftext\|>|<eos>|"
                          r"<｜end▁of▁sentence｜>|<\|end_of_text\|>|<turn\|>|<\|return\|>)$")


class _TokenIndex:
    """Which tokens hold which characters (built once per row)."""

    def __init__(self, offsets: Sequence[tuple[int, int]]) -> None:
        self.n = len(offsets)
        self.offsets = offsets
        self.char_to_token: dict[int, int] = {}
        for k, (s, e) in enumerate(offsets):
            for c in range(s, e):
                self.char_to_token.setdefault(c, k)

    def tokens(self, span: tuple[int, int]) -> list[int]:
        s, e = span
        first = _token_at(self.char_to_token, s, e, forward=True)
        if first is None:
            return []
        last = _token_at(self.char_to_token, e - 1, s - 1, forward=False)
        stop = self.n - 1 if last is None else last
        return list(range(first, stop + 1))


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """Maximal runs of True as (start, stop) index pairs."""
    runs, start = [], None
    for k, flag in enumerate(flags):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            runs.append((start, k))
            start = None
    if start is not None:
        runs.append((start, len(flags)))
    return runs


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _first_difference(a: str, b: str) -> str:
    k = _common_prefix_length(a, b)  # type: ignore[arg-type]
    return f"at character {k} ({a[k:k + 30]!r} vs {b[k:k + 30]!r})"


def _tokens_in_spans(spans: list[tuple[int, int]], offsets: list[tuple[int, int]], n: int) -> list[bool]:
    """Tokens from the one holding a span's first character to the one holding its last, inclusive — the same
    rule as transformers' ``return_assistant_tokens_mask``."""
    mask = [False] * n
    char_to_token: dict[int, int] = {}
    for k, (s, e) in enumerate(offsets):
        for c in range(s, e):
            char_to_token.setdefault(c, k)
    for s, e in spans:
        first = _token_at(char_to_token, s, e, forward=True)
        last = _token_at(char_to_token, e - 1, s - 1, forward=False)
        if first is None:
            continue
        stop = n - 1 if last is None else last
        for k in range(first, stop + 1):
            mask[k] = True
    return mask


def _token_at(char_to_token: dict[int, int], c: int, bound: int, forward: bool) -> int | None:
    # A character may have no token when a tokenizer trims whitespace from offsets; look at the neighbours
    # inside the span (transformers would return None there and mis-handle the span).
    step = 1 if forward else -1
    while (c < bound) if forward else (c > bound):
        if c in char_to_token:
            return char_to_token[c]
        c += step
    return None
