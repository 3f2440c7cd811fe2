"""Script export = the run: ``sft-studio export RUN_DIR --script OUT`` writes a folder whose ``train.py`` trains,
in an interpreter that cannot import SFT Studio, exactly the tokens ``preview`` shows — through TRL's own masking
where TRL builds the same labels (a template it patches), through the studio's tokens everywhere else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from core.export import ExportError
from core.script_export import MODE_TOKENS, MODE_TRL, export_script, plan_script

QUESTIONS = ["Who are you?", "What is your name?", "hi", "hello", "Introduce yourself."]


def _conversations() -> list[dict]:
    rows = [{"messages": [{"role": "user", "content": f"{q} ({i})"},
                          {"role": "assistant", "content": "I am Studio Helper, the assistant of SFT Studio."}]}
            for i in range(2) for q in QUESTIONS]
    rows.append({"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"}, {"role": "assistant", "content": "Madrid."},
    ]})
    rows.append({"messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "cut"}]})
    return rows  # the last row has no trained token within max_length: preview marks it dropped


def make_run_dir(tmp: Path, model: Path | str, rows: list[dict] | None = None, **sections) -> Path:
    """A run directory (output_dir + run.yaml) that has not trained: a script export needs nothing more."""
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (rows or _conversations())))
    cfg = {
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), "max_length": 128, "eval_fraction": 0.2},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "training": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 0.01, "save_steps": 50,
                     "seed": 0},
        "output_dir": str(tmp / "run"),
    }
    for section, values in sections.items():
        cfg[section].update(values)
    (tmp / "run").mkdir(parents=True, exist_ok=True)
    (tmp / "run" / "run.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "run"


def _preview(run_dir: Path, capsys) -> dict[int, dict]:
    """``sft-studio preview --config RUN --json``, by row."""
    from core.cli import main

    capsys.readouterr()
    assert main(["preview", "--config", str(run_dir / "run.yaml"), "--json"]) == 0
    return {o["row"]: o for o in map(json.loads, capsys.readouterr().out.splitlines())}


def _open(run_dir: Path):
    from core.config import load_run_config
    from core.pipeline import open_run

    return open_run(load_run_config(run_dir / "run.yaml"))


@pytest.fixture(scope="session")
def site_without_studio(tmp_path_factory) -> str:
    """A PYTHONPATH for ``python -S`` (no site: no .pth files, so no editable install of SFT Studio) that holds the
    installed packages — torch, transformers, datasets, trl, peft & co. — but not SFT Studio: a venv without it."""
    paths = sysconfig.get_paths()
    sites = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    entries = []
    if any((Path(site) / name).exists() for site in sites for name in ("core", "app")):  # a non-editable install
        blocker = tmp_path_factory.mktemp("no-studio")
        for name in ("core", "app", "resources"):
            (blocker / f"{name}.py").write_text("raise ImportError('SFT Studio is not installed here')\n")
        entries.append(str(blocker))
    return os.pathsep.join(entries + sites)


def run_without_studio(site: str, folder: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(folder)), "PYTHONPATH": site,
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-S", "-s", *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(("family", "mode"), [("qwen2_5", MODE_TRL), ("chatml", MODE_TOKENS),
                                              ("llama3_1", MODE_TOKENS), ("mistral", MODE_TOKENS)])
def test_trl_builds_the_labels_only_for_a_template_it_patches(tmp_path, tiny_model_factory, family, mode):
    rows = _conversations()
    if family == "mistral":  # its template allows no system turn
        rows = [r for r in rows if r["messages"][0]["role"] != "system"]
    run = _open(make_run_dir(tmp_path, tiny_model_factory(family), rows))
    plan = plan_script(run)
    assert plan.mode == mode, plan.reason
    if mode == MODE_TRL:
        assert plan.assistant_only_loss and not plan.completion_only_loss
        assert "checked" in plan.reason
    else:
        assert "cannot patch this chat template" in plan.reason
    assert plan.dropped == 1 and plan.train and plan.eval


def test_the_rows_are_the_ones_training_builds(tmp_path, tiny_model_factory):
    from core.pipeline import build_training_rows

    run = _open(make_run_dir(tmp_path, tiny_model_factory("chatml")))
    plan = plan_script(run)
    rows = build_training_rows(run)
    assert [(r.input_ids, r.labels) for r in plan.train] == rows.train
    assert [(r.input_ids, r.labels) for r in plan.eval] == rows.eval
    assert plan.dropped == len(rows.dropped) == 1


def test_prompt_completion_rows_use_trls_completion_only_loss(tmp_path, tiny_model_factory):
    rows = [{"prompt": f"Translate to French: hello {i}\n", "completion": "Bonjour le monde."} for i in range(6)]
    run = _open(make_run_dir(tmp_path, tiny_model_factory("qwen2_5"), rows, data={"eval_fraction": 0.0}))
    plan = plan_script(run)
    assert plan.mode == MODE_TRL, plan.reason
    assert plan.completion_only_loss and not plan.assistant_only_loss and not plan.eval


def test_a_row_trl_would_label_differently_means_studio_tokens(tmp_path, tiny_model_factory, monkeypatch):
    import core.script_export as se

    run = _open(make_run_dir(tmp_path, tiny_model_factory("qwen2_5")))
    real = se._first_difference

    def disagree(rows, got):  # as if TRL had masked one token of the first row differently
        row = rows[0]
        ids, labels = got[row.row]
        got[row.row] = (ids, [*labels[:-1], -100])
        return real(rows, got)

    monkeypatch.setattr(se, "_first_difference", disagree)
    plan = plan_script(run)
    assert plan.mode == MODE_TOKENS and "other tokens of row" in plan.reason


# ------------------------------------------------------------------------------ the script, without the studio


@pytest.mark.parametrize("family", ["qwen2_5", "chatml"])
def test_script_without_sft_studio_prepares_the_preview_labels_and_trains_into_its_own_folder(
        tmp_path, tiny_model_factory, site_without_studio, capsys, family):
    """qwen2_5: TRL patches the template and builds the labels itself; chatml (SmolLM2's plain template): the
    studio's tokens. Either way the trainer's prepared rows equal `preview --json` row by row, and two steps train
    into the script's own output folder, not the run's."""
    run_dir = make_run_dir(tmp_path, tiny_model_factory(family))
    run_files = sorted(p.name for p in run_dir.iterdir())
    result = export_script(run_dir, tmp_path / "export")
    mode = MODE_TRL if family == "qwen2_5" else MODE_TOKENS
    assert yaml.safe_load((tmp_path / "export" / "config.yaml").read_text())["mode"] == mode
    header = (tmp_path / "export" / "train.py").read_text().split('"""')[1]
    assert f"({mode} mode)" in header and "Why:" in header
    assert any(n.startswith("labels:") for n in result.notes)
    moved = tmp_path / "elsewhere" / "script"  # paths are relative to the script: the folder can be moved
    shutil.copytree(tmp_path / "export", moved)

    probe = run_without_studio(site_without_studio, moved, "-c", "import core")
    assert probe.returncode != 0 and "Error" in probe.stderr and "core" in probe.stderr
    # one interpreter runs the script twice (its imports take most of the time): --prepare-only, then 2 steps
    twice = ("import runpy, sys\n"
             "for argv in (['--prepare-only', 'prepared.jsonl'], ['--device', 'cpu']):\n"
             "    sys.argv = ['train.py', *argv]\n"
             "    try:\n"
             "        runpy.run_path('train.py', run_name='__main__')\n"
             "    except SystemExit as exc:\n"
             "        if exc.code:\n"
             "            raise\n")
    done = run_without_studio(site_without_studio, moved, "-c", twice)
    assert done.returncode == 0, done.stderr[-3000:]
    prepared = [json.loads(line) for line in (moved / "prepared.jsonl").read_text().splitlines()]

    preview = _preview(run_dir, capsys)
    trained = {row: o for row, o in preview.items() if "dropped" not in o}
    assert sorted(p["row"] for p in prepared) == sorted(trained)  # every trained row once; dropped ones not at all
    for p in prepared:
        assert p["input_ids"] == trained[p["row"]]["input_ids"], p["row"]
        assert p["labels"] == trained[p["row"]]["labels"], p["row"]
    assert {p["split"] for p in prepared} == {"train", "eval"}

    adapter = moved / "output" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert (moved / "output" / "checkpoints" / "checkpoint-2").is_dir()  # max_steps 2, from the run
    assert sorted(p.name for p in run_dir.iterdir()) == run_files  # nothing written into the studio's run


def test_the_script_has_the_runs_hyperparameters(tmp_path, tiny_model_factory):
    run_dir = make_run_dir(tmp_path, tiny_model_factory("chatml"), lora={"use_rslora": True, "target_modules":
                           ["q_proj", "v_proj"]}, training={"warmup_steps": 0.1, "lr_scheduler_type": "cosine",
                           "gradient_accumulation_steps": 3, "packing": True})
    export_script(run_dir, tmp_path / "export")
    settings = yaml.safe_load((tmp_path / "export" / "config.yaml").read_text())
    sft, lora = settings["sft"], settings["lora"]
    assert sft["learning_rate"] == 0.01 and sft["max_steps"] == 2 and sft["warmup_steps"] == 0.1
    assert sft["lr_scheduler_type"] == "cosine" and sft["gradient_accumulation_steps"] == 3 and sft["packing"] is True
    assert sft["max_length"] == 128 and sft["seed"] == 0 and sft["per_device_train_batch_size"] == 4
    assert sft["eval_strategy"] == "steps" and settings["data"]["eval"] == "data/eval.jsonl"
    assert lora == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                    "use_dora": False, "use_rslora": True}
    assert settings["model"]["name_or_path"] == str(tiny_model_factory("chatml").resolve())
    assert settings["device"] == "auto" and settings["precision"] == "auto"
    script = (tmp_path / "export" / "train.py").read_text()
    assert "import core" not in script and "from core" not in script and "sft_studio" not in script


def test_a_gguf_base_is_written_as_a_plain_model_the_script_loads(tmp_path, tiny_model_factory, monkeypatch):
    """TRL cannot train a GGUF-quantised model: the export writes base/ (the weights as the studio loads them) and
    the script points at ./base. A tiny saved model stands in for the GGUF file (the real one: the slow test)."""
    import core.training.models as models

    folder = tiny_model_factory("chatml")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    real_load = models.load_model
    from transformers import AutoTokenizer

    monkeypatch.setattr(models, "load_tokenizer", lambda source: AutoTokenizer.from_pretrained(folder))
    monkeypatch.setattr(models, "load_model", lambda source, dtype="fp32", **kw: real_load(
        models.ModelSource(str(folder), str(folder)), dtype=dtype))
    run_dir = make_run_dir(tmp_path, tmp_path / "model.gguf")
    result = export_script(run_dir, tmp_path / "export")
    base = tmp_path / "export" / "base"
    assert (base / "config.json").is_file() and (base / "model.safetensors").is_file()
    assert (base / "tokenizer.json").is_file() and result.max_abs_diff == 0.0
    settings = yaml.safe_load((tmp_path / "export" / "config.yaml").read_text())
    assert settings["model"]["name_or_path"] == "./base"
    assert any("base/" in n and "GGUF" in n for n in result.notes)


@pytest.mark.slow
def test_bundled_smollm2_script_prepares_the_audited_tokens(tmp_path, site_without_studio):
    """The real offline model: a GGUF base, plain ChatML (tokens mode), the sample data — the script's prepared rows
    carry as many trained tokens as `sft-studio audit` reports."""
    from core.training.models import ModelError, resolve_model_source
    from resources import SAMPLE_DATASET

    try:
        resolve_model_source("bundled:SmolLM2-135M-Instruct")
    except ModelError as exc:
        pytest.skip(str(exc))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": "bundled:SmolLM2-135M-Instruct"},
        "data": {"path": str(SAMPLE_DATASET), "max_length": 512}, "output_dir": str(tmp_path / "run")}))
    result = export_script(tmp_path / "run", tmp_path / "export")
    assert yaml.safe_load((tmp_path / "export" / "config.yaml").read_text())["mode"] == MODE_TOKENS
    done = run_without_studio(site_without_studio, tmp_path / "export", "train.py", "--prepare-only", "rows.jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "export" / "rows.jsonl").read_text().splitlines()]
    from core.audit import audit_run

    report = audit_run(_open(tmp_path / "run")).to_dict()
    trained = sum(1 for r in rows for label in r["labels"] if label != -100)
    assert trained == report["trained_tokens"] and f"{trained} of" in result.notes[1]


# --------------------------------------------------------------------------------------------------- the CLI


def test_cli_export_script(tmp_path, tiny_model_factory, capsys):
    from core.cli import main

    run_dir = make_run_dir(tmp_path, tiny_model_factory("qwen2_5"))
    assert main(["export", str(run_dir), "--script", str(tmp_path / "out"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["kind"] == "script" and result[0]["path"] == str((tmp_path / "out").resolve())
    for name in ("train.py", "config.yaml", "run.yaml", "chat_template.jinja", "data/train.jsonl", "data/eval.jsonl"):
        assert (tmp_path / "out" / name).is_file(), name
    # a second export into the non-empty folder is refused without --overwrite, allowed with it
    assert main(["export", str(run_dir), "--script", str(tmp_path / "out")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--script", str(tmp_path / "out"), "--overwrite"]) == 0


def test_cli_script_errors_are_one_line_and_leave_nothing(tmp_path, tiny_model_factory, capsys):
    from core.cli import main

    assert main(["export", str(tmp_path / "no-run"), "--script", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "run.yaml" in err and "Traceback" not in err
    assert main(["export", str(tmp_path)]) == 2
    assert "--script" in capsys.readouterr().err
    run_dir = make_run_dir(tmp_path, tiny_model_factory("qwen2_5"))
    (tmp_path / "data.jsonl").unlink()  # the run's data is gone: a clear error, nothing half-written
    assert main(["export", str(run_dir), "--script", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: ") and "data.jsonl" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.export-*"))
    for inside in (run_dir, run_dir / "adapter", run_dir / "checkpoints" / "x", tmp_path):
        with pytest.raises(ExportError, match="overwrite the run itself"):
            export_script(run_dir, inside, overwrite=True)
