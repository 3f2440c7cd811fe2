"""Chat templates: resolve which template a run uses, render conversations, and decide how assistant
tokens are found for assistant-only loss.

Three ways to find the assistant tokens, tried in this order (:func:`assistant_mask_method`):

``markers``
    The template already has ``{% generation %}`` blocks: transformers' own
    ``return_assistant_tokens_mask`` is used, exactly as TRL does.
``trl-patched``
    TRL ships a training version of this exact template (``trl.chat_template_utils``); it is used for
    training, exactly as TRL does with ``assistant_only_loss=True``.
``render-diff``
    Any other template (Llama 3.1/3.2, Mistral, custom ones — TRL refuses these). Each assistant turn's
    characters are the difference between rendering the conversation up to the turn with the generation
    prompt and rendering it including the turn. This is only sound when the template is
    *prefix-preserving* for the row; :mod:`core.masks` verifies that for every row and refuses the row
    (a clear problem, never wrong tokens) when it is not.

Heavy libraries are imported lazily so that the GUI can import this module at start-up.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_TEMPLATES",
    "TemplateError",
    "ResolvedTemplate",
    "resolve_chat_template",
    "render_conversation",
    "has_generation_markers",
    "training_template_for",
    "template_renders_tool_calls",
    "missing_special_tokens",
    "inference_vs_training",
]


class TemplateError(Exception):
    """A chat template cannot be found, read or rendered. The message says what to change."""


_GEN_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")

# Built-in templates for models without one (GPT-2, OPT, base models). They carry {% generation %}
# markers, so assistant-only loss works with them directly; the closing end-of-turn token is inside the
# marked block because the model has to learn to stop.
_CHATML = """{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}{{- '# Tools\\n\\nYou may call one or more functions. Function signatures are within <tools></tools>:\\n<tools>' }}{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}{%- endif %}
{%- for message in messages %}
{%- if message['role'] == 'system' and tools and loop.first %}
{%- elif message['role'] == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] }}
{%- if message.get('tool_calls') %}{%- for call in message['tool_calls'] %}{%- if call.function is defined %}{%- set call = call.function %}{%- endif %}{{- '<tool_call>\\n{"name": "' + call.name + '", "arguments": ' + (call.arguments | tojson) + '}\\n</tool_call>' }}{%- endfor %}{%- endif %}
{{- '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}
{%- else %}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""

_LLAMA3 = """{{- bos_token }}
{%- for message in messages %}
{%- if message['role'] == 'assistant' %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% generation %}{{- message['content'] | trim }}
{%- if message.get('tool_calls') %}{%- for call in message['tool_calls'] %}{%- if call.function is defined %}{%- set call = call.function %}{%- endif %}{{- '{"name": "' + call.name + '", "parameters": ' + (call.arguments | tojson) + '}' }}{%- endfor %}{%- endif %}
{{- '<|eot_id|>' }}{% endgeneration %}
{%- else %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"""

_MISTRAL = """{{- bos_token }}
{%- set system = namespace(text='') %}
{%- for message in messages %}
{%- if message['role'] == 'system' %}{%- set system.text = message['content'] + '\\n\\n' %}
{%- elif message['role'] == 'user' or message['role'] == 'tool' %}
{{- '[INST] ' + system.text + message['content'] + ' [/INST]' }}{%- set system.text = '' %}
{%- elif message['role'] == 'assistant' %}
{% generation %}{{- message['content'] }}
{%- if message.get('tool_calls') %}{{- message['tool_calls'] | tojson }}{%- endif %}
{{- eos_token }}{% endgeneration %}
{%- endif %}
{%- endfor %}"""

_GEMMA = """{{- bos_token }}
{%- set system = namespace(text='') %}
{%- for message in messages %}
{%- if message['role'] == 'system' %}{%- set system.text = message['content'] + '\\n\\n' %}
{%- elif message['role'] == 'assistant' %}
{{- '<start_of_turn>model\\n' }}{% generation %}{{- message['content'] | trim }}
{%- if message.get('tool_calls') %}{{- message['tool_calls'] | tojson }}{%- endif %}
{{- '<end_of_turn>' }}{% endgeneration %}{{- '\\n' }}
{%- else %}
{{- '<start_of_turn>user\\n' + system.text + message['content'] | trim + '<end_of_turn>\\n' }}{%- set system.text = '' %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"""

_ALPACA = """{%- for message in messages %}
{%- if message['role'] == 'system' %}{{- message['content'] + '\\n\\n' }}
{%- elif message['role'] == 'assistant' %}
{{- '### Response:\\n' }}{% generation %}{{- message['content'] }}
{%- if message.get('tool_calls') %}{{- message['tool_calls'] | tojson }}{%- endif %}
{{- eos_token }}{% endgeneration %}{{- '\\n\\n' }}
{%- else %}
{{- '### Instruction:\\n' + message['content'] + '\\n\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '### Response:\\n' }}{%- endif %}"""

_OPENASSISTANT = """{%- for message in messages %}
{%- if message['role'] == 'system' %}{{- '<|system|>' + message['content'] + '<|endoftext|>' }}
{%- elif message['role'] == 'assistant' %}
{{- '<|assistant|>' }}{% generation %}{{- message['content'] }}
{%- if message.get('tool_calls') %}{{- message['tool_calls'] | tojson }}{%- endif %}
{{- '<|endoftext|>' }}{% endgeneration %}
{%- else %}
{{- '<|prompter|>' + message['content'] + '<|endoftext|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}"""

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": _CHATML,
    "llama3": _LLAMA3,
    "mistral": _MISTRAL,
    "gemma": _GEMMA,
    "alpaca": _ALPACA,
    "openassistant": _OPENASSISTANT,
}

# Special tokens each built-in relies on (besides bos/eos), to warn when a vocabulary lacks them.
_BUILTIN_SPECIALS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "mistral": (),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "alpaca": (),
    "openassistant": ("<|prompter|>", "<|assistant|>", "<|endoftext|>"),
}


@dataclass(frozen=True)
class ResolvedTemplate:
    """The chat template a run uses at inference, and where it came from."""

    text: str
    source: str  # "model" | "builtin" | "file"
    name: str  # "model's own", a built-in name, or the file path

    @property
    def has_markers(self) -> bool:
        return has_generation_markers(self.text)


def has_generation_markers(template: str | None) -> bool:
    """True when the template marks assistant output with ``{% generation %}`` blocks."""
    return bool(template) and bool(_GEN_RE.search(template))


def resolve_chat_template(tokenizer: Any, spec: str | None, base_dir: str | Path | None = None) -> ResolvedTemplate:
    """Pick the chat template from ``model.chat_template``: None = the model's own, a built-in name, or a
    path to a ``.jinja`` file (relative to ``base_dir``)."""
    if spec is None or spec == "":
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):
            own = own.get("default")
        if not own:
            raise TemplateError(
                "the model has no chat template. Set model.chat_template to a built-in ("
                + ", ".join(BUILTIN_TEMPLATES)
                + ") or to a .jinja file."
            )
        return ResolvedTemplate(own, "model", "model's own")
    if spec in BUILTIN_TEMPLATES:
        return ResolvedTemplate(BUILTIN_TEMPLATES[spec], "builtin", spec)
    path = Path(spec)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if path.suffix in (".jinja", ".j2", ".txt") or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TemplateError(f"{path}: chat template file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{path}: cannot read chat template: {exc}") from None
        _check_syntax(text, str(path))
        return ResolvedTemplate(text, "file", str(path))
    raise TemplateError(
        f"model.chat_template: '{spec}' is neither a built-in ({', '.join(BUILTIN_TEMPLATES)}) nor an existing .jinja file"
    )


def _check_syntax(text: str, where: str) -> None:
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:  # parsing runs nothing, but use the same sandbox transformers renders in
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(
            _GEN_RE.sub("", text).replace("{% endgeneration %}", "").replace("{%- endgeneration %}", "")
        )
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{where}:{exc.lineno}: chat template syntax error: {exc.message}") from None


def render_conversation(
    tokenizer: Any,
    template: str,
    messages: list[dict],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """Render messages to text with ``template``. Raises :class:`TemplateError` with the template's own
    message when it refuses the conversation (e.g. Gemma's 'roles must alternate')."""
    try:
        return tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as exc:  # jinja2 raises TemplateError/UndefinedError/TypeError/… from user templates
        raise TemplateError(f"the chat template failed on this conversation: {exc}") from None


@dataclass(frozen=True)
class TrainingTemplate:
    """The template used to build training sequences for assistant-only loss, and how the assistant tokens
    are located (see the module docstring)."""

    text: str
    method: str  # "markers" | "trl-patched" | "render-diff"


def training_template_for(tokenizer: Any, resolved: ResolvedTemplate) -> TrainingTemplate:
    """Choose the training template and mask method for assistant-only loss (same choice as TRL where
    TRL has one)."""
    if resolved.has_markers:
        return TrainingTemplate(resolved.text, "markers")
    from trl.chat_template_utils import get_training_chat_template

    probe = _TemplateView(tokenizer, resolved.text)
    try:
        patched = get_training_chat_template(probe)
    except ValueError:
        patched = None
    except Exception:  # a template that cannot even render TRL's probes is handled per row later
        patched = None
    if patched:
        return TrainingTemplate(patched, "trl-patched")
    return TrainingTemplate(resolved.text, "render-diff")


class _TemplateView:
    """A tokenizer stand-in whose ``chat_template`` is the one we resolved (TRL inspects that attribute)."""

    def __init__(self, tokenizer: Any, template: str) -> None:
        self._tokenizer = tokenizer
        self.chat_template = template

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("chat_template", self.chat_template)
        return self._tokenizer.apply_chat_template(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def template_renders_tool_calls(tokenizer: Any, template: str) -> bool:
    """Whether the template shows an assistant message's ``tool_calls`` (many simple templates drop them,
    which would leave a tool-calling turn empty)."""
    probe = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "zz_probe_fn", "arguments": {"a": 1}}}],
        },
    ]
    try:
        return "zz_probe_fn" in render_conversation(tokenizer, template, probe)
    except TemplateError:
        return False


def tool_calls_as_text(message: dict) -> dict:
    """An assistant tool-call message with the calls written into ``content`` as JSON, for templates that
    do not render ``tool_calls``."""
    calls = [c.get("function", c) for c in message.get("tool_calls") or []]
    text = "\n".join(json.dumps({"name": c.get("name"), "arguments": c.get("arguments")}, ensure_ascii=False) for c in calls)
    content = message.get("content") or ""
    return {"role": "assistant", "content": (content + "\n" + text) if content else text}


def missing_special_tokens(tokenizer: Any, resolved: ResolvedTemplate) -> list[str]:
    """Special tokens a template writes that the vocabulary does not have as single tokens (they would be
    split into pieces and the model would have to learn them from scratch). For built-ins the known list is
    used; for the model's own or a file template, the ``<|...|>`` / ``<start_of_turn>`` literals it contains."""
    vocab = tokenizer.get_vocab()
    if resolved.source == "builtin":
        wanted: tuple[str, ...] = _BUILTIN_SPECIALS.get(resolved.name, ())
    else:  # the model's own or a file: the control tokens it writes as string literals
        wanted = tuple(dict.fromkeys(m.group(1) for m in _SPECIAL_LITERAL.finditer(resolved.text)))
    return [tok for tok in wanted if tok not in vocab]


# '<|im_start|>', "<start_of_turn>": literals in a template that name a control token.
_SPECIAL_LITERAL = re.compile(r"""['"](<\|[A-Za-z0-9_]+\|>|<(?:start|end)_of_turn>)""")


def inference_vs_training(
    tokenizer: Any,
    template: ResolvedTemplate,
    messages: list[dict],
    tools: list[dict] | None = None,
    training: str | None = None,
) -> tuple[str, str, str]:
    """What the model is trained on next to what it sees at inference, for the Template page.

    Returns ``(training_text, inference_text, note)``: the conversation rendered as training renders it (``training``,
    default the template assistant-only training uses: TRL's training version where TRL has one, else the template
    itself); the prompt the model gets at inference before it writes the conversation's final answer (the
    template itself, the history up to that answer, with the generation prompt); and one or two sentences on how
    they differ, in plain words (earlier answers' reasoning dropped at inference, a system prompt only one of them
    has, an opened reasoning block in the generation prompt, ...)."""
    from core.masks import REASONING_TAGS

    if training is None:
        training = training_template_for(tokenizer, template).text
    plain = [{k: v for k, v in m.items() if k != "train"} for m in messages]
    training_text = render_conversation(tokenizer, training, plain, tools)
    last = max((i for i, m in enumerate(plain) if m.get("role") == "assistant"), default=None)
    if last is None:
        inference_text = render_conversation(tokenizer, template.text, plain, tools, add_generation_prompt=True)
        return training_text, inference_text, "The conversation has no answer: nothing is trained on it."
    inference_text = render_conversation(tokenizer, template.text, plain[:last], tools, add_generation_prompt=True)
    answer = plain[last].get("content") or ""
    cut = training_text.rfind(answer.strip()) if answer.strip() else -1
    training_prompt = training_text[:cut] if cut >= 0 else training_text
    if training_text.startswith(inference_text) or training_prompt == inference_text:
        return training_text, inference_text, (
            "At inference the model sees the same text as in training before it writes the final answer."
        )
    notes: list[str] = []

    def blocks(text: str) -> int:
        return sum(text.count(closer) for _, closer in REASONING_TAGS)

    in_training, at_inference = blocks(training_prompt), blocks(inference_text)
    opened = any(inference_text.rstrip().endswith(opener) for opener, _ in REASONING_TAGS)
    if in_training > at_inference:
        notes.append(
            f"At inference the chat template drops the reasoning of earlier answers ({at_inference} reasoning "
            f"block(s) in the prompt, {in_training} in the training text): in training every answer keeps its "
            "<think> block (TRL's training template keeps one, empty when there is none, in every turn), so the "
            "model learns to answer with its earlier reasoning in view, which it will not see at inference."
        )
    for i, m in enumerate(plain[:last]):
        content = m.get("content")
        if m.get("role") not in ("system", "user") or not isinstance(content, str) or not content.strip():
            continue
        in_train, in_infer = content.strip() in training_text, content.strip() in inference_text
        if in_infer and not in_train:
            notes.append(
                f"The {m['role']} message (messages[{i}]) is not in the training text but is in the inference "
                "prompt (this template writes it only into the last user turn): the model trains without it and "
                "sees it at inference."
            )
        elif in_train and not in_infer:
            notes.append(f"The {m['role']} message (messages[{i}]) is in the training text but not at inference.")
    if opened:
        notes.append(
            "The generation prompt opens a reasoning block, so at inference the model starts inside it; train on "
            "answers that begin with their reasoning."
        )
    if not notes:
        k = next((j for j, (a, b) in enumerate(zip(training_prompt, inference_text, strict=False)) if a != b),
                 min(len(training_prompt), len(inference_text)))
        notes.append(
            f"The inference prompt differs from the training text at character {k} "
            f"({inference_text[k:k + 30]!r} at inference, {training_prompt[k:k + 30]!r} in training)."
        )
    return training_text, inference_text, " ".join(notes)
