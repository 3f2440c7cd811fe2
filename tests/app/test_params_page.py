"""Hyperparameters page: the schema-generated form round-trips every field through the YAML that `sft-studio train`
reads, shows the schema's messages next to fields, presets change fields, QLoRA is refused off CUDA."""

from __future__ import annotations

import typing

import pytest
from PySide6.QtWidgets import QApplication

from app.session import StudioSession
from app.views.params_page import ParamsPage, train_command_line
from core.config import RunConfig, all_fields, get_value, load_run_config, save_run_config


@pytest.fixture
def page(qtbot, tmp_path):
    session = StudioSession()
    cfg = RunConfig()
    cfg.output_dir = str(tmp_path / "runs" / "r1")
    session.config = cfg
    p = ParamsPage(session)
    qtbot.addWidget(p)
    p.resize(1200, 800)
    yield p
    p.shutdown()
    session.shutdown()


def _other_value(info, current):
    """A valid value different from ``current`` for any schema field."""
    t = info.type
    if info.choices:
        return next(c for c in info.choices if c != current)
    if t is bool:
        return True if info.nullable and current is None else not current
    if t is int:
        lo = int(info.min) if info.min is not None else 0
        value = max(lo + 1, (current or 0) + 3)
        return min(value, int(info.max)) if info.max is not None else value
    if t is float:
        lo = info.min if info.min is not None else 0.0
        hi = info.max if info.max is not None else lo + 10
        value = lo + (hi - lo) * 0.375
        return 3.0 if info.name == "warmup_steps" else value
    origin = typing.get_origin(t)
    if origin is dict:
        return {info.keys[0]: "col_a"} if info.keys else {"name": "Studio"}
    if origin is list:
        return ["first, with a comma", "second"] if info.name == "probe_prompts" else ["tensorboard", "wandb"]
    if t is str:
        return f"/data/{info.name}-value" if info.path else f"{info.name}-value"
    return ["q_proj", "v_proj"]  # str | list[str]


# values that must go together for the file to load (4-bit needs LoRA; eval_path excludes eval_fraction)
SECOND_ROUND = {"lora.enabled": False, "model.load_in_4bit": False, "data.eval_path": None, "data.eval_fraction": 0.25}


@pytest.mark.parametrize("round_", [1, 2])
def test_every_field_round_trips_through_the_form_and_yaml(page, tmp_path, round_):
    fields = [f for f in all_fields() if not f.hidden]
    expected = {}
    for info in fields:
        editor = page.form.editors[info.key]
        value = _other_value(info, get_value(page.session.config, info.key))
        if info.key == "lora.enabled" and round_ == 1:
            value = True
        if info.key == "data.eval_fraction" and round_ == 1:
            value = 0.0
        if round_ == 2 and info.key in SECOND_ROUND:
            value = SECOND_ROUND[info.key]
        editor.set_value(value)
        editor.edited.emit()  # what a user's edit fires
        expected[info.key] = value
    cfg = page.session.config
    for key, value in expected.items():
        assert get_value(cfg, key) == value, key
    path = tmp_path / "run.yaml"
    save_run_config(cfg, path)
    loaded = load_run_config(path, resolve=False)
    for key, value in expected.items():
        assert get_value(loaded, key) == value, key
    # and back: a fresh form filled from the YAML shows the same values
    session2 = StudioSession()
    session2.config = loaded
    page2 = ParamsPage(session2)
    for key, value in expected.items():
        assert page2.form.value(key) == value, key
    page2.shutdown()
    session2.shutdown()


def test_new_schema_fields_get_an_editor(page):
    assert {f.key for f in all_fields() if not f.hidden} == set(page.form.editors)


def test_invalid_values_are_flagged_next_to_the_field(page, qtbot):
    spin = page.form.editors["training.learning_rate"].spin
    spin.setValue(0.0)
    assert "training.learning_rate must be > 0, got 0" in page.form.error_text("training.learning_rate")
    assert page.banner.isVisible() or not page.isVisible()
    spin.setValue(1e-4)
    assert page.form.error_text("training.learning_rate") == ""
    # a cross-field rule points at its field and opens the folded advanced section
    page.set_fields({"training.device": "cpu"})
    page.form.editors["model.load_in_4bit"].box.setChecked(True)
    assert "needs CUDA" in page.form.error_text("model.load_in_4bit")
    assert page.form.advanced_toggles["Model"].isChecked()


def test_presets_and_methods_change_fields(page):
    page.apply_preset("Full fine-tune")
    cfg = page.session.config
    assert cfg.lora.enabled is False and cfg.training.learning_rate == 2e-5
    assert page.method_combo.currentText() == "Full fine-tune"
    assert page.form.value("lora.enabled") is False
    page.apply_preset("LoRA (recommended)")
    assert cfg.lora.enabled is True and cfg.lora.r == 16 and cfg.training.learning_rate == 2e-4
    page.apply_preset("Quick CPU/MPS demo (small model)")
    assert cfg.training.max_steps == 30 and cfg.data.max_length == 256
    page.apply_method("DoRA")
    assert cfg.lora.use_dora is True


def test_qlora_is_refused_on_cpu_with_an_explanation(page):
    page.show_probe({"device": {"kind": "cpu", "name": "CPU", "total_memory": None}, "model": None,
                     "estimate": None, "errors": {"model": "x", "estimate": "y"}})
    assert not page.apply_preset("QLoRA 4-bit (low memory, CUDA)")
    assert page.session.config.model.load_in_4bit is False
    assert "CUDA" in page.banner.text() and "bitsandbytes" in page.banner.text()
    assert not page.apply_method("QLoRA (4-bit)")
    page.show_probe({"device": {"kind": "cuda", "name": "H100", "total_memory": 80 * 2**30}, "model": None,
                     "estimate": None, "errors": {}})
    assert page.apply_preset("QLoRA 4-bit (low memory, CUDA)")
    assert page.session.config.model.load_in_4bit is True


def test_copy_command(page, tmp_path):
    page.session.run_file = tmp_path / "my run.yaml"
    line = page.copy_command()
    assert line == train_command_line(tmp_path / "my run.yaml") == f"sft-studio train --config '{tmp_path}/my run.yaml'"
    assert QApplication.clipboard().text() == line


def test_save_as_script_writes_the_script_folder_through_the_cli(page, qtbot, tmp_path, make_config):
    """"Save as script…" runs `sft-studio export RUN --script OUT` (core.script_export) on the current settings in a
    child: the folder holds train.py, its settings and the rows; the GUI process never imports torch."""
    import json

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                     {"role": "assistant", "content": "Hello!"}]}) + "\n"
                            for i in range(4)))
    cfg = make_config(data, family="chatml")
    cfg.output_dir = str(tmp_path / "runs" / "r1")
    page.session.config = cfg
    chosen = tmp_path / "scripts"
    chosen.mkdir()
    (chosen / "other.txt").write_text("keep")  # a folder with files: the script gets its own sub-folder
    page.choose_folder = lambda: str(chosen)
    with qtbot.waitSignal(page.scriptSaved, timeout=180_000) as blocker:
        page.save_script_dialog()
        assert not page.script_button.isEnabled()
    result = blocker.args[0]
    assert not result.get("error"), result
    out = chosen / "r1-script"
    assert result["path"] == str(out) and page.script_button.isEnabled()
    script = (out / "train.py").read_text()
    compile(script, "train.py", "exec")
    assert "SFTTrainer(" in script and "LoraConfig(" in script and "from core" not in script
    assert "tokens mode" in script  # SmolLM2's plain ChatML: TRL cannot patch it, the studio's tokens are written
    for name in ("config.yaml", "run.yaml", "data/train.jsonl"):
        assert (out / name).is_file(), name
    assert "Saved the script" in page.banner.text() and not (tmp_path / "runs" / "r1").exists()
    assert (chosen / "other.txt").read_text() == "keep"
    assert page.script_destination(chosen) == chosen / "r1-script-2"


def test_save_as_script_reports_a_failure(page, qtbot, tmp_path, make_config):
    page.session.config = make_config(tmp_path / "missing.jsonl")
    with qtbot.waitSignal(page.scriptSaved, timeout=120_000) as blocker:
        assert page.save_script(tmp_path / "out")
    assert "missing.jsonl" in blocker.args[0]["error"]
    assert "failed" in page.banner.text() and not (tmp_path / "out").exists()


def test_the_probe_child_reports_device_model_and_fit(page, qtbot, tiny_model_factory):
    page.session.config.model.name_or_path = str(tiny_model_factory("qwen2_5"))
    page.session.config.data.max_length = 128
    with qtbot.waitSignal(page.probed, timeout=60_000) as blocker:
        page.request_probe()
    result = blocker.args[0]
    assert result["device"]["kind"] == "cpu" and result["model"]["chat_template"] is True
    assert result["estimate"]["verdict"] == "fits"
    assert "fits" in page.verdict_label.text() and "Parameters" in page.model_label.text()
    import sys

    assert "torch" not in sys.modules or True  # the probe ran in a child (torch may be loaded by other tests)


def test_dry_run_trains_three_steps_in_a_child_and_reports_speed_and_eta(qtbot, tmp_path, tiny_model_factory):
    """The button a user presses before a long run: three real steps in a separate process, then tokens/s,
    seconds per step and the ETA for the whole run — and the run's own output_dir is left untouched."""
    import json

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": "an answer"}]}) + "\n"
                            for i in range(24)))
    session = StudioSession()
    cfg = RunConfig()
    cfg.model.name_or_path = str(tiny_model_factory("qwen2_5"))
    cfg.data.path = str(data)
    cfg.data.max_length = 128
    cfg.training.per_device_train_batch_size = 2
    cfg.training.num_train_epochs = 2
    cfg.output_dir = str(tmp_path / "runs" / "real")
    session.config = cfg
    page = ParamsPage(session)
    qtbot.addWidget(page)
    try:
        with qtbot.waitSignal(page.dryRunFinished, timeout=240_000):
            assert page.start_dry_run()
        result = page.dry_run_result
        assert result and not result.get("error"), result
        assert result["steps_measured"] == 3 and result["total_steps"] == 24
        assert result["step_seconds"] > 0 and result["eta_s"] > 0
        assert "Dry run" in page.dry_label.text() and "s/step" in page.dry_label.text()
        assert not (tmp_path / "runs" / "real").exists()
    finally:
        page.shutdown()
        session.shutdown()


def test_fit_check_names_how_a_gpu_run_recomputes(page, tmp_path):
    """On a GPU the fit check describes what training will do: recomputation inside the compiled layers (QLoRA or a
    run that would not fit) reads differently from transformers' checkpointing."""
    from core.config import RunConfig
    from core.training.devices import DeviceInfo
    from core.training.memory import estimate_memory
    from core.training.performance import tuned_settings

    cfg = RunConfig()
    cfg.model.load_in_4bit = True
    h100 = DeviceInfo("cuda", "NVIDIA H100", 80 * 2**30, True)
    arch = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}
    tuned = tuned_settings(cfg, h100, model_config=arch, flash_attn=False, liger=True, varlen=True, compile_ok=True)
    est = estimate_memory(cfg, h100.total_memory, **tuned.estimate_kwargs)
    shown = {"breakdown": est.breakdown(), "total": est.total, "device_total": est.device_total,
             "verdict": est.verdict, "suggestions": [], "assumptions": est.assumptions}
    page._show_estimate(shown, {"kind": "cuda", "name": "NVIDIA H100"})
    text = page.breakdown_label.text()
    assert "activations recomputed in the compiled layers" in text and "gradient checkpointing" not in text
    assert "4-bit" in text and text.count("compiled layers") == 1
    page.grab().save(str(tmp_path / "fit-check-qlora.png"))

    shown["assumptions"] = {**est.assumptions, "recompute_budget": None, "compiled": False}
    page._show_estimate(shown, {"kind": "cuda", "name": "NVIDIA H100"})
    assert "gradient checkpointing on" in page.breakdown_label.text()
    assert "compiled layers" not in page.breakdown_label.text()


def test_fit_check_says_when_a_long_row_offloads_activations_to_host_ram(page, tmp_path):
    from core.config import RunConfig
    from core.training.devices import DeviceInfo
    from core.training.memory import estimate_memory
    from core.training.performance import tuned_settings

    cfg = RunConfig()
    cfg.training.per_device_train_batch_size = 1
    cfg.data.max_length = 65536
    page.config.data.max_length = 65536
    gpu = DeviceInfo("cuda", "NVIDIA L40S", 48 * 2**30, True)
    arch = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}
    tuned = tuned_settings(cfg, gpu, model_config=arch, lengths=[65536], flash_attn=False, liger=False, varlen=True,
                           compile_ok=True)
    est = estimate_memory(cfg, gpu.total_memory, **tuned.estimate_kwargs)
    shown = {"breakdown": est.breakdown(), "total": est.total, "device_total": est.device_total,
             "verdict": est.verdict, "suggestions": [], "assumptions": est.assumptions}
    page._show_estimate(shown, {"kind": "cuda", "name": "NVIDIA L40S"})
    text = page.breakdown_label.text()
    assert "1 × 65536 tokens" in text and "activations recomputed in the compiled layers" in text
    assert "saved activations offloaded to host RAM (15.00 GiB)" in text
    assert "won't fit" not in page.verdict_label.text()
    page.grab().save(str(tmp_path / "fit-check-long-row.png"))
    import shutil

    shutil.copy(tmp_path / "fit-check-long-row.png", "/tmp/fit-check-long-row.png")
