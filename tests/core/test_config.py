"""Run-config schema, YAML round trip, validation messages, overrides and path resolution."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import core.config.io as config_io
from core.config import (
    SCHEMA_VERSION,
    ConfigError,
    ConfigProblem,
    DataConfig,
    LoraSettings,
    ModelConfig,
    RunConfig,
    TrainingSettings,
    all_fields,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_run_config,
    field_info,
    get_value,
    iter_fields,
    load_run_config,
    resolve_paths,
    save_run_config,
    validate_run_config,
)
from core.config.schema import DistributedSettings

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


def everything_changed() -> RunConfig:
    """A valid config in which every field differs from its default."""
    return RunConfig(
        schema_version=1,
        model=ModelConfig(
            name_or_path="/models/tiny.gguf",
            chat_template="/templates/chat.jinja",
            load_in_4bit=True,
            attn_implementation="sdpa",
            trust_remote_code=True,
            allow_pickle_weights=True,
        ),
        data=DataConfig(
            path="/data/train.jsonl",
            format="sharegpt",
            train_on="last_assistant",
            reasoning="mask_empty",
            max_length=512,
            columns={"messages": "conversations", "tools": "functions"},
            roles={"assistant": "bot, gpt", "user": "human"},
            eval_path="/data/eval.jsonl",
            eval_fraction=0.0,  # must stay 0 with an eval_path; see the_other_changes()
            placeholders={"name": "Studio", "author": "2024", "quote": "yes: no # not a comment"},
        ),
        lora=LoraSettings(
            r=8,
            lora_alpha=16,
            lora_dropout=0.1,
            target_modules=["q_proj", "v_proj"],
            use_dora=True,
            use_rslora=True,
            enabled=True,  # load_in_4bit needs LoRA; see the_other_changes()
        ),
        training=TrainingSettings(
            num_train_epochs=2.5,
            max_steps=100,
            learning_rate=2e-5,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            logging_steps=5,
            save_steps=25,
            eval_steps=10,
            seed=7,
            warmup_steps=0.1,
            lr_scheduler_type="cosine",
            weight_decay=0.01,
            max_grad_norm=0.5,
            gradient_checkpointing=True,
            torch_compile=False,
            packing=True,
            precision="bf16",
            device="cuda",
            report_to=["tensorboard"],
            probe_prompts=["What is 2+2?", "Line one\nline two", "  leading and trailing  "],
        ),
        distributed=DistributedSettings(
            num_processes=4, strategy="fsdp", fsdp_cpu_offload=True, mixed_precision="bf16", main_process_port=29611
        ),
        output_dir="/runs/every-field",
    )


# --------------------------------------------------------------------------- schema


def test_every_field_has_help_and_group() -> None:
    for info in all_fields():
        assert info.help.strip().endswith((".", ")")), info.key
        assert info.group, info.key


def test_all_fields_order_and_keys() -> None:
    keys = [info.key for info in all_fields()]
    assert keys[0] == "schema_version"
    assert keys[-1] == "output_dir"
    assert "training.learning_rate" in keys
    assert keys.index("model.name_or_path") < keys.index("data.path") < keys.index("lora.r")
    assert len(keys) == len(set(keys))


def test_field_info_resolves_types_and_metadata() -> None:
    lr = field_info("training.learning_rate")
    assert (lr.type, lr.nullable, lr.default) == (float, False, 2e-4)
    assert (lr.min, lr.min_exclusive, lr.max) == (0.0, True, 1.0)
    eval_steps = field_info("training.eval_steps")
    assert (eval_steps.type, eval_steps.nullable, eval_steps.advanced) == (int, True, True)
    attn = field_info("model.attn_implementation")
    assert attn.choices == (None, "sdpa", "sdpa_varlen", "eager", "flash_attention_2")
    assert field_info("lora.target_modules").type == (str | list[str])
    assert field_info("data.format").choices[0] == "auto"
    # mutable defaults are fresh copies
    cols = field_info("data.columns")
    cols.default["x"] = "y"
    assert cols.default == {}


def test_iter_fields_on_class_and_instance() -> None:
    by_class = [info.key for info in iter_fields(LoraSettings)]
    by_instance = [info.key for info in iter_fields(RunConfig().lora)]
    assert by_class == by_instance
    assert by_class[0] == "lora.r"
    assert [info.key for info in iter_fields(RunConfig)] == ["schema_version", "output_dir"]
    with pytest.raises(TypeError):
        list(iter_fields(int))


def test_defaults_are_valid() -> None:
    assert validate_run_config(RunConfig()) == []


# --------------------------------------------------------------------------- round trips


def test_round_trip_defaults(tmp_path: Path) -> None:
    path = save_run_config(RunConfig(), tmp_path / "run.yaml")
    assert load_run_config(path, resolve=False) == RunConfig()
    text = path.read_text()
    assert text.startswith("schema_version: 1\nmodel:\n")
    assert "learning_rate: 0.0002\n" in text


def the_other_changes() -> RunConfig:
    """The fields that cannot change together with the rest: eval split and full fine-tune."""
    cfg = everything_changed()
    cfg.data.eval_path = None
    cfg.data.eval_fraction = 0.25
    cfg.model.load_in_4bit = False
    cfg.lora.enabled = False
    return cfg


def test_the_two_variants_change_every_field() -> None:
    defaults = RunConfig()
    for info in all_fields():
        if info.key == "schema_version":
            continue
        changed = [
            get_value(c, info.key) != get_value(defaults, info.key)
            for c in (everything_changed(), the_other_changes())
        ]
        assert any(changed), info.key


@pytest.mark.parametrize("make", [everything_changed, the_other_changes])
def test_round_trip_every_field_changed(tmp_path: Path, make: Callable[[], RunConfig]) -> None:
    cfg = make()
    assert validate_run_config(cfg) == []
    path = save_run_config(cfg, tmp_path / "sub" / "run.yaml")
    # every path is absolute, so resolving changes nothing
    assert load_run_config(path) == cfg
    assert load_run_config(path, resolve=False) == cfg


def test_dict_round_trip() -> None:
    cfg = the_other_changes()
    d = config_to_dict(cfg)
    assert list(d) == ["schema_version", "model", "data", "lora", "training", "distributed", "output_dir"]
    assert config_from_dict(d) == cfg
    assert config_from_dict({}) == RunConfig()


@pytest.mark.parametrize("value", [2e-4, 2e-5, 1e-10, 3.0e-7, 0.1 + 0.2, 1e16, 123456.789])
def test_floats_round_trip_as_floats(tmp_path: Path, value: float) -> None:
    cfg = RunConfig()
    cfg.training.learning_rate = min(value, 1.0)
    cfg.training.weight_decay = value
    loaded = load_run_config(save_run_config(cfg, tmp_path / "run.yaml"), resolve=False)
    assert loaded.training.weight_decay == value
    assert type(loaded.training.weight_decay) is float


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        training:
          learning_rate: 2e-4
          num_train_epochs: 3
          max_steps: "20"
        """,
    )
    assert (
        yaml.safe_load(path.read_text())["training"]["learning_rate"] == "2e-4"
    )  # why the conversion exists
    t = load_run_config(path).training
    assert t.learning_rate == 2e-4 and type(t.learning_rate) is float
    assert t.num_train_epochs == 3.0 and type(t.num_train_epochs) is float
    assert t.max_steps == 20 and type(t.max_steps) is int


def test_missing_sections_and_schema_version_take_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "lora:\n  r: 4\ntraining:\n")
    cfg = load_run_config(path, resolve=False)
    expected = RunConfig()
    expected.lora.r = 4
    assert cfg == expected
    assert cfg.schema_version == 1
    assert load_run_config(write(tmp_path, "", "empty.yaml")) == RunConfig()


# --------------------------------------------------------------------------- error messages


def test_unknown_key_did_you_mean_with_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        model:
          name_or_path: gpt2
        training:
          learning_rat: 0.001
        """,
    )
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    [problem] = excinfo.value.problems
    assert problem == ConfigProblem(
        "training.learning_rat",
        "unknown key 'training.learning_rat'; did you mean 'learning_rate'?",
        str(path),
        4,
    )
    assert str(problem) == f"{path}:4: unknown key 'training.learning_rat'; did you mean 'learning_rate'?"


def test_unknown_key_in_wrong_place_points_to_its_section(tmp_path: Path) -> None:
    path = write(tmp_path, "learning_rate: 0.1\nlora:\n  max_length: 12\n  use_cpu: true\ntrainnig: {}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    assert problems_of(excinfo) == [
        f"{path}:1: unknown key 'learning_rate'; did you mean 'training.learning_rate'?",
        f"{path}:3: unknown key 'lora.max_length'; did you mean 'data.max_length'?",
        f"{path}:4: unknown key 'lora.use_cpu'; did you mean 'training.device'?",
        f"{path}:5: unknown key 'trainnig'; did you mean 'training'?",
    ]


def test_out_of_range_names_key_and_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        data:
          max_length: 8
          eval_fraction: 0.6
        lora:
          lora_dropout: 1
        training:
          learning_rate: -1
        """,
    )
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    assert problems_of(excinfo) == [
        f"{path}:2: data.max_length must be >= 16, got 8",
        f"{path}:3: data.eval_fraction must be <= 0.5, got 0.6",
        f"{path}:5: lora.lora_dropout must be < 1, got 1",
        f"{path}:7: training.learning_rate must be > 0, got -1",
    ]


def test_bad_choice(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  format: jsonl\nmodel:\n  attn_implementation: flash\n")
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    assert problems_of(excinfo) == [
        f"{path}:2: data.format must be one of auto, text, prompt_completion, messages, sharegpt, alpaca; "
        "got 'jsonl'",
        f"{path}:4: model.attn_implementation must be one of null, sdpa, sdpa_varlen, eager, flash_attention_2; got 'flash'",
    ]


def test_wrong_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        model:
          load_in_4bit: 1
          name_or_path: 5
        data:
          max_length: 12.5
          columns: [prompt]
        lora:
          r: true
          target_modules: [q_proj, 3]
        training:
          learning_rate: fast
          seed: null
        """,
    )
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    assert problems_of(excinfo) == [
        f"{path}:2: model.load_in_4bit must be true or false, got 1",
        f"{path}:3: model.name_or_path must be a string, got 5",
        f"{path}:5: data.max_length must be an integer, got 12.5",
        f"{path}:6: data.columns must be a mapping of names to strings, got ['prompt']",
        f"{path}:8: lora.r must be an integer, got true",
        f"{path}:9: lora.target_modules must be a string or a list of strings, got ['q_proj', 3]",
        f"{path}:11: training.learning_rate must be a number, got 'fast'",
        f"{path}:12: training.seed must be an integer, got null",
    ]


def test_column_roles_and_section_shape(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  columns:\n    promt: question\nlora: 5\n")
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    assert problems_of(excinfo) == [
        f"{path}:3: unknown key 'data.columns.promt' (allowed: prompt, completion, messages, text, "
        "instruction, input, output, system, history, tools); did you mean 'prompt'?",
        f"{path}:4: lora must be a mapping of settings, got 5",
    ]


def test_duplicate_key(tmp_path: Path) -> None:
    path = write(tmp_path, "training:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    assert problems_of(excinfo) == [f"{path}:2: training.seed is set twice (lines 2 and 3)"]


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  name_or_path: gpt2\ndata:\n  path: [unclosed\n  format: auto\n")
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    [problem] = excinfo.value.problems
    assert problem.file == str(path)
    assert problem.line in (4, 5)
    assert str(problem).startswith(f"{path}:{problem.line}: invalid YAML:")


def test_not_a_mapping_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_run_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="cannot read the run file"):
        load_run_config(tmp_path / "missing.yaml")


def test_future_schema_version(tmp_path: Path) -> None:
    path = write(tmp_path, f"schema_version: {SCHEMA_VERSION + 1}\nnew_section: {{}}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    [problem] = excinfo.value.problems  # the unknown section is not reported on top
    assert problem.key == "schema_version" and problem.line == 1
    assert f"schema_version {SCHEMA_VERSION + 1} is newer" in str(problem)
    assert "upgrade SFT Studio" in str(problem)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  format: x\n  max_length: 1\ntraining:\n  seed: a\n  bogus: 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    assert [p.line for p in excinfo.value.problems] == [2, 3, 5, 6]
    assert str(excinfo.value).count("\n") == 3


def test_cross_field_checks() -> None:
    cfg = RunConfig()
    cfg.training.max_steps = 0
    cfg.training.warmup_steps = 2.5
    cfg.training.eval_steps = 10
    cfg.model.load_in_4bit = True
    cfg.lora.enabled = False
    cfg.training.device = "cpu"
    messages = [p.message for p in validate_run_config(cfg)]
    assert messages == [
        "training.max_steps must be -1 (use num_train_epochs) or > 0, got 0",
        "training.warmup_steps must be a whole number of steps, or below 1 for a fraction of all steps, "
        "got 2.5",
        "training.eval_steps is set but there is no evaluation data; set data.eval_path or data.eval_fraction",
        "model.load_in_4bit needs lora.enabled: 4-bit weights cannot be fine-tuned directly",
        "model.load_in_4bit needs CUDA, but training.device is 'cpu'",
    ]
    cfg = RunConfig()
    cfg.data.eval_path = "eval.jsonl"
    cfg.data.eval_fraction = 0.1
    assert [p.key for p in validate_run_config(cfg)] == ["data.eval_fraction"]


def test_validate_in_memory_is_strict_about_types() -> None:
    cfg = RunConfig()
    cfg.training.learning_rate = "2e-4"  # type: ignore[assignment]
    cfg.training.packing = 0  # type: ignore[assignment]
    cfg.data.path = " "
    problems = validate_run_config(cfg)
    assert [(p.key, p.file, p.line) for p in problems] == [
        ("data.path", None, None),
        ("training.learning_rate", None, None),
        ("training.packing", None, None),
    ]
    assert str(problems[0]) == "data.path must not be empty"


def test_config_from_dict_names_source() -> None:
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict({"training": {"learning_rate": 0}}, source="form")
    assert problems_of(excinfo) == ["form: training.learning_rate must be > 0, got 0"]


# --------------------------------------------------------------------------- overrides


def test_apply_overrides() -> None:
    cfg = RunConfig()
    out = apply_overrides(
        cfg,
        [
            "training.learning_rate=1e-4",
            "data.max_length=512",
            "training.eval_steps=null",
            "training.gradient_checkpointing=false",
            "lora.target_modules=[q_proj, v_proj]",
            "training.report_to=tensorboard",
            "data.columns.prompt=question",
            "data.placeholders={name: Studio}",
            "model.name_or_path=123",
            "output_dir=runs/x y",
        ],
    )
    assert cfg == RunConfig()  # not changed in place
    assert out.training.learning_rate == 1e-4
    assert out.data.max_length == 512
    assert out.training.eval_steps is None
    assert out.training.gradient_checkpointing is False
    assert out.lora.target_modules == ["q_proj", "v_proj"]
    assert out.training.report_to == ["tensorboard"]
    assert out.data.columns == {"prompt": "question"}
    assert out.data.placeholders == {"name": "Studio"}
    assert out.model.name_or_path == "123"
    assert out.output_dir == "runs/x y"


def test_apply_overrides_errors() -> None:
    with pytest.raises(ConfigError) as excinfo:
        apply_overrides(
            RunConfig(),
            [
                "training.learning_rat=1e-4",
                "learning_rate=1",
                "data.max_length=abc",
                "training.learning_rate=-1",
                "data.format=jsonl",
                "nonsense",
            ],
        )
    assert problems_of(excinfo) == [
        "unknown key 'training.learning_rat'; did you mean 'training.learning_rate'?",
        "unknown key 'learning_rate'; did you mean 'training.learning_rate'?",
        "data.max_length must be an integer, got 'abc'",
        "training.learning_rate must be > 0, got -1",
        "data.format must be one of auto, text, prompt_completion, messages, sharegpt, alpaca; got 'jsonl'",
        "override 'nonsense' must look like key=value, e.g. training.learning_rate=1e-4",
    ]


# --------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_yaml_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "train.jsonl").write_text("{}\n")
    (project / "local-model").mkdir()
    path = write(
        project,
        """
        model:
          name_or_path: local-model
          chat_template: templates/chat.jinja
        data:
          path: data/train.jsonl
          eval_path: ../shared/eval.jsonl
        output_dir: runs/r1
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_run_config(path)
    assert cfg.model.name_or_path == str(project / "local-model")
    assert cfg.model.chat_template == str(project / "templates" / "chat.jinja")
    assert cfg.data.path == str(project / "data" / "train.jsonl")
    assert cfg.data.eval_path == str(tmp_path / "shared" / "eval.jsonl")
    assert cfg.output_dir == str(project / "runs" / "r1")
    # as written
    raw = load_run_config(path, resolve=False)
    assert (raw.data.path, raw.output_dir) == ("data/train.jsonl", "runs/r1")
    assert resolve_paths(raw, project) == cfg
    assert raw.data.path == "data/train.jsonl"  # resolve_paths returns a copy


def test_hub_ids_builtin_names_and_defaults_are_not_resolved(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        model:
          name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct
          chat_template: chatml
        data:
          eval_path: tatsu-lab/alpaca
        """,
    )
    cfg = load_run_config(path)
    assert cfg.model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cfg.model.chat_template == "chatml"
    assert cfg.data.eval_path == "tatsu-lab/alpaca"
    # not written in the file: the defaults stay as they are (relative to the project root)
    assert cfg.data.path == "resources/sample_chat.jsonl"
    assert cfg.output_dir == "runs/my-run"
    bundled = load_run_config(
        write(tmp_path, "model:\n  name_or_path: bundled:SmolLM2-135M-Instruct\n", "b.yaml")
    )
    assert bundled.model.name_or_path == "bundled:SmolLM2-135M-Instruct"


def test_gguf_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, "model:\n  name_or_path: models/tiny.gguf\ndata:\n  path: ~/data.csv\n")
    cfg = load_run_config(path)
    assert cfg.model.name_or_path == str(tmp_path / "models" / "tiny.gguf")
    assert cfg.data.path == str(tmp_path / "home" / "data.csv")


# --------------------------------------------------------------------------- saving


def test_save_is_atomic_when_dumping_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_run_config(RunConfig(), tmp_path / "run.yaml")
    before = path.read_text()

    def broken_dump(*args: object, **kwargs: object) -> str:
        raise RuntimeError("dump failed")

    monkeypatch.setattr(config_io.yaml, "dump", broken_dump)
    with pytest.raises(RuntimeError):
        save_run_config(everything_changed(), path)
    assert path.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["run.yaml"]


def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_run_config(RunConfig(), tmp_path / "run.yaml")
    before = path.read_text()

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(config_io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_run_config(everything_changed(), path)
    assert path.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["run.yaml"]


def test_dump_is_readable() -> None:
    text = dump_run_config(everything_changed())
    assert "  target_modules:\n  - q_proj\n" not in text  # lists are indented under their key
    assert "  target_modules:\n    - q_proj\n    - v_proj\n" in text
    assert "Line one\n      line two" in text  # multi-line prompts as literal blocks
    assert yaml.safe_load(text) == config_to_dict(everything_changed())


def test_dataclass_sections_are_independent() -> None:
    a, b = RunConfig(), RunConfig()
    a.data.columns["prompt"] = "q"
    a.training.report_to.append("wandb")
    assert b.data.columns == {} and b.training.report_to == []
    assert dataclasses.asdict(b) == config_to_dict(b)


# --------------------------------------------------------------------------- light imports


def test_import_does_not_pull_heavy_or_qt_modules() -> None:
    code = (
        "import sys, core.config\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets', 'PySide6', 'pyqtgraph') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
