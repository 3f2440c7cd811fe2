"""Syntax highlighting for Jinja chat templates and unified diffs."""

from __future__ import annotations

import re

from PySide6.QtGui import QColor, QFont, QSyntaxHighlighter, QTextCharFormat, QTextDocument

from app.views.style import is_dark


def _fmt(color: str, bold: bool = False, background: str | None = None) -> QTextCharFormat:
    f = QTextCharFormat()
    f.setForeground(QColor(color))
    if bold:
        f.setFontWeight(QFont.Weight.Bold)
    if background:
        f.setBackground(QColor(background))
    return f


class JinjaHighlighter(QSyntaxHighlighter):
    """Statements, expressions, comments, strings, and the ``{% generation %}`` markers stand out."""

    def __init__(self, document: QTextDocument) -> None:
        super().__init__(document)
        dark = is_dark()
        self.rules: list[tuple[re.Pattern[str], QTextCharFormat]] = [
            (re.compile(r"\{%-?.*?-?%\}"), _fmt("#c586c0" if dark else "#8a1c9c", bold=True)),
            (re.compile(r"\{\{-?.*?-?\}\}"), _fmt("#4fc1ff" if dark else "#0b5cad")),
            (re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""), _fmt("#ce9178" if dark else "#a31515")),
            (re.compile(r"\b(if|elif|else|endif|for|endfor|in|set|not|and|or|is|defined|namespace|macro|endmacro)\b"),
             _fmt("#569cd6" if dark else "#0000cc", bold=True)),
            (re.compile(r"\{%-?\s*(end)?generation\s*-?%\}"),
             _fmt("#000000", bold=True, background="#9fe0a8")),
            (re.compile(r"\{#.*?#\}"), _fmt("#6a9955" if dark else "#6a737d")),
        ]

    def highlightBlock(self, text: str) -> None:
        for pattern, fmt in self.rules:
            for m in pattern.finditer(text):
                self.setFormat(m.start(), m.end() - m.start(), fmt)


class DiffHighlighter(QSyntaxHighlighter):
    def __init__(self, document: QTextDocument) -> None:
        super().__init__(document)
        dark = is_dark()
        self.added = _fmt("#b5f0bf" if dark else "#0b6b1f", background="#1f3d26" if dark else "#e6ffec")
        self.removed = _fmt("#ffb3b3" if dark else "#a11d1d", background="#4a2020" if dark else "#ffebe9")
        self.hunk = _fmt("#8fbcf0" if dark else "#1f5fa8", bold=True)

    def highlightBlock(self, text: str) -> None:
        if text.startswith("+++") or text.startswith("---") or text.startswith("@@"):
            self.setFormat(0, len(text), self.hunk)
        elif text.startswith("+"):
            self.setFormat(0, len(text), self.added)
        elif text.startswith("-"):
            self.setFormat(0, len(text), self.removed)
