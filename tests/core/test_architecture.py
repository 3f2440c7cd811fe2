"""Architecture rules that must hold, checked rather than hoped for."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import core

ROOT = Path(__file__).resolve().parents[2]

_BLOCK_QT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph', 'app'):
            raise ImportError('core must not import ' + name)
sys.meta_path.insert(0, Block())
"""


def _core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(core.__path__, "core."))


def test_core_never_imports_qt_or_app():
    modules = _core_modules()
    assert "core.masks" in modules and "core.training.session" in modules
    code = _BLOCK_QT + "".join(f"import {m}\n" for m in modules)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_startup_paths_do_not_import_heavy_libraries():
    """The GUI imports these at start-up; torch/transformers/trl/datasets must load lazily."""
    light = ["core.cli", "core.config", "core.data", "core.templates", "core.masks", "core.pipeline", "core.audit",
             "core.training.events", "core.training.devices", "core.training.models", "resources"]
    code = "".join(f"import {m}\n" for m in light) + (
        "import sys\nheavy = [m for m in ('torch', 'transformers', 'trl', 'datasets', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
