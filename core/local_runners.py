"""Hand a GGUF export to local runners: an Ollama ``Modelfile`` written next to the file, and the one-line
commands for Ollama, LM Studio and llama.cpp (:func:`runner_commands`, :func:`runner_markdown`).

**TEMPLATE.** Ollama does not run Jinja. When a Modelfile has no TEMPLATE, Ollama compares the GGUF's
``tokenizer.chat_template`` with the Jinja text of its built-in templates and takes the closest one if it is
within 100 edits (``template.Named``, server ``detectChatTemplate``); otherwise it falls back to ``{{ .Prompt }}`` —
the raw text, no chat markup at all. A template that adds a default system prompt (SmolLM2's), or any customised
one, is further than 100 edits from every built-in, so relying on detection silently breaks the prompt format.
The studio therefore writes a TEMPLATE of its own when it can prove it equivalent: :func:`ollama_template` splits
the Jinja template into per-role wrappers by rendering marker conversations (``prefix``, a default system block,
``role prefix + content + role suffix`` per message, the generation prompt), writes those as a Go template of the
same shape as Ollama's built-ins, and :meth:`OllamaTemplate.render` reproduces what Ollama renders from it — the
export's parity check compares that with the training text on the run's own conversations. Templates that do not
decompose (content transformed, tools, roles folded together as Gemma does with system prompts) get no TEMPLATE,
and the parity report says so.

Standard library only.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Render = Callable[[list[dict], bool], str]
"""Renders messages with the Jinja chat template (second argument: add_generation_prompt)."""

_MARK = {"S1": "SFTSTUDIOSYSTEM1", "U1": "SFTSTUDIOUSER1", "A1": "SFTSTUDIOASSISTANT1",
         "U2": "SFTSTUDIOUSER2", "A2": "SFTSTUDIOASSISTANT2"}


@dataclass(frozen=True)
class OllamaTemplate:
    """A chat template as Ollama Go-template text, with the pieces it is made of."""

    prefix: str  # written once at the start
    default_system: str  # written when the conversation does not start with a system message
    roles: dict[str, tuple[str, str]]  # role -> (text before the content, text after it)
    generation: str  # the assistant header written after a final user message
    bos_text: str = ""  # the runner adds this BOS token itself (tokenizer.ggml.add_bos_token), not the template

    @property
    def text(self) -> str:
        """The Go template (no whitespace-trimming actions: every character of literal text is significant)."""
        out = [self.prefix]
        if self.default_system:
            out.append('{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
                       f"{self.default_system}{{{{ end }}}}")
        out.append("{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}")
        first = True
        for role in ("system", "user", "assistant"):
            if role not in self.roles:
                continue
            before, after = self.roles[role]
            out.append(f'{{{{ {"if" if first else "else if"} eq .Role "{role}" }}}}{before}{{{{ .Content }}}}{after}')
            if role == "user" and self.generation:
                out.append(f"{{{{ if $last }}}}{self.generation}{{{{ end }}}}")
            first = False
        out.append("{{ end }}{{ end }}")
        return "".join(out)

    def render(self, messages: Sequence[dict]) -> str:
        """What Ollama sends to the model for ``messages`` with this template (BOS included when the runner adds
        it). Ollama merges consecutive messages of one role with a blank line, as :func:`_collate` does."""
        msgs = _collate(messages)
        out = [self.bos_text, self.prefix]
        if self.default_system and (not msgs or msgs[0]["role"] != "system"):
            out.append(self.default_system)
        for i, m in enumerate(msgs):
            if m["role"] not in self.roles:
                continue
            before, after = self.roles[m["role"]]
            out.append(f"{before}{m['content']}{after}")
            if m["role"] == "user" and i == len(msgs) - 1:
                out.append(self.generation)
        return "".join(out)

    def supports(self, messages: Sequence[dict]) -> bool:
        return all(m.get("role") in self.roles and isinstance(m.get("content"), str) and not m.get("tool_calls")
                   for m in messages)


def _collate(messages: Sequence[dict]) -> list[dict]:
    out: list[dict] = []
    for m in messages:
        if out and out[-1]["role"] == m.get("role") and m.get("role") != "tool":
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{m.get('content', '')}"}
        else:
            out.append({"role": m.get("role"), "content": m.get("content", "")})
    return out


def ollama_template(render: Render, bos_text: str | None = None, add_bos: bool = False) -> OllamaTemplate | None:
    """Decompose a Jinja chat template (given as ``render``) into an :class:`OllamaTemplate`, or None when it is
    not of the per-role-wrapper shape. ``add_bos``: the runner prepends BOS itself, so a BOS the template writes
    moves out of the Go template (else the model would see two)."""
    m = _MARK

    def r(msgs: list[tuple[str, str]], gen: bool = False) -> str:
        return render([{"role": role, "content": m[key]} for role, key in msgs], gen)

    try:
        u1 = r([("user", "U1")])
        u1g = r([("user", "U1")], True)
        ua = r([("user", "U1"), ("assistant", "A1")])
        uau = r([("user", "U1"), ("assistant", "A1"), ("user", "U2")])
        uaua = r([("user", "U1"), ("assistant", "A1"), ("user", "U2"), ("assistant", "A2")])
    except Exception:  # noqa: BLE001 - a template that refuses these plain conversations is not of this shape
        return None
    if not (u1g.startswith(u1) and ua.startswith(u1) and uau.startswith(ua) and uaua.startswith(uau)):
        return None
    generation = u1g[len(u1):]
    assistant = _wrap(ua[len(u1):], m["A1"])
    user = _wrap(uau[len(ua):], m["U2"])
    if assistant is None or user is None or uaua[len(uau):] != f"{assistant[0]}{m['A2']}{assistant[1]}":
        return None
    first_user = f"{user[0]}{m['U1']}{user[1]}"
    if not u1.endswith(first_user):
        return None
    head = u1[: len(u1) - len(first_user)]
    bos = bos_text or ""
    prefix = bos if bos and head.startswith(bos) and not user[0].startswith(bos) else ""
    roles = {"user": user, "assistant": assistant}
    default_system = head[len(prefix):]
    try:
        s = r([("system", "S1"), ("user", "U1")])
    except Exception:  # noqa: BLE001 - the template refuses system messages
        s = None
    if s is not None and s.endswith(first_user) and s.count(m["S1"]) == 1:
        before, after = s[: len(s) - len(first_user)].split(m["S1"])
        if before.startswith(prefix):
            roles["system"] = (before[len(prefix):], after)
    pieces = [prefix, default_system, generation, *(p for pair in roles.values() for p in pair)]
    if any("{{" in p or '"""' in p or any(mark in p for mark in m.values()) for p in pieces):
        return None
    runner_bos = ""
    if add_bos and bos and prefix.startswith(bos):
        prefix, runner_bos = prefix[len(bos):], bos
    elif add_bos and bos:
        runner_bos = bos
    return OllamaTemplate(prefix, default_system, roles, generation, runner_bos)


def _wrap(text: str, marker: str) -> tuple[str, str] | None:
    if text.count(marker) != 1:
        return None
    before, after = text.split(marker)
    return before, after


# -------------------------------------------------------------------------------------------------- Modelfile


@dataclass
class Modelfile:
    """The content of an Ollama Modelfile."""

    gguf_name: str
    template: OllamaTemplate | None = None
    system: str | None = None
    stops: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"# {c}" for c in self.comments]
        lines.append(f"FROM ./{self.gguf_name}")
        if self.template is not None:
            lines.append(f'TEMPLATE """{self.template.text}"""')
        if self.system:
            lines.append(f"SYSTEM {_quote(self.system)}")
        for stop in dict.fromkeys(self.stops):
            lines.append(f"PARAMETER stop {_quote(stop)}")
        return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    """Ollama's parser strips quotes without escapes: one pair of ``"`` for a single line that does not end the
    value early, triple quotes otherwise (a value with ``\"\"\"`` in it cannot be written at all)."""
    if '"""' in value:
        raise ValueError("a Modelfile value cannot contain three double quotes in a row")
    if "\n" in value or "\r" in value or '"' in value:
        return f'"""{value}"""'
    return f'"{value}"'


MODELFILE_COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
                      "message", "requires")


class ModelfileSyntaxError(ValueError):
    pass


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """Parse a Modelfile the way Ollama's parser (parser/parser.go) does: ``COMMAND value`` per instruction,
    values bare, in ``"…"`` or in ``\"\"\"…\"\"\"`` (may span lines, no escapes), ``#`` comments, FROM required.
    Returns ``(command, value)`` pairs, PARAMETER as ``("parameter:NAME", value)``. Raises
    :class:`ModelfileSyntaxError`."""
    commands: list[tuple[str, str]] = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            line += c == "\n"
            i += 1
            continue
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start = i
        while i < n and text[i].isascii() and text[i].isalpha():
            i += 1
        name = text[start:i].lower()
        if name not in MODELFILE_COMMANDS or i >= n or text[i] not in " \t":
            raise ModelfileSyntaxError(f"line {line}: unknown instruction {text[start:i + 1]!r}")
        while i < n and text[i] in " \t":
            i += 1
        if name == "parameter":
            start = i
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            if i >= n or text[i] not in " \t" or i == start:
                raise ModelfileSyntaxError(f"line {line}: PARAMETER needs a name and a value")
            name = f"parameter:{text[start:i]}"
            while i < n and text[i] in " \t":
                i += 1
        for quote in ('"""', '"'):
            if text.startswith(quote, i):
                end = text.find(quote, i + len(quote))
                if end < 0:
                    raise ModelfileSyntaxError(f"line {line}: unterminated {quote} value")
                value = text[i + len(quote):end]
                i = end + len(quote)
                rest = text.find("\n", i)
                rest = n if rest < 0 else rest
                if text[i:rest].strip():
                    raise ModelfileSyntaxError(f"line {line}: text after the closing quote")
                break
        else:
            end = text.find("\n", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        line += value.count("\n")
        if not value and not name.startswith("parameter"):
            raise ModelfileSyntaxError(f"line {line}: {name.upper()} without a value")
        commands.append((name, value))
    if not any(cmd == "from" for cmd, _ in commands):
        raise ModelfileSyntaxError("no FROM line")
    if commands[0][0] != "from":
        raise ModelfileSyntaxError("FROM must be the first instruction")
    return commands


# ------------------------------------------------------------------------------------------ runner commands


def _arg(path: str) -> str:
    """A path as one shell argument that works in bash, zsh, cmd and PowerShell (double quotes when needed)."""
    if re.fullmatch(r"[\w./\\:+-]+", path):
        return path
    return f'"{path}"' if '"' not in path else shlex.quote(path)


def ollama_name(name: str) -> str:
    """A model name Ollama accepts: lower case letters, digits, ``-``, ``_``, ``.``."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return slug or "sft-model"


def runner_commands(gguf_path: str | Path, name: str, modelfile: str | Path | None = None) -> list[tuple[str, str]]:
    """``(runner, command)`` pairs that run the GGUF file: Ollama (through the Modelfile written next to it),
    LM Studio, llama.cpp's chat and its OpenAI-compatible server. Paths are used as given (pass bare file names
    for commands run inside the export folder)."""
    gguf = _arg(str(gguf_path))
    model = ollama_name(name)
    modelfile = _arg(str(modelfile if modelfile is not None else Path(str(gguf_path)).with_name("Modelfile")))
    return [
        ("Ollama", f"ollama create {model} -f {modelfile} && ollama run {model}"),
        ("LM Studio", f"lms import {gguf}"),
        ("llama.cpp", f"llama-cli -m {gguf} --jinja -cnv"),
        ("llama.cpp server", f"llama-server -m {gguf} --jinja --port 8080"),
    ]


def runner_markdown(gguf_name: str, name: str) -> list[str]:
    """Markdown lines for a model card next to the GGUF file: how to run it with each runner (commands are run
    from the folder that holds the file and its Modelfile)."""
    lines = ["Run it locally (from this folder):", "", "```bash"]
    for runner, command in runner_commands(gguf_name, name, "Modelfile"):
        lines.append(f"# {runner}")
        lines.append(command)
    lines += ["```", "",
              "The `Modelfile` carries the chat template, the stop tokens and the system prompt the model was trained "
              "with; llama.cpp and LM Studio read them from the GGUF file itself."]
    return lines
