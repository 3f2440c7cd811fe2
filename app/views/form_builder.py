"""A form generated from the run-file schema (DESIGN.md §4): one editor per field, chosen from the field's type
and metadata, grouped in sections, advanced fields folded away. New schema fields appear without code here; the
few fields that want a custom widget are listed in :data:`OVERRIDES`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.config import ConfigProblem, FieldInfo, RunConfig, all_fields, get_value

GROUP_ORDER = ("Model", "Data", "LoRA", "Training", "Hardware", "Monitoring", "Output")
INT_LIMIT = 2**31 - 1
NULL_TEXT = "(auto)"


def field_label(info: FieldInfo) -> str:
    words = info.name.replace("_", " ")
    fixes = {"lora ": "LoRA ", "lr ": "LR ", "per device": "per-device", "use dora": "use DoRA",
             "use rslora": "use rsLoRA", "r": "rank (r)", "attn": "attention"}
    if words in fixes:
        return fixes[words][0].upper() + fixes[words][1:]
    for old, new in fixes.items():
        if len(old) > 1 and words.startswith(old):
            words = new + words[len(old):]
    return words[0].upper() + words[1:]


class FieldEditor(QObject):
    """Wraps the widget(s) for one field: ``value()`` / ``set_value()`` and :attr:`edited` on user changes."""

    edited = Signal()

    def __init__(self, info: FieldInfo) -> None:
        super().__init__()
        self.info = info
        self.widget: QWidget = QWidget()
        self._setting = False

    def value(self) -> Any:
        raise NotImplementedError

    def _apply(self, value: Any) -> None:
        raise NotImplementedError

    def set_value(self, value: Any) -> None:
        self._setting = True
        try:
            self._apply(value)
        finally:
            self._setting = False

    def _changed(self, *_args: object) -> None:
        if not self._setting:
            self.edited.emit()


class BoolEditor(FieldEditor):
    def __init__(self, info: FieldInfo) -> None:
        super().__init__(info)
        self.box = QCheckBox()
        self.box.toggled.connect(self._changed)
        self.widget = self.box

    def value(self) -> bool:
        return self.box.isChecked()

    def _apply(self, value: Any) -> None:
        self.box.setChecked(bool(value))


class ChoiceEditor(FieldEditor):
    """Combo box over ``choices``; a nullable bool becomes auto / on / off."""

    def __init__(self, info: FieldInfo, choices: tuple[Any, ...] | None = None) -> None:
        super().__init__(info)
        self.combo = QComboBox()
        self.choices = list(choices if choices is not None else info.choices or ())
        for choice in self.choices:
            self.combo.addItem(self._text(choice))
        self.combo.currentIndexChanged.connect(self._changed)
        self.widget = self.combo

    @staticmethod
    def _text(choice: Any) -> str:
        if choice is None:
            return NULL_TEXT
        if choice is True:
            return "on"
        if choice is False:
            return "off"
        return str(choice)

    def value(self) -> Any:
        i = self.combo.currentIndex()
        return self.choices[i] if 0 <= i < len(self.choices) else None

    def _apply(self, value: Any) -> None:
        if value not in self.choices:  # a value the schema would reject: show it so the message makes sense
            self.choices.append(value)
            self.combo.addItem(self._text(value))
        self.combo.setCurrentIndex(self.choices.index(value))


class _SciValidator(QValidator):
    def validate(self, text: str, pos: int):  # noqa: ANN201
        t = text.strip()
        if not t or t in ("-", ".", "-.") or t.lower().endswith(("e", "e-", "e+")):
            return QValidator.State.Intermediate, text, pos
        try:
            float(t)
        except ValueError:
            return QValidator.State.Invalid, text, pos
        return QValidator.State.Acceptable, text, pos


class SciSpinBox(QDoubleSpinBox):
    """A double spin box that shows 2e-4 as ``0.0002`` / ``2e-05`` instead of rounding to a few decimals."""

    def __init__(self) -> None:
        super().__init__()
        self._validator = _SciValidator()
        self.setDecimals(12)

    def textFromValue(self, value: float) -> str:  # noqa: N802
        return f"{value:.6g}"

    def valueFromText(self, text: str) -> float:  # noqa: N802
        try:
            return float(text.strip())
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):  # noqa: ANN201
        return self._validator.validate(text, pos)

    def stepBy(self, steps: int) -> None:  # noqa: N802
        v = self.value()
        if 0 < abs(v) < 0.01:  # learning rates: step by a factor of two
            self.setValue(v * (2.0 ** steps))
        else:
            super().stepBy(steps)


class NumberEditor(FieldEditor):
    """Spin box with the schema's bounds; a nullable number gets a checkbox "set" in front (off = null)."""

    def __init__(self, info: FieldInfo) -> None:
        super().__init__(info)
        integer = info.type is int
        if integer:
            spin: QSpinBox | QDoubleSpinBox = QSpinBox()
            lo = int(info.min) if info.min is not None else -INT_LIMIT
            hi = int(min(info.max, INT_LIMIT)) if info.max is not None else INT_LIMIT
            spin.setRange(max(lo, -INT_LIMIT), hi)
        else:
            spin = SciSpinBox()
            spin.setRange(info.min if info.min is not None else -1e12, info.max if info.max is not None else 1e12)
            spin.setSingleStep(0.01 if (info.max or 100) <= 1 else 0.5)
        spin.setKeyboardTracking(False)
        spin.setMinimumWidth(120)
        spin.valueChanged.connect(self._changed)
        self.spin = spin
        self.integer = integer
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        self.set_box: QCheckBox | None = None
        if info.nullable:
            self.set_box = QCheckBox("set")
            self.set_box.setToolTip("Unticked: null (the studio decides)")
            self.set_box.toggled.connect(self._toggle_null)
            row.addWidget(self.set_box)
        row.addWidget(spin)
        row.addStretch(1)
        self.widget = box

    def _toggle_null(self, on: bool) -> None:
        self.spin.setEnabled(on)
        self._changed()

    def value(self) -> Any:
        if self.set_box is not None and not self.set_box.isChecked():
            return None
        v = self.spin.value()
        return int(v) if self.integer else float(v)

    def _apply(self, value: Any) -> None:
        if self.set_box is not None:
            self.set_box.setChecked(value is not None)
            self.spin.setEnabled(value is not None)
        if value is None:
            return
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.spin.setValue(value)


class TextEditor(FieldEditor):
    """Line edit for strings (empty = null where nullable), lists of strings (comma-separated) and
    ``str | list[str]``; paths get a browse button."""

    def __init__(self, info: FieldInfo) -> None:
        super().__init__(info)
        self.kind = info.kind
        self.edit = QLineEdit()
        self.edit.editingFinished.connect(self._commit)
        if info.nullable:
            self.edit.setPlaceholderText("null — " + ("none" if "path" in info.name else "the default"))
        elif self.kind in ("list", "str_or_list"):
            self.edit.setPlaceholderText("comma-separated")
        self._last: Any = object()
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        self.browse_buttons: list[QPushButton] = []
        if info.path:
            modes = {"dir": [("Folder…", "dir")], "file_or_id": [("File…", "file"), ("Folder…", "dir")],
                     "file_or_name": [("File…", "file")]}[info.path]
            for text, mode in modes:
                button = QPushButton(text)
                button.setToolTip(f"Choose a {'folder' if mode == 'dir' else 'file'} for {info.key}")
                button.clicked.connect(lambda _c=False, m=mode: self.browse(m))
                row.addWidget(button)
                self.browse_buttons.append(button)
        self.widget = box

    def browse(self, mode: str) -> None:
        start = self.edit.text()
        if mode == "dir":
            path = QFileDialog.getExistingDirectory(self.widget, f"Choose {self.info.key}", start)
        else:
            path, _ = QFileDialog.getOpenFileName(self.widget, f"Choose {self.info.key}", start)
        if path:
            self.edit.setText(path)
            self._commit()

    def _commit(self) -> None:
        value = self.value()
        if value != self._last:
            self._last = value
            self._changed()

    def value(self) -> Any:
        text = self.edit.text().strip()
        if self.kind == "list":
            return [p.strip() for p in text.split(",") if p.strip()]
        if self.kind == "str_or_list" and "," in text:
            return [p.strip() for p in text.split(",") if p.strip()]
        if not text and self.info.nullable:
            return None
        return text

    def _apply(self, value: Any) -> None:
        if isinstance(value, list):
            self.edit.setText(", ".join(value))
        else:
            self.edit.setText("" if value is None else str(value))
        self._last = self.value()


class LinesEditor(FieldEditor):
    """One list item per line (probe prompts: they may contain commas), or ``key: value`` lines for mappings."""

    def __init__(self, info: FieldInfo) -> None:
        super().__init__(info)
        self.mapping = info.kind == "dict"
        self.edit = QPlainTextEdit()
        self.edit.setMaximumHeight(80)
        self.edit.setTabChangesFocus(True)
        self.edit.setPlaceholderText("name: value, one per line" if self.mapping else "one per line")
        self.edit.textChanged.connect(self._changed)
        self.widget = self.edit

    def value(self) -> Any:
        lines = [line.strip() for line in self.edit.toPlainText().splitlines() if line.strip()]
        if not self.mapping:
            return lines
        out: dict[str, str] = {}
        for line in lines:
            key, _, val = line.partition(":")
            out[key.strip()] = val.strip()
        return out

    def _apply(self, value: Any) -> None:
        if self.mapping:
            text = "\n".join(f"{k}: {v}" for k, v in (value or {}).items())
        else:
            text = "\n".join(value or [])
        if text != self.edit.toPlainText():
            self.edit.setPlainText(text)


def make_editor(info: FieldInfo) -> FieldEditor:
    """The default editor for a field, from its type and metadata."""
    if info.key in OVERRIDES:
        return OVERRIDES[info.key](info)
    kind = info.kind
    if kind == "bool":
        return ChoiceEditor(info, (None, True, False)) if info.nullable else BoolEditor(info)
    if info.choices is not None:
        return ChoiceEditor(info)
    if kind in ("int", "float"):
        return NumberEditor(info)
    if kind == "dict":
        return LinesEditor(info)
    return TextEditor(info)


OVERRIDES: dict[str, Callable[[FieldInfo], FieldEditor]] = {
    "training.probe_prompts": LinesEditor,  # prompts contain commas: one per line
}
"""The few fields whose widget is not the one their type suggests."""


class ConfigForm(QWidget):
    """Every visible setting of the run file, grouped; :attr:`edited` (key, value) on each user change."""

    edited = Signal(str, object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.editors: dict[str, FieldEditor] = {}
        self.errors: dict[str, QLabel] = {}
        self.rows: dict[str, QWidget] = {}
        self.advanced_toggles: dict[str, QToolButton] = {}
        fields = [f for f in all_fields() if not f.hidden]
        groups = sorted({f.group for f in fields}, key=lambda g: GROUP_ORDER.index(g) if g in GROUP_ORDER else 99)
        inner = QWidget()
        column = QVBoxLayout(inner)
        column.setContentsMargins(4, 4, 4, 4)
        self.group_boxes: dict[str, QGroupBox] = {}
        for group in groups:
            box = QGroupBox(group)
            box.setObjectName(f"group-{group}")
            outer = QVBoxLayout(box)
            basic, advanced = QFormLayout(), QFormLayout()
            for lay in (basic, advanced):
                lay.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
                lay.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            outer.addLayout(basic)
            adv_fields = [f for f in fields if f.group == group and f.advanced]
            for info in (f for f in fields if f.group == group):
                self._add_row(info, advanced if info.advanced else basic)
            if adv_fields:
                toggle = QToolButton()
                toggle.setText(f"Advanced ({len(adv_fields)})")
                toggle.setCheckable(True)
                toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
                toggle.setArrowType(Qt.ArrowType.RightArrow)
                toggle.setAutoRaise(True)
                holder = QWidget()
                holder.setLayout(advanced)
                holder.setVisible(False)
                toggle.toggled.connect(holder.setVisible)
                toggle.toggled.connect(lambda on, t=toggle: t.setArrowType(
                    Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow))
                outer.addWidget(toggle)
                outer.addWidget(holder)
                self.advanced_toggles[group] = toggle
            column.addWidget(box)
            self.group_boxes[group] = box
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(inner)
        self.scroll = scroll
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

    def _add_row(self, info: FieldInfo, form: QFormLayout) -> None:
        editor = make_editor(info)
        editor.edited.connect(lambda key=info.key: self.edited.emit(key, self.editors[key].value()))
        tip = f"<b>{info.key}</b><br>{info.help}"
        if info.min is not None or info.max is not None:
            lo = "" if info.min is None else f"{'>' if info.min_exclusive else '≥'} {info.min:g}"
            hi = "" if info.max is None else f"{'<' if info.max_exclusive else '≤'} {info.max:g}"
            tip += f"<br><i>range: {', '.join(p for p in (lo, hi) if p)}</i>"
        label = QLabel(field_label(info))
        label.setToolTip(tip)
        editor.widget.setToolTip(tip)
        error = QLabel()
        error.setObjectName("fieldError")
        error.setWordWrap(True)
        error.setStyleSheet("color: #d9534f;")
        error.hide()
        cell = QWidget()
        v = QVBoxLayout(cell)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(1)
        v.addWidget(editor.widget)
        v.addWidget(error)
        form.addRow(label, cell)
        self.editors[info.key] = editor
        self.errors[info.key] = error
        self.rows[info.key] = cell

    def set_config(self, cfg: RunConfig) -> None:
        for key, editor in self.editors.items():
            editor.set_value(get_value(cfg, key))

    def value(self, key: str) -> Any:
        return self.editors[key].value()

    def show_problems(self, problems: list[ConfigProblem]) -> list[ConfigProblem]:
        """Show each problem under its field (and open its advanced section); returns those with no field."""
        by_key: dict[str, list[str]] = {}
        loose = []
        for p in problems:
            key = p.key if p.key in self.errors else p.key.rpartition(".")[0]
            if key in self.errors:
                by_key.setdefault(key, []).append(p.message)
            else:
                loose.append(p)
        for key, label in self.errors.items():
            messages = by_key.get(key)
            label.setVisible(bool(messages))
            label.setText("\n".join(messages or []))
            if messages and self.editors[key].info.advanced:
                toggle = self.advanced_toggles.get(self.editors[key].info.group)
                if toggle is not None:
                    toggle.setChecked(True)
        return loose

    def error_text(self, key: str) -> str:
        label = self.errors[key]
        return label.text() if not label.isHidden() else ""
