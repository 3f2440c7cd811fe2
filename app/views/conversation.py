"""One example rendered as a conversation (HTML for a QTextBrowser): roles, system prompt, tool calls."""

from __future__ import annotations

import html
import json
from typing import Any

from app.views.style import is_dark, role_color


def _block(text: str) -> str:
    return f"<div style='white-space: pre-wrap; margin: 2px 0 10px 0;'>{html.escape(text)}</div>"


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)
    return f"<pre style='margin: 2px 0 8px 0;'>{html.escape(text)}</pre>"


def _heading(role: str, extra: str = "") -> str:
    return (f"<div style='color:{role_color(role)}; font-weight:bold; margin-top:4px;'>"
            f"{html.escape(role.upper())}{html.escape(extra)}</div>")


def _messages(messages: list[dict]) -> str:
    out = []
    for i, m in enumerate(messages):
        role = m.get("role", "?")
        out.append(_heading(role, f"  · message {i}"))
        if m.get("content"):
            out.append(_block(str(m["content"])))
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call)
            out.append(f"<div style='color:{role_color('tool')};'>↳ tool call <b>{html.escape(str(fn.get('name')))}"
                       "</b></div>")
            out.append(_code(fn.get("arguments")))
        if not m.get("content") and not m.get("tool_calls"):
            out.append(_block("(empty)"))
    return "".join(out)


def conversation_html(example: dict | None, problems: list[Any], row: int) -> str:
    dark = is_dark()
    err = "#ff7b72" if dark else "#c62828"
    warn = "#e3b341" if dark else "#9a6700"
    parts = [f"<h3 style='margin:0 0 6px 0'>Row {row}</h3>"]
    for p in problems:
        color = err if p.severity == "error" else warn
        where = f"line {p.line}: " if p.line else ""
        fld = f"{p.field}: " if p.field else ""
        parts.append(f"<div style='color:{color}'>● {html.escape(p.severity)}: {html.escape(where + fld + p.message)}"
                     "</div>")
    if example is None:
        parts.append("<p><i>This row will not be trained (see the problems above).</i></p>")
        return "".join(parts)
    if example.get("tools"):
        names = [str(t.get("function", t).get("name", "?")) for t in example["tools"] if isinstance(t, dict)]
        parts.append(f"<div style='color:{role_color('tool')}'><b>TOOLS</b> available: "
                     f"{html.escape(', '.join(names))}</div>")
    if "messages" in example:
        parts.append(_messages(example["messages"]))
    elif "prompt" in example:
        if isinstance(example["prompt"], list):
            parts.append("<div style='color:gray'>prompt</div>" + _messages(example["prompt"]))
            parts.append("<div style='color:gray'>completion</div>" + _messages(example["completion"]))
        else:
            parts.append(_heading("prompt") + _block(example["prompt"]))
            parts.append(_heading("completion") + _block(example["completion"]))
    elif "text" in example:
        parts.append(_heading("text") + _block(example["text"]))
    return "".join(parts)
