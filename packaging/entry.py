"""Entry point of the PyInstaller bundle: ``multiprocessing.freeze_support()`` first, then ``sft-studio``.

The bundle's executable is the GUI (no arguments) and every CLI subcommand; the GUI starts the training
child as ``<this executable> train --config ...`` (``core.launch.training_child_command``).
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from app.entry import register_gui

    register_gui()  # the bundle's executable is also the desktop app
    from core.launch import main

    sys.exit(main())
