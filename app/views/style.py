"""Colours and small shared widgets. Core returns data; the colours of what it means live here."""

from __future__ import annotations

import html
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QFontDatabase, QPalette
from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QLabel, QProgressBar, QWidget

# What happens to a token -> (name in the legend, light background, dark background)
CATEGORIES: dict[str, tuple[str, str, str]] = {
    "trained": ("trained (loss computed)", "#9fe0a8", "#1f6b34"),
    "system": ("masked: system prompt", "#d9cdf0", "#4a3d6b"),
    "user": ("masked: user turn", "#c6dcf7", "#24466e"),
    "prompt": ("masked: prompt", "#c6dcf7", "#24466e"),
    "tool": ("masked: tool result", "#f8d9a8", "#6b4a1a"),
    "context": ("masked: earlier answer", "#f1eaa6", "#5c5620"),
    "template": ("masked: template markup", "#dddddd", "#4a4a4a"),
    "truncated": ("cut off (beyond max_length)", "#f3b7b7", "#6e2a2a"),
    # the mask rules a user sets (core.masks.RULE_REASONS)
    "marked": ("masked: marked train: false in the data", "#f4c6e3", "#6b2a55"),
    "last_assistant": ("masked: earlier answer (last_assistant)", "#f1eaa6", "#5c5620"),
    "reasoning": ("masked: reasoning block", "#cfe9e4", "#1f5a52"),
    "empty_reasoning": ("masked: empty reasoning block", "#e3efed", "#2f4a46"),
}
LEGEND_ORDER = ("trained", "system", "user", "prompt", "tool", "context", "last_assistant", "marked", "reasoning",
                "empty_reasoning", "template", "truncated")


def is_dark(palette: QPalette | None = None) -> bool:
    palette = palette or QApplication.palette()
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def category_color(category: str, dark: bool | None = None) -> QColor:
    dark = is_dark() if dark is None else dark
    _, light, darkc = CATEGORIES.get(category, CATEGORIES["template"])
    return QColor(darkc if dark else light)


def token_category(trained: bool, reason: str | None) -> str:
    if reason == "truncated":
        return "truncated"
    if trained:
        return "trained"
    return reason if reason in CATEGORIES else "template"


def mono_font(point_size: int | None = None) -> QFont:
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    if point_size:
        font.setPointSize(point_size)
    return font


def visible_whitespace(text: str) -> str:
    """A token's text with line breaks and tabs drawn, so whitespace tokens can be seen."""
    return text.replace("\r", "␍").replace("\t", "→\t").replace("\n", "↵\n")


def role_color(role: str | None, dark: bool | None = None) -> str:
    dark = is_dark() if dark is None else dark
    colors = {
        "system": ("#6b4fa8", "#c3aef0"),
        "user": ("#1f5fa8", "#8fbcf0"),
        "assistant": ("#1f7a3a", "#8fdc9f"),
        "tool": ("#9a5a00", "#f0bd6e"),
        "prompt": ("#1f5fa8", "#8fbcf0"),
        "completion": ("#1f7a3a", "#8fdc9f"),
    }
    light, darkc = colors.get(role or "", ("#555555", "#bbbbbb"))
    return darkc if dark else light


@dataclass
class BannerKind:
    background: tuple[str, str]
    border: tuple[str, str]


BANNERS = {
    "error": BannerKind(("#fde2e1", "#4d1f1f"), ("#d9534f", "#d9534f")),
    "warning": BannerKind(("#fff3cd", "#4a3d12"), ("#e0a800", "#e0a800")),
    "info": BannerKind(("#e2eefc", "#1d3350"), ("#4a90d9", "#4a90d9")),
}


class Banner(QFrame):
    """A coloured message box above a page's content (errors are shown where the user looks)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.label, 1)
        self.kind = ""
        self.hide()

    def show_message(self, kind: str, text: str, title: str = "") -> None:
        self.kind = kind
        dark = is_dark()
        b = BANNERS[kind]
        self.setStyleSheet(
            f"QFrame#banner {{ background: {b.background[dark]}; border: 1px solid {b.border[dark]};"
            " border-radius: 4px; }"
        )
        head = f"<b>{html.escape(title)}</b> " if title else ""
        self.label.setText(head + html.escape(text).replace("\n", "<br>"))
        self.show()

    def clear(self) -> None:
        self.kind = ""
        self.label.clear()
        self.hide()

    def text(self) -> str:
        return self.label.text()


class BusyBar(QProgressBar):
    """A slim progress bar: indeterminate while the total is unknown."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMaximumHeight(12)
        self.setMaximumWidth(160)
        self.setTextVisible(False)
        self.hide()

    def set_busy(self, busy: bool) -> None:
        if busy:
            self.setRange(0, 0)
        self.setVisible(busy)

    def set_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.setRange(0, total)
            self.setValue(done)
        else:
            self.setRange(0, 0)


def apply_palette(app: QApplication, theme: str | None) -> None:
    """``light`` / ``dark`` force a Fusion palette (screenshots, user choice); None keeps the system's."""
    if theme not in ("light", "dark"):
        return
    app.setStyle("Fusion")
    if theme == "light":
        app.setPalette(app.style().standardPalette())
        return
    p = QPalette()
    base, window, text = QColor("#1e1f22"), QColor("#2b2d31"), QColor("#e6e6e6")
    p.setColor(QPalette.ColorRole.Window, window)
    p.setColor(QPalette.ColorRole.WindowText, text)
    p.setColor(QPalette.ColorRole.Base, base)
    p.setColor(QPalette.ColorRole.AlternateBase, QColor("#26282c"))
    p.setColor(QPalette.ColorRole.ToolTipBase, QColor("#33363b"))
    p.setColor(QPalette.ColorRole.ToolTipText, text)
    p.setColor(QPalette.ColorRole.Text, text)
    p.setColor(QPalette.ColorRole.Button, QColor("#34373c"))
    p.setColor(QPalette.ColorRole.ButtonText, text)
    p.setColor(QPalette.ColorRole.BrightText, QColor("#ff6b6b"))
    p.setColor(QPalette.ColorRole.Highlight, QColor("#3d6fb4"))
    p.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    p.setColor(QPalette.ColorRole.Link, QColor("#8fbcf0"))
    p.setColor(QPalette.ColorRole.PlaceholderText, QColor("#8a8d91"))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6f7277"))
    app.setPalette(p)
