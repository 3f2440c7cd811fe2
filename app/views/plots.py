"""Live training curves (DESIGN.md §4 "Live plots"): one PlotDataItem per series, samples appended to growing
numpy arrays, redrawn from a ~10 Hz timer (never per event), peak downsampling and clip-to-view so 100k points
stay smooth, log-y toggle, a smoothed loss curve, and a hover readout."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from app.views.style import is_dark

REDRAW_MS = 100
SMOOTHING = 0.9  # TensorBoard-style EMA weight, debiased


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    metrics: tuple[str, ...]
    log_y: bool = False  # follows the log-y toggle


PANELS = (
    Panel("loss", "Loss", ("loss", "loss_smooth", "eval_loss"), log_y=True),
    Panel("lr", "Learning rate", ("learning_rate",)),
    Panel("grad", "Grad norm", ("grad_norm",), log_y=True),
    Panel("speed", "Trained tokens/s", ("tokens_per_second",)),
    Panel("memory", "GPU memory (GiB)", ("gpu_allocated_gib", "gpu_reserved_gib", "gpu_peak_gib")),
)
METRIC_PANEL = {m: p.name for p in PANELS for m in p.metrics}
LABELS = {
    "loss": "loss", "loss_smooth": "loss (smoothed)", "eval_loss": "eval loss", "learning_rate": "lr",
    "grad_norm": "grad norm", "tokens_per_second": "tokens/s", "gpu_allocated_gib": "allocated",
    "gpu_reserved_gib": "reserved", "gpu_peak_gib": "peak",
}
COLORS = {
    "loss": ("#9ab8de", "#4d6a8f"), "loss_smooth": ("#1f5fa8", "#8fbcf0"), "eval_loss": ("#d9534f", "#ff8a80"),
    "learning_rate": ("#6b4fa8", "#c3aef0"), "grad_norm": ("#9a5a00", "#f0bd6e"),
    "tokens_per_second": ("#1f7a3a", "#8fdc9f"), "gpu_allocated_gib": ("#1f5fa8", "#8fbcf0"),
    "gpu_reserved_gib": ("#888888", "#aaaaaa"), "gpu_peak_gib": ("#d9534f", "#ff8a80"),
}
RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


class Series:
    """x/y samples in arrays that grow by doubling: appending is O(1) amortised and drawing takes a view."""

    def __init__(self, capacity: int = 1024) -> None:
        self.x = np.empty(capacity, dtype=np.float64)
        self.y = np.empty(capacity, dtype=np.float64)
        self.n = 0

    def append(self, x: float, y: float) -> None:
        if self.n == len(self.x):
            self.x = np.resize(self.x, 2 * self.n)
            self.y = np.resize(self.y, 2 * self.n)
        self.x[self.n] = x
        self.y[self.n] = y
        self.n += 1

    def extend(self, xs: np.ndarray, ys: np.ndarray) -> None:
        need = self.n + len(xs)
        if need > len(self.x):
            cap = max(need, 2 * len(self.x))
            self.x = np.resize(self.x, cap)
            self.y = np.resize(self.y, cap)
        self.x[self.n:need] = xs
        self.y[self.n:need] = ys
        self.n = need

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[: self.n], self.y[: self.n]

    def __len__(self) -> int:
        return self.n


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # the event stream writes NaN/inf as strings
        try:
            return float(value)
        except ValueError:
            return None
    return None


class CurvesView(QWidget):
    """A grid of plots over one run (or several: :meth:`add_run` per run, each run its own colour)."""

    hovered = Signal(str)

    def __init__(self, parent: QWidget | None = None, panels: Iterable[Panel] = PANELS) -> None:
        super().__init__(parent)
        self.panels = {p.name: p for p in panels}
        dark = is_dark()
        self.dark = dark
        pg.setConfigOptions(antialias=False)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("#1e1f22" if dark else "w")
        fg = "#d0d0d0" if dark else "#333333"
        self.plots: dict[str, pg.PlotItem] = {}
        for i, panel in enumerate(self.panels.values()):
            plot = self.graphics.addPlot(row=i // 3, col=i % 3, title=f"<span style='color:{fg}'>{panel.title}</span>")
            plot.showGrid(x=True, y=True, alpha=0.25)
            plot.setDownsampling(auto=True, mode="peak")
            plot.setClipToView(True)
            plot.setLabel("bottom", "step")
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setTextPen(fg)
                plot.getAxis(axis).setPen(fg)
            plot.addLegend(offset=(-5, 5), labelTextColor=fg, brush=pg.mkBrush(QColor(30, 31, 34, 160) if dark
                                                                                else QColor(255, 255, 255, 180)))
            self.plots[panel.name] = plot
        first = self.plots[next(iter(self.panels))]
        for plot in self.plots.values():
            if plot is not first:
                plot.setXLink(first)
        # run -> metric -> (series, item)
        self.series: dict[str, dict[str, Series]] = {}
        self.items: dict[tuple[str, str], pg.PlotDataItem] = {}
        self._ema: dict[str, tuple[float, int]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self.log_y = False
        self.memory_note = ""
        self.timer = QTimer(self)
        self.timer.setInterval(REDRAW_MS)
        self.timer.timeout.connect(self.redraw)
        self.timer.start()

        self.log_box = QCheckBox("Log y (loss, grad norm)")
        self.log_box.toggled.connect(self.set_log_y)
        self.readout = QLabel(" ")
        self.readout.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        top = QHBoxLayout()
        top.addWidget(self.log_box)
        top.addStretch(1)
        top.addWidget(self.readout)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.graphics, 1)
        self._proxy = pg.SignalProxy(self.graphics.scene().sigMouseMoved, rateLimit=30, slot=self._on_mouse)

    # -- data ---------------------------------------------------------------------------------------------
    def _item(self, run: str, metric: str) -> pg.PlotDataItem:
        key = (run, metric)
        item = self.items.get(key)
        if item is None:
            panel = METRIC_PANEL[metric]
            overlay = len(self.series) > 1 or run != ""
            if overlay:
                runs = list(self.series)
                color = RUN_COLORS[runs.index(run) % len(RUN_COLORS)] if run in runs else RUN_COLORS[0]
                width = 1 if metric == "loss" else 2
                style = Qt.PenStyle.DashLine if metric == "eval_loss" else Qt.PenStyle.SolidLine
                name = f"{run} · {LABELS[metric]}"
            else:
                color = COLORS[metric][self.dark]
                width = 2 if metric in ("loss_smooth", "eval_loss") or METRIC_PANEL[metric] != "loss" else 1
                style = Qt.PenStyle.SolidLine
                name = LABELS[metric]
            symbol = "o" if metric == "eval_loss" else None
            item = pg.PlotDataItem(name=name, pen=pg.mkPen(color, width=width, style=style), symbol=symbol,
                                   symbolSize=5, symbolBrush=color, symbolPen=None)
            item.setDownsampling(auto=True, method="peak")
            item.setClipToView(True)
            self.plots[panel].addItem(item)
            if self.log_y and self.panels[panel].log_y:
                item.setLogMode(False, True)
            self.items[key] = item
        return item

    def append(self, metric: str, step: float, value: float, run: str = "") -> None:
        if metric not in METRIC_PANEL or METRIC_PANEL[metric] not in self.panels:
            return
        runs = self.series.setdefault(run, {})
        series = runs.get(metric)
        if series is None:
            series = runs[metric] = Series()
            self._item(run, metric)
        series.append(step, value)
        self._dirty.add((run, metric))
        if metric == "loss" and math.isfinite(value):
            ema, n = self._ema.get(run, (0.0, 0))
            ema, n = SMOOTHING * ema + (1 - SMOOTHING) * value, n + 1
            self._ema[run] = (ema, n)
            if run == "" or "loss_smooth" in self.panels["loss"].metrics:
                self.append("loss_smooth", step, ema / (1 - SMOOTHING ** n), run)

    def add_metrics(self, event: dict, run: str = "") -> None:
        """A ``metrics`` event (DESIGN.md §3.4): every known key with a number becomes a point at its step."""
        step = _number(event.get("step"))
        if step is None:
            return
        for key, raw in event.items():
            if key in METRIC_PANEL and key != "loss_smooth":
                value = _number(raw)
                if value is not None:
                    self.append(key, step, value, run)

    def load_events(self, events: Iterable[dict], run: str = "") -> int:
        """Plot every ``metrics`` event of a finished run; returns how many were read."""
        n = 0
        for event in events:
            if event.get("type") == "metrics":
                self.add_metrics(event, run)
                n += 1
        self.redraw()
        return n

    def clear(self) -> None:
        for (_, metric), item in self.items.items():
            self.plots[METRIC_PANEL[metric]].removeItem(item)
            legend = self.plots[METRIC_PANEL[metric]].legend
            if legend is not None:
                legend.removeItem(item)
        self.items.clear()
        self.series.clear()
        self._ema.clear()
        self._dirty.clear()
        for plot in self.plots.values():  # a new run starts from fresh axes, not the last run's zoom
            plot.enableAutoRange()
        self.set_device_kind(None)

    def set_device_kind(self, kind: str | None) -> None:
        """Say in the memory panel's title why it stays empty when the run trains on the CPU or MPS (the studio
        reads memory from CUDA only)."""
        panel = self.panels.get("memory")
        plot = self.plots.get("memory")
        if panel is None or plot is None:
            return
        fg = "#d0d0d0" if self.dark else "#333333"
        title = f"<span style='color:{fg}'>{panel.title}</span>"
        if kind and kind != "cuda":
            where = {"cpu": "the CPU", "mps": "Apple's GPU (MPS)"}.get(kind, kind)
            title += f"<br><span style='color:#888888;font-size:9pt'>not measured: this run trains on {where}</span>"
        plot.setTitle(title)
        self.memory_note = "" if not kind or kind == "cuda" else title

    def point_count(self, metric: str, run: str = "") -> int:
        series = self.series.get(run, {}).get(metric)
        return len(series) if series is not None else 0

    # -- drawing ------------------------------------------------------------------------------------------
    def redraw(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        for run, metric in dirty:
            x, y = self.series[run][metric].view()
            item = self._item(run, metric)
            # a line needs two points: until then (the first logged step) draw the point itself
            item.setSymbol("o" if metric == "eval_loss" or len(x) < 2 else None)
            item.setData(x, y)

    def set_log_y(self, on: bool) -> None:
        self.log_y = on
        if self.log_box.isChecked() != on:
            self.log_box.setChecked(on)
        for (_, metric), item in self.items.items():
            if self.panels[METRIC_PANEL[metric]].log_y:
                item.setLogMode(False, on)
        for name, plot in self.plots.items():
            if self.panels[name].log_y:
                plot.setLogMode(y=on)
                plot.enableAutoRange()

    def _on_mouse(self, args: tuple) -> None:
        pos = args[0]
        for name, plot in self.plots.items():
            if not plot.sceneBoundingRect().contains(pos):
                continue
            x = plot.vb.mapSceneToView(pos).x()
            parts = [f"step {x:.0f}"]
            for (run, metric), _item in self.items.items():
                if METRIC_PANEL[metric] != name:
                    continue
                xs, ys = self.series[run][metric].view()
                if not len(xs):
                    continue
                i = int(np.clip(np.searchsorted(xs, x), 0, len(xs) - 1))
                if i > 0 and abs(xs[i - 1] - x) < abs(xs[i] - x):
                    i -= 1
                label = f"{run} {LABELS[metric]}" if run else LABELS[metric]
                parts.append(f"{label} {ys[i]:.4g} @ {xs[i]:.0f}")
            text = "   ".join(parts)
            self.readout.setText(text)
            self.hovered.emit(text)
            return
