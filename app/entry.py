"""The ``sft-studio`` command: ``core.cli``'s headless commands, plus the desktop app for ``sft-studio`` /
``sft-studio gui``. The app registers itself here so that ``core`` never imports Qt or ``app``; training and
chat children run ``python -m core.cli`` and never need the GUI."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def _open_app(**kwargs) -> int:  # noqa: ANN003 - run_app's keywords (run_file, page, row, screenshot)
    try:
        from app.main import run_app
    except ImportError as exc:
        print(f"error: the desktop app cannot start: {exc} (install PySide6-Essentials and pyqtgraph)", file=sys.stderr)
        return 2
    return run_app(**kwargs)


def register_gui() -> None:
    """Let ``core.cli``'s ``gui`` command (and a bare ``sft-studio``) open the desktop app."""
    import core.cli

    core.cli.gui_launcher = _open_app


def main(argv: Sequence[str] | None = None) -> int:
    """``sft-studio`` (console script and frozen bundle): ``freeze_support`` first, then the CLI (core.launch)."""
    register_gui()
    from core.launch import main as launch_main

    return launch_main(argv)


def gui_main() -> int:
    """``sft-studio-gui`` (no console window on Windows): always the desktop app."""
    register_gui()
    from core.launch import gui_main as launch_gui_main

    return launch_gui_main()


if __name__ == "__main__":
    sys.exit(main())
