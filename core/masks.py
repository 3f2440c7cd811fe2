"""The one function that turns an example into what the model trains on.

:class:`ExampleBuilder` turns a normalised example (TRL's formats: ``text``; ``prompt``/``completion`` as
strings or message lists; ``messages`` + ``tools``) into ``input_ids``, ``labels`` (−100 where no loss)
and per-token display data. The token view shows its output; the trainer receives a dataset mapped
through it (TRL keeps an existing ``labels`` column as is), so the preview *is* the training data.

It follows TRL 1.16's ``SFTTrainer._prepare_dataset`` token for token where TRL can do the job (tests
compare the two) and goes further where TRL cannot: assistant-only loss for any prefix-preserving
template (``render-diff``, see :mod:`core.templates`), tool calls kept visible for templates that do not
render ``tool_calls``, and truncation / empty rows reported instead of silently dropped.
"""

from __future__ import annotations

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
TRAIN_ON_CHOICES = ("auto", "all", "completion", "assistant")

# Why a token carries no loss. None on a TokenInfo means the token is trained.
REASONS = {
    "system": "system prompt",
    "user": "user turn",
    "tool": "tool result",
    "prompt": "prompt (only the completion is trained)",
    "template": "chat-template text (role headers, text the template adds), not from the data",
    "context": "earlier turn (only the last answer is trained)",
    "truncated": "beyond max_length: cut off",
}


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
    method: str  # how the mask was found: "all" | "completion" | "markers" | "trl-patched" | "render-diff"
    n_tokens: int  # before truncation
    truncated: bool
    eos_lost: bool  # truncation cut the end-of-turn token of a trained answer
    dropped: str | None = None  # why nothing of this example is trained (the trainer would skip it)
    notes: list[str] = field(default_factory=list)

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


class ExampleBuilder:
    """Builds training examples for one tokenizer + template + ``train_on`` + ``max_length``.

    Construct once per run (it inspects the template once), then call :meth:`build` per example.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: ResolvedTemplate | None,
        train_on: str = "auto",
        max_length: int | None = 1024,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.train_on = train_on
        self.max_length = max_length
        self._special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._training: TrainingTemplate | None = None
        self._tool_calls_rendered: dict[str, bool] = {}

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
            return render_conversation(self.tokenizer, template, messages, tools, add_generation_prompt=agp)
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

        Raises :class:`MaskError` when the example cannot be built (template refuses it, template not
        prefix-preserving for an assistant-only row, …). ``with_display=False`` skips work that only the
        preview needs (role attribution of template markup)."""
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
            last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
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
        return self._finish(ids, offsets, text, [True] * len(ids), spans, "text", "all", "all", [], {}, with_display)

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
        if train_on == "assistant":
            raise MaskError("train_on 'assistant' needs conversations; this row is a text prompt/completion", "prompt")
        trained = [True] * len(ids) if train_on == "all" else [i >= prompt_len for i in range(len(ids))]
        boundary = offsets[prompt_len][0] if prompt_len < len(ids) else len(text)
        spans = [(0, boundary, "prompt", None), (boundary, len(text), "completion", None)]
        reasons = {"prompt": "prompt"}
        return self._finish(
            ids, offsets, text, trained, spans, "prompt_completion", train_on, train_on, notes, reasons, with_display
        )

    # conversational prompt/completion (and messages with train_on=completion) --------------------------
    def _build_pc_conversation(
        self, prompt: list[dict], completion: list[dict], tools: Any, train_on: str, with_display: bool
    ) -> BuiltExample:
        resolved = self._require_template()
        notes: list[str] = []
        template = resolved.text
        method = train_on
        if train_on == "assistant":
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
        if train_on == "all":
            trained = [True] * len(ids)
        else:
            trained = [i >= prompt_len for i in range(len(ids))]
            if train_on == "assistant":
                amask = self._assistant_mask(template, method, messages, tools, text, ids, offsets)
                trained = [a and b for a, b in zip(trained, amask, strict=True)]
        spans = self._message_spans(template, messages, tools, text) if with_display else []
        reasons = {"system": "system", "user": "user", "tool": "tool", "assistant": "context"}
        if not with_display or not spans:
            boundary = offsets[prompt_len][0] if prompt_len < len(ids) else len(text)
            spans = [(0, boundary, "prompt", None), (boundary, len(text), "completion", None)]
            reasons = {"prompt": "prompt"}
        return self._finish(
            ids, offsets, text, trained, spans, "prompt_completion", train_on, method, notes, reasons, with_display
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
        if train_on == "all":
            trained = [True] * len(ids)
        else:
            trained = self._assistant_mask(template, method, messages, tools, text, ids, offsets)
        spans = self._message_spans(template, messages, tools, text) if with_display else []
        reasons = {"system": "system", "user": "user", "tool": "tool", "assistant": "template"}
        return self._finish(
            ids, offsets, text, trained, spans, "conversation", train_on, method, notes, reasons, with_display
        )

    def _assistant_mask(
        self,
        template: str,
        method: str,
        messages: list[dict],
        tools: Any,
        text: str,
        ids: list[int],
        offsets: list[tuple[int, int]],
    ) -> list[bool]:
        if method in ("markers", "trl-patched"):
            try:
                out = self.tokenizer.apply_chat_template(
                    messages,
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
            return [bool(m) for m in out["assistant_masks"]]
        # render-diff: each assistant turn is what rendering it adds after the generation prompt
        spans: list[tuple[int, int]] = []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            before = self._render(template, messages[:i], tools, agp=True)
            upto = self._render(template, messages[: i + 1], tools)
            if not upto.startswith(before) or not text.startswith(upto):
                where = _first_difference(before, upto) if not upto.startswith(before) else _first_difference(upto, text)
                raise MaskError(
                    f"the chat template is not prefix-preserving at messages[{i}] (the assistant turn): rendering the "
                    f"conversation up to this turn differs from the full conversation {where}. Assistant tokens cannot "
                    "be located safely; use train_on: all, or a template with {% generation %} markers.",
                    f"messages[{i}]",
                )
            if len(upto) > len(before):
                spans.append((len(before), len(upto)))
        return _tokens_in_spans(spans, offsets, len(ids))

    def _message_spans(
        self, template: str, messages: list[dict], tools: Any, text: str
    ) -> list[tuple[int, int, str, int | None]]:
        """Character segment of each message, from rendering growing prefixes; stops where the template is not
        prefix-preserving (the rest is then attributed to no message)."""
        spans: list[tuple[int, int, str, int | None]] = []
        start = 0
        for i, message in enumerate(messages):
            try:
                upto = render_conversation(self.tokenizer, template, messages[: i + 1], tools)
            except TemplateError:
                break
            if not text.startswith(upto) or len(upto) < start:
                break
            # Text before the message's own content is the template's: role headers, and anything it adds by
            # itself (e.g. SmolLM2's default system prompt) — attributed to no message, so shown as template.
            content = message.get("content")
            at = text.find(content, start, len(upto)) if isinstance(content, str) and content.strip() else -1
            if at > start:
                spans.append((start, at, "", None))
                spans.append((at, len(upto), message.get("role", "?"), i))
            else:
                spans.append((start, len(upto), message.get("role", "?"), i))
            start = len(upto)
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
    ) -> BuiltExample:
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
            while span_i < len(spans) and s >= spans[span_i][1]:
                span_i += 1
            role, turn = None, None
            if span_i < len(spans) and spans[span_i][0] <= s:
                role, turn = spans[span_i][2] or None, spans[span_i][3]
            is_trained = bool(trained[k]) and k < limit
            reason = None
            if k >= limit:
                reason = "truncated"
            elif not trained[k]:
                reason = reasons.get(role or "", "template")
                if role == "assistant" and reason == "context" and turn is not None:
                    reason = "context"
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
        dropped = None
        if not any(lab != IGNORE_INDEX for lab in kept_labels):
            if any(lab != IGNORE_INDEX for lab in labels):
                dropped = (
                    f"no trained token within max_length={self.max_length}: the first trained token is at position "
                    f"{next(k for k, lab in enumerate(labels) if lab != IGNORE_INDEX)} of {n}"
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
        )


def build_example(
    example: dict, tokenizer: Any, template: ResolvedTemplate | None, train_on: str = "auto", max_length: int | None = 1024
) -> BuiltExample:
    """Convenience wrapper: build one example (see :class:`ExampleBuilder`)."""
    return ExampleBuilder(tokenizer, template, train_on, max_length).build(example)


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
