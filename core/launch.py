"""How the studio starts itself: the command line of the training child, and the frozen entry point.

Installed with pip, the GUI starts the trainer as ``python -m core.cli train ...`` with the same
interpreter. In a PyInstaller bundle there is no separate interpreter: ``sys.executable`` is the studio
executable itself, so the child is ``<studio> train ...`` and :func:`main` (the bundle's entry point)
dispatches it to :func:`core.cli.main` like any other subcommand. Qt-free and light (standard library only).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path


def is_frozen() -> bool:
    """True inside a PyInstaller (or similar) bundle, where ``sys.executable`` is the studio itself."""
    return bool(getattr(sys, "frozen", False))


def studio_command(*args: str) -> list[str]:
    """The command line that runs ``sft-studio ARGS...`` with this installation."""
    if is_frozen():
        return [sys.executable, *args]
    return [sys.executable, "-m", "core.cli", *args]


def training_child_command(config_path: str | os.PathLike[str], extra_args: Sequence[str] = ()) -> list[str]:
    """The command line of the training child: ``sft-studio train --config CONFIG EXTRA_ARGS...``.

    ``[sys.executable, "-m", "core.cli", "train", ...]`` normally; ``[sys.executable, "train", ...]`` in a
    frozen bundle, whose executable re-invokes itself as the child (see :func:`main`).
    """
    return studio_command("train", "--config", str(config_path), *extra_args)


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: unbuffered UTF-8 output so events arrive line by line.

    In a bundle, PyInstaller's bootloader changes ``LD_LIBRARY_PATH`` (Linux) for its own process; the
    original value is kept in ``LD_LIBRARY_PATH_ORIG`` and is restored for the child, which is the same
    executable and sets it up again itself.
    """
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    if is_frozen():
        for key in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
            orig = env.pop(f"{key}_ORIG", None)
            if orig is not None:
                env[key] = orig
            else:
                env.pop(key, None)
    return env


def _ensure_streams() -> None:
    """A windowed executable on Windows may start with no stdout/stderr; give it harmless ones."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process


def _frozen_defaults() -> None:
    """Settings that only make sense inside a bundle."""
    # The bundle has no site-packages to compile Triton kernels from, and no tensorboard.
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    bundle = Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent))
    certs = bundle / "certifi" / "cacert.pem"
    if certs.is_file():
        os.environ.setdefault("SSL_CERT_FILE", str(certs))


COMMANDS = ("gui", "preview", "audit", "train", "init", "export")


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """``sft-studio RUN.yaml`` (a file manager's "Open with", macOS/Windows file association) means
    ``sft-studio gui RUN.yaml``; everything else is passed through unchanged."""
    args = list(argv)
    if args and args[0] not in COMMANDS and not args[0].startswith("-") and Path(args[0]).suffix.lower() in (
        ".yaml",
        ".yml",
    ):
        return ["gui", *args]
    return args


def gui_main() -> int:
    """The ``sft-studio-gui`` entry point (no console window on Windows): always the desktop app."""
    args = sys.argv[1:]
    return main(args if args[:1] == ["gui"] else ["gui", *args])


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point of the frozen executable (and usable unfrozen): ``freeze_support`` first, then the CLI.

    ``multiprocessing.freeze_support()`` must run before anything else: when a library (datasets, torch
    data loaders) starts a multiprocessing worker from the bundle, the executable is re-run with
    multiprocessing's own arguments and must become that worker instead of opening the studio.
    """
    import multiprocessing

    multiprocessing.freeze_support()
    if is_frozen():
        _ensure_streams()
        _frozen_defaults()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["__convert-hf-to-gguf"]:  # the bundle runs llama.cpp's converter as its own child (export --gguf)
        from core.gguf_convert import converter_main

        return converter_main(args[1:])
    from core.cli import main as cli_main

    return cli_main(normalise_argv(args))


if __name__ == "__main__":
    sys.exit(main())
