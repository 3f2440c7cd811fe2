"""Colours and words of the per-token loss view: a sequential scale for the loss of a trained token, a diverging one
for the change between base and tuned, each with a legend, and the hover text of one token."""

from __future__ import annotations

import html

from PySide6.QtGui import QColor

LOSS_MAX = 6.0  # nats (p ≈ 0.25 %); darker is not shown
DELTA_MAX = 3.0  # nats of change, either way

# (position 0..1, colour): light and dark palettes
_LOSS_STOPS = {
    False: ((0.0, "#fff6c4"), (0.2, "#fed976"), (0.4, "#feb24c"), (0.6, "#fd8d3c"), (0.8, "#e31a1c"),
            (1.0, "#800026")),
    True: ((0.0, "#38392c"), (0.2, "#5c5418"), (0.4, "#87600f"), (0.6, "#a9531a"), (0.8, "#c63a2a"),
           (1.0, "#ee3b4a")),
}
_DELTA_STOPS = {
    False: ((0.0, "#2166ac"), (0.25, "#92c5de"), (0.5, "#f2f2f2"), (0.75, "#f4a582"), (1.0, "#b2182b")),
    True: ((0.0, "#3d80d9"), (0.25, "#2c5078"), (0.5, "#3b3b3b"), (0.75, "#7d3a2c"), (1.0, "#dc4438")),
}


def _interpolate(stops: tuple[tuple[float, str], ...], x: float) -> QColor:
    x = min(1.0, max(0.0, x))
    for (x0, c0), (x1, c1) in zip(stops, stops[1:], strict=False):
        if x <= x1:
            a, b = QColor(c0), QColor(c1)
            f = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
            return QColor(round(a.red() + (b.red() - a.red()) * f), round(a.green() + (b.green() - a.green()) * f),
                          round(a.blue() + (b.blue() - a.blue()) * f))
    return QColor(stops[-1][1])


def loss_color(loss: float, dark: bool) -> QColor:
    """Background of a trained token with this loss (nats): pale = easy for the model, dark red = hard."""
    return _interpolate(_LOSS_STOPS[dark], loss / LOSS_MAX)


def delta_color(delta: float, dark: bool) -> QColor:
    """Background for a change of loss (tuned − base): blue = got easier, red = got worse, grey = unchanged."""
    return _interpolate(_DELTA_STOPS[dark], 0.5 + delta / (2 * DELTA_MAX))


def text_on(background: QColor) -> QColor:
    """Black or white, whichever reads better on ``background`` (WCAG relative luminance)."""
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * channel(background.red()) + 0.7152 * channel(background.green()) + 0.0722 * channel(background.blue())
    return QColor("#111111" if lum > 0.22 else "#f4f4f4")


def _swatch(color: QColor, text: str) -> str:
    return (f"<span style='background:{color.name()}; color:{text_on(color).name()};'>&nbsp;{html.escape(text)}"
            "&nbsp;</span>")


def loss_legend(model: str, dark: bool) -> str:
    steps = [0, 1, 2, 3, 4, 5, LOSS_MAX]
    cells = "".join(_swatch(loss_color(v, dark), f"{v:g}" + ("+" if v == LOSS_MAX else "")) for v in steps)
    return (f"Loss of each trained token under <b>{html.escape(model)}</b> (nats): {cells} &nbsp; "
            "pale = the model expected it, dark = it did not (masked tokens keep their colours)")


def delta_legend(base: str, tuned: str, dark: bool) -> str:
    steps = [-3, -2, -1, 0, 1, 2, 3]
    cells = "".join(_swatch(delta_color(v, dark), f"{v:+g}" if v else "0") for v in steps)
    return (f"Change of loss, <b>{html.escape(tuned)}</b> − <b>{html.escape(base)}</b> (nats): "
            f"<b>easier</b> {cells} <b>worse</b> (masked tokens keep their colours)")


def _pct(p: float) -> str:
    """A probability for people: 41.3%, 0.25%, 3.1e-07."""
    return f"{100 * p:.2f}%" if p >= 1e-4 else f"{p:.1e}"


def _show(text: str) -> str:
    return html.escape(repr(text)[1:-1] if text.strip() != text or not text else text)


def _top(entry: dict, label_id: int) -> str:
    parts = []
    for candidate in entry.get("top", []):
        token = f"'{_show(candidate['token'])}' {_pct(candidate['prob'])}"
        parts.append(f"<b>{token} ✓</b>" if candidate.get("id") == label_id else token)
    return " · ".join(parts)


def loss_tip(entry: dict, model: str) -> str:
    """Hover text of one trained token under one model."""
    return (f"<b>loss {entry['loss']:.3f}</b> nats under {html.escape(model)} · probability of this token "
            f"<b>{_pct(entry['prob'])}</b><br>top-{len(entry.get('top', []))} next tokens: "
            f"{_top(entry, entry['id'])}")


def delta_tip(base: dict, tuned: dict, base_name: str, tuned_name: str) -> str:
    delta = tuned["loss"] - base["loss"]
    word = "easier" if delta < 0 else ("worse" if delta > 0 else "unchanged")
    return (f"<b>loss {base['loss']:.3f} → {tuned['loss']:.3f} ({delta:+.3f}, {word})</b> "
            f"({html.escape(base_name)} → {html.escape(tuned_name)}) · probability of this token "
            f"{_pct(base['prob'])} → {_pct(tuned['prob'])}<br>"
            f"{html.escape(tuned_name)} top-{len(tuned.get('top', []))}: {_top(tuned, tuned['id'])}<br>"
            f"{html.escape(base_name)} top-{len(base.get('top', []))}: {_top(base, base['id'])}")
