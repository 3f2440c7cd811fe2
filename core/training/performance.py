"""Automatic speed/memory choices for a run (attention kernel, padding-free batches, checkpointing, micro-batch,
Liger kernels, device rules).

:func:`tuned_settings` returns what :mod:`core.training.session` applies to the ``SFTConfig`` and to model loading,
with a reason for each, so the run log can say what was chosen and why. Every choice is only made where the run
file leaves the field on automatic (``null``/``auto``).

Where the settings go (see :class:`TunedSettings`):

* ``sft_args`` — SFTConfig keywords the session does not set itself; passed as ``SFTConfig(..., **sft_args)``.
  ``gradient_checkpointing`` is among them (the session pops it).
* ``sft_overrides`` — SFTConfig keywords that *replace* values the session sets (micro-batch, accumulation,
  ``max_length``, ``padding_free``, which must travel together). The session applies them with
  ``SFTConfig(**{**base, **sft_args, **sft_overrides})``.
* ``attn_implementation`` — used when ``model.attn_implementation`` is null.
* ``model_kwargs`` — other ``from_pretrained`` keywords.

Why these choices (measured on an H100, ``benchmarks/RESULTS.md``): TRL's defaults pad every micro-batch to its
longest row and recompute every layer (gradient checkpointing), so most of the GPU's work is thrown away on
short-row data. Padding-free batches (rows concatenated, sequences kept apart by ``position_ids``) remove the
padding without changing which rows form an optimizer step; transformers 5.23 keeps the sequences isolated on
SDPA with a block-diagonal mask and on FlashAttention's varlen kernel. Checkpointing is only turned on when the
memory estimate says the run does not fit without it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from core.config import RunConfig
from core.training.devices import DeviceInfo

GiB = 2**30


@dataclass
class TunedSettings:
    sft_args: dict[str, Any] = field(default_factory=dict)  # extra SFTConfig keyword arguments
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra from_pretrained keyword arguments
    reasons: list[str] = field(default_factory=list)  # one line per choice, for train.log and the events
    sft_overrides: dict[str, Any] = field(default_factory=dict)  # SFTConfig values replacing the session's own
    attn_implementation: str | None = None  # when model.attn_implementation is null
    memory: Any = None  # the MemoryEstimate of the chosen settings, when the architecture could be read

    def sft_kwargs(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` (the session's SFTConfig keywords) with the automatic choices applied."""
        merged = {**base, **self.sft_args, **self.sft_overrides}
        return merged


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _supports_liger(model_type: str | None, hidden: int = 0) -> bool:
    # Measured on an H100 (benchmarks/RESULTS.md): on Qwen2.5-0.5B (hidden 896) Liger's per-call dispatch made a
    # launch-bound step slower (4.1k vs 5.8k tokens/s), so it is only chosen for models with hidden >= 2048.
    return hidden >= 2048 and model_type in {"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3", "phi3", "mixtral",
                          "granite", "olmo2", "glm4"}


def tuned_settings(
    config: RunConfig,
    device: DeviceInfo,
    *,
    model_config: Any = None,
    lengths: list[int] | None = None,
    flash_attn: bool | None = None,
    liger: bool | None = None,
) -> TunedSettings:
    """The studio's automatic choices for this run on this device.

    ``model_config`` (a transformers config or dict) defaults to the one read from ``model.name_or_path``;
    ``lengths`` (tokens per training row) sharpens the memory estimate; ``flash_attn`` / ``liger`` default to
    whether those packages are installed."""
    tuned = TunedSettings()
    tc, mc = config.training, config.model
    cuda = device.kind == "cuda"
    flash_attn = flash_attn_available() if flash_attn is None else flash_attn
    liger = liger_available() if liger is None else liger

    from core.training.devices import choose_precision

    try:
        precision = choose_precision(device, tc.precision)
    except Exception:  # noqa: BLE001 - the session reports a bad precision itself
        precision = "fp32"

    # --- device rules ----------------------------------------------------------------------------------------
    if device.kind == "mps":
        tuned.sft_args["dataloader_pin_memory"] = False
        tuned.reasons.append(
            f"MPS: {precision} compute (bf16 needs macOS 14 + torch 2.6 and fp16 needs loss scaling), no 4-bit, "
            "no pinned memory; the whole model lives in unified memory"
        )
        if mc.load_in_4bit:
            tuned.reasons.append("MPS: model.load_in_4bit is not supported here (bitsandbytes 4-bit training is "
                                 "CUDA-only in the studio); train 16/32-bit LoRA with a smaller model")

    # --- attention kernel ------------------------------------------------------------------------------------
    attn = mc.attn_implementation
    if attn is None:
        if cuda and flash_attn and precision in ("bf16", "fp16"):
            attn = "flash_attention_2"
            why = "flash-attn is installed: variable-length kernel, no padding, no mask"
        else:
            attn = "sdpa"
            if cuda:
                why = ("flash-attn not installed: PyTorch SDPA with a block-diagonal mask over padding-free rows "
                       "(no padded tokens computed)")
            else:
                why = f"PyTorch SDPA on {device.kind}"
        tuned.attn_implementation = attn
        tuned.reasons.append(f"attention {attn}: {why}")

    # --- padding-free batches ------------------------------------------------------------------------------
    # TRL 1.16: padding_free=True flattens each micro-batch into one row with per-sequence position_ids; without
    # packing it refuses a max_length (the studio's rows are already truncated to data.max_length by core.masks).
    padding_free = False
    if tc.packing:
        tuned.reasons.append("packing on (run file): TRL packs rows best-fit into max_length and goes padding-free")
    elif cuda and attn in ("flash_attention_2", "sdpa") and tc.per_device_train_batch_size > 1:
        padding_free = True
        tuned.sft_overrides.update(padding_free=True, max_length=None)
        tuned.reasons.append(
            "padding-free batches: rows are concatenated with per-sequence position ids, so no padded token is "
            "computed and each optimizer step still sees the same rows (rows are already cut at data.max_length)"
        )

    # --- Liger kernels -----------------------------------------------------------------------------------
    model_type, hidden = None, 0
    try:
        from core.training.memory import load_model_config, model_shape

        model_config = load_model_config(model_config if model_config is not None else mc.name_or_path)
        shape = model_shape(model_config)
        model_type, hidden = shape.model_type, shape.hidden
    except Exception:  # noqa: BLE001 - unknown architecture: choices that need it stay conservative
        model_config = None
    use_liger = cuda and liger and _supports_liger(model_type, hidden)
    if use_liger:
        tuned.sft_args["use_liger_kernel"] = True
        tuned.reasons.append("Liger kernels on (installed, CUDA, supported architecture, hidden >= 2048): fused "
                             "RMSNorm, SwiGLU and RoPE save activation memory and time")

    # --- memory: gradient checkpointing and the micro-batch split -----------------------------------------------
    batch, accum = tc.per_device_train_batch_size, tc.gradient_accumulation_steps
    estimate = None
    if model_config is not None:
        from core.training.memory import estimate_memory, worst_case_tokens

        def est(checkpointing: bool, micro: int) -> Any:
            tokens = worst_case_tokens(lengths, micro, padding_free) if lengths else micro * config.data.max_length
            return estimate_memory(
                config, device.total_memory, model_config=model_config, gradient_checkpointing=checkpointing,
                micro_batch=micro, tokens=tokens, padding_free=padding_free, liger=use_liger, precision=precision,
                device_kind=device.kind, attn=attn, suggest=False,
            )
    else:
        est = None

    checkpointing = tc.gradient_checkpointing
    if checkpointing is None:
        if mc.load_in_4bit:
            checkpointing = True
            why = "model.load_in_4bit asks for the smallest memory footprint (QLoRA), so activations are recomputed"
        elif est is not None and device.total_memory:
            estimate = est(False, batch)
            if estimate.verdict == "fits":
                checkpointing = False
                why = f"the run fits without it ({estimate.summary()}), so no layer is computed twice"
            else:
                checkpointing = True
                estimate = est(True, batch)
                why = f"without it the estimate does not fit ({est(False, batch).summary()})"
        elif cuda:
            checkpointing = True
            why = "the model's size or the device memory is unknown, so memory comes first"
        else:
            checkpointing = False
            why = f"{device.kind} run: speed first (device memory unknown)"
        tuned.sft_args["gradient_checkpointing"] = checkpointing
        tuned.reasons.append(f"gradient checkpointing {'on' if checkpointing else 'off'}: {why}")

    if est is not None and device.total_memory:
        estimate = estimate or est(bool(checkpointing), batch)
        micro = batch
        while estimate.verdict != "fits" and micro > 1:
            micro //= 2
            estimate = est(bool(checkpointing), micro)
        if micro != batch:
            new_accum = accum * batch // micro
            tuned.sft_overrides.update(per_device_train_batch_size=micro, gradient_accumulation_steps=new_accum)
            tuned.reasons.append(
                f"micro-batch {micro} × {new_accum} accumulation steps instead of {batch} × {accum}: same effective "
                f"batch of {batch * accum} rows ({estimate.summary()})"
            )
        if estimate.verdict != "fits":
            tuned.reasons.append(f"memory warning: {estimate.summary()}; even micro-batch 1 may not fit")
    tuned.memory = estimate
    if estimate is not None:
        tuned.reasons.append(f"memory: {estimate.summary()}")
    return tuned
