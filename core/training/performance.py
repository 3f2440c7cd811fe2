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

import contextlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any

from core.config import RunConfig
from core.training.devices import DeviceInfo

GiB = 2**30
# torch._functorch activation memory budget of compiled layers that must recompute (1 = keep every activation the
# default partition keeps, 0 = keep only what cannot be recomputed, as checkpointing does). Measured on an H100,
# QLoRA 8B (benchmarks/RESULTS.md): 0 → 6.1k tokens/s at 7.10 GiB, 0.05 → 6.3k at 8.02 GiB, transformers'
# checkpointing 3.1k at 6.66 GiB. QLoRA asks for the smallest footprint, so 0.
RECOMPUTE_BUDGET = 0.0


@dataclass
class TunedSettings:
    sft_args: dict[str, Any] = field(default_factory=dict)  # extra SFTConfig keyword arguments
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra from_pretrained keyword arguments
    reasons: list[str] = field(default_factory=list)  # one line per choice, for train.log and the events
    sft_overrides: dict[str, Any] = field(default_factory=dict)  # SFTConfig values replacing the session's own
    attn_implementation: str | None = None  # when model.attn_implementation is null
    memory: Any = None  # the MemoryEstimate of the chosen settings, when the architecture could be read
    compile_layers: bool = False  # torch.compile each decoder layer once the trainer has built the PEFT model
    skip_lora_input_casts: bool = False  # LoRA layers read the 16-bit input as is (autocast casts the weights)
    lora_casts: Any = None  # the LoraInputCasts switch once prepare_model has found the layers
    estimate_kwargs: dict[str, Any] = field(default_factory=dict)  # estimate_memory arguments of ``memory``
    recompute_budget: float | None = None  # compiled layers recompute activations under this memory budget

    def training_step_context(self) -> Any:
        """What a training step (forward and backward, under autocast) runs inside: the LoRA input casts off."""
        return self.lora_casts if self.lora_casts is not None else contextlib.nullcontext()

    def sft_kwargs(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` (the session's SFTConfig keywords) with the automatic choices applied."""
        return {**base, **self.sft_args, **self.sft_overrides}

    def before_load(self, attn_implementation: str | None) -> None:
        """What must happen before ``from_pretrained`` with this attention implementation (the run file's or the
        automatic one): transformers must know the studio's own."""
        from core.training import attention

        if attn_implementation == attention.NAME:
            attention.register()

    def prepare_model(self, model: Any) -> list[str]:
        """Apply the choices that act on the built (PEFT-wrapped) model; returns one log line per change."""
        done = []
        if self.skip_lora_input_casts:
            self.lora_casts = LoraInputCasts(model)
            if self.lora_casts.layers:
                done.append(f"{len(self.lora_casts.layers)} LoRA layers take their bf16 input as is during training "
                            "steps (no fp32 copy of each activation)")
        if self.compile_layers:
            n = compile_decoder_layers(model, recompute_budget=self.recompute_budget)
            if n:
                done.append(f"{n} decoder layers compiled with torch.compile (one graph, dynamic sequence length"
                            + (f", activations recomputed under memory budget {self.recompute_budget})"
                               if self.recompute_budget is not None else ")"))
        return done


def host_memory_bytes() -> int | None:
    """The machine's physical memory (what pinned host buffers draw on), or None where the OS does not say."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def inductor_available() -> bool:
    """torch.compile's GPU backend needs Triton."""
    return importlib.util.find_spec("triton") is not None


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
    varlen: bool | None = None,
    compile_ok: bool | None = None,
) -> TunedSettings:
    """The studio's automatic choices for this run on this device.

    ``model_config`` (a transformers config or dict) defaults to the one read from ``model.name_or_path``;
    ``lengths`` (tokens per training row) sharpens the memory estimate; ``flash_attn`` / ``liger`` default to
    whether those packages are installed, ``varlen`` to whether PyTorch's FlashAttention kernel runs on this GPU."""
    tuned = TunedSettings()
    tc, mc = config.training, config.model
    cuda = device.kind == "cuda"
    flash_attn = flash_attn_available() if flash_attn is None else flash_attn
    liger = liger_available() if liger is None else liger
    compile_ok = inductor_available() if compile_ok is None else compile_ok

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

    if cuda:
        # pinned batches copied without a host wait (accelerate's DataLoader), like the metrics the trainer keeps on
        # the GPU until it logs (core.training.syncfree): no per-step synchronisation
        tuned.sft_args["accelerator_config"] = {"non_blocking": True}
        tuned.sft_args["dataloader_pin_memory"] = True
        tuned.reasons.append("no per-step host waits: batches go to the GPU asynchronously from pinned memory"
                             + (" and TRL's entropy/accuracy metrics are read only when logged"
                                if config.distributed.num_processes == 1 else ""))

    # --- the architecture (choices that need it stay conservative when it cannot be read) ----------------------
    model_type, hidden = None, 0
    try:
        from core.training.memory import load_model_config, model_shape

        model_config = load_model_config(model_config if model_config is not None else mc.name_or_path)
        shape = model_shape(model_config)
        model_type, hidden = shape.model_type, shape.hidden
    except Exception:  # noqa: BLE001
        model_config = None

    # --- attention kernel ------------------------------------------------------------------------------------
    from core.training import attention as varlen_attention

    if varlen is None:
        varlen = varlen_attention.kernel_available(device.kind)
    attn = mc.attn_implementation
    if attn is None:
        half = precision in ("bf16", "fp16")
        single_rows = tc.per_device_train_batch_size == 1 and not tc.packing
        if cuda and flash_attn and half:
            attn = "flash_attention_2"
            why = "flash-attn is installed: variable-length kernel, no padding, no mask"
        elif cuda and half and single_rows:
            attn = "sdpa"
            why = ("one row per micro-batch, so nothing is padded and no mask is built: SDPA's causal kernel, which "
                   "picks PyTorch's fastest backend for this GPU (measured on an H200 with 64k-128k-token rows: 1.5× "
                   "the variable-length FlashAttention-2 kernel)")
        elif cuda and varlen and half and model_config is not None and varlen_attention.supports_model(model_config):
            attn = varlen_attention.NAME
            why = ("PyTorch's built-in FlashAttention-2 kernel over variable-length rows (flash-attn is not "
                   "installed): no mask is built and no padded or cross-row block is computed")
        else:
            attn = "sdpa"
            if cuda:
                why = ("PyTorch SDPA with a block-diagonal mask over padding-free rows (no padded tokens computed; "
                       "flash-attn not installed and the built-in varlen kernel "
                       f"{'does not fit this model' if varlen else 'not available on this GPU/build'})")
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
    elif cuda and attn in ("flash_attention_2", "sdpa", varlen_attention.NAME) and tc.per_device_train_batch_size > 1:
        padding_free = True
        tuned.sft_overrides.update(padding_free=True, max_length=None)
        tuned.reasons.append(
            "padding-free batches: rows are concatenated with per-sequence position ids, so no padded token is "
            "computed and each optimizer step still sees the same rows (rows are already cut at data.max_length)"
        )

    # --- Liger kernels -----------------------------------------------------------------------------------
    use_liger = cuda and liger and _supports_liger(model_type, hidden)
    # regional compilation is planned on CUDA whenever the architecture is known and the run file does not ask for
    # transformers' gradient checkpointing (which must run eagerly); when memory needs recomputation the compiled
    # layers do it themselves (below)
    # (not under fsdp/deepspeed: they wrap and re-shard the layers, and that pairing has not been measured here)
    dist = config.distributed
    sharded = dist.num_processes > 1 and dist.strategy != "ddp"
    compile_planned = tc.torch_compile is True or (
        tc.torch_compile is None and cuda and compile_ok and model_config is not None
        and tc.gradient_checkpointing is not True and not sharded)
    if use_liger and compile_planned:
        use_liger = False
        tuned.reasons.append("Liger kernels off: the compiled decoder layers fuse the same norms, SwiGLU and rotary")
    if use_liger:
        tuned.sft_args["use_liger_kernel"] = True
        tuned.reasons.append("Liger kernels on (installed, CUDA, supported architecture, hidden >= 2048): fused "
                             "RMSNorm, SwiGLU and RoPE save activation memory and time")

    # --- memory: recomputation (checkpointing) and the micro-batch split ------------------------------------------
    # Two ways to recompute activations instead of keeping them: transformers' gradient checkpointing (eager, every
    # layer run twice op by op), or, when the layers are compiled, inductor's partitioner under an activation memory
    # budget (the recomputation is fused into the compiled backward; measured faster at a little more memory).
    batch, accum = tc.per_device_train_batch_size, tc.gradient_accumulation_steps
    estimate = None
    if model_config is not None:
        from core.training.memory import estimate_memory, worst_case_tokens

        def est(recompute: bool, micro: int, offload: bool = False) -> Any:
            tokens = worst_case_tokens(lengths, micro, padding_free) if lengths else micro * config.data.max_length
            kwargs = dict(model_config=model_config, gradient_checkpointing=recompute, micro_batch=micro,
                          tokens=tokens, padding_free=padding_free, liger=use_liger, precision=precision,
                          compiled=compile_planned, device_kind=device.kind, attn=attn,
                          recompute_budget=RECOMPUTE_BUDGET if recompute and compile_planned else None,
                          offload=offload)
            tuned.estimate_kwargs = kwargs  # the last one asked for is the one the choices settle on
            return estimate_memory(config, device.total_memory, suggest=False, **kwargs)
    else:
        est = None

    recompute = tc.gradient_checkpointing
    if recompute is None:
        if mc.load_in_4bit:
            recompute = True
            why = "model.load_in_4bit asks for the smallest memory footprint (QLoRA), so activations are recomputed"
        elif est is not None and device.total_memory:
            without = est(False, batch)
            if without.verdict == "fits":
                recompute, estimate = False, without
                why = f"the run fits without it ({without.summary()}), so no layer is computed twice"
            else:
                recompute = True
                why = f"without it the estimate does not fit ({without.summary()})"
                estimate = est(True, batch)
        elif cuda:
            recompute = True
            why = "the model's size or the device memory is unknown, so memory comes first"
        else:
            recompute = False
            why = f"{device.kind} run: speed first (device memory unknown)"
        compiled_recompute = recompute and compile_planned
        tuned.sft_args["gradient_checkpointing"] = recompute and not compiled_recompute
        if compiled_recompute:
            tuned.recompute_budget = RECOMPUTE_BUDGET
            tuned.reasons.append(
                "activations recomputed inside the compiled decoder layers (each layer keeps only its input, as "
                "with gradient checkpointing, but the recomputation is fused into the compiled backward: measured "
                f"2× faster than transformers' checkpointing on a QLoRA 8B): {why}")
        else:
            tuned.reasons.append(f"gradient checkpointing {'on' if recompute else 'off'}: {why}")

    if est is not None and device.total_memory:
        estimate = estimate or est(bool(recompute), batch)
        micro = batch
        while estimate.verdict != "fits" and micro > 1:
            micro //= 2
            estimate = est(bool(recompute), micro)
        if micro != batch:
            new_accum = accum * batch // micro
            tuned.sft_overrides.update(per_device_train_batch_size=micro, gradient_accumulation_steps=new_accum)
            tuned.reasons.append(
                f"micro-batch {micro} × {new_accum} accumulation steps instead of {batch} × {accum}: same effective "
                f"batch of {batch * accum} rows ({estimate.summary()})"
            )
        if estimate.verdict != "fits" and cuda and recompute and dist.num_processes == 1:
            # long rows: even one row's recomputed activations do not fit, so the layers' saved inputs wait in
            # pinned host memory (TRL's activation offloading, copies overlapped with compute on a second stream)
            settled = tuned.estimate_kwargs
            offloaded = est(True, micro, offload=True)
            tuned.estimate_kwargs = settled  # until offloading is chosen below
            if offloaded.total < estimate.total:
                tuned.estimate_kwargs = {**settled, "offload": True}
                host = offloaded.assumptions.get("offloaded_to_host_bytes", 0)
                tuned.sft_args["activation_offloading"] = True
                ram = host_memory_bytes()
                # TRL's offloading warns above 60 % of the host's memory; pinned pages cannot be swapped
                short = (f"; memory warning: that is more than 60 % of this machine's {ram / 2**30:.0f} GiB of RAM"
                         if ram and host > 0.6 * ram else "")
                tuned.reasons.append(
                    f"activation offloading on: one micro-batch of {offloaded.tokens:,} tokens does not fit with "
                    f"recomputation alone ({estimate.summary()}); each layer's saved input goes to pinned host "
                    f"memory ({host / 2**30:.1f} GiB of host RAM) and comes back for the backward pass{short}")
                estimate = offloaded
        if estimate.verdict != "fits":
            tuned.reasons.append(f"memory warning: {estimate.summary()}; even micro-batch 1 may not fit")
    tuned.memory = estimate
    if estimate is not None:
        tuned.reasons.append(f"memory: {estimate.summary()}")

    # --- LoRA input casts and regional compilation -------------------------------------------------------------
    if config.lora.enabled and precision == "bf16" and cuda:
        # PEFT keeps LoRA weights in fp32 and copies every activation to fp32 before lora_A; under bf16 autocast
        # lora_A casts it straight back, so the copy changes no result and costs two passes over each activation
        tuned.skip_lora_input_casts = True
        tuned.reasons.append("LoRA layers read bf16 activations directly (autocast casts the fp32 adapter weights; "
                             "same result without an fp32 copy of every activation)")
    compile_choice = tc.torch_compile
    if compile_choice is None:
        compile_choice = compile_planned
        why = ("CUDA, known architecture: one compiled graph serves every decoder layer and removes most per-op "
               "launch overhead" if compile_choice else
               "off: " + ("not a CUDA run" if not cuda else "the run file asks for gradient checkpointing"
                          if tc.gradient_checkpointing else "unknown architecture" if model_config is None
                          else f"distributed.strategy {dist.strategy} shards the layers" if sharded
                          else "no working Triton/inductor here"))
        tuned.reasons.append(f"torch.compile of the decoder layers {why}")
    elif compile_choice and tc.gradient_checkpointing:
        tuned.reasons.append("memory warning: training.torch_compile with training.gradient_checkpointing keeps most "
                             "activations (measured on an H100, QLoRA 8B: 13.0 GiB peak instead of 6.9 GiB); leave "
                             "gradient_checkpointing on auto to let the compiled layers recompute instead")
    tuned.compile_layers = bool(compile_choice)
    return tuned


def decoder_layers(model: Any) -> Any:
    """The model's stack of repeated transformer blocks (the longest ``nn.ModuleList`` of one block class), found
    through any PEFT wrapper; ``None`` when the model has none."""
    import torch

    best = None
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best):
                best = module
    return best


class LoraInputCasts:
    """PEFT casts each LoRA layer's input to the adapter's dtype (fp32) before ``lora_A``; under bf16 autocast
    ``lora_A`` casts it straight back, so in a training step the copy changes no result and costs two passes over
    every activation. Used as a context manager around each training step, this turns the cast off and restores it
    after: outside autocast (generation for the probe prompts, a saved adapter used elsewhere) the cast is needed,
    since a bf16 input cannot meet fp32 weights."""

    def __init__(self, model: Any) -> None:
        self.layers = [m for m in model.modules()
                       if hasattr(m, "lora_A") and isinstance(getattr(m, "cast_input_dtype_enabled", None), bool)]
        self._saved: list[bool] = []

    def __enter__(self) -> LoraInputCasts:
        self._saved = [m.cast_input_dtype_enabled for m in self.layers]
        for m in self.layers:
            m.cast_input_dtype_enabled = False
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, value in zip(self.layers, self._saved, strict=False):
            m.cast_input_dtype_enabled = value


def compile_decoder_layers(model: Any, *, dynamic: bool = True, recompute_budget: float | None = None) -> int:
    """Regional compilation: ``torch.compile`` each decoder block in place (one compiled graph serves every block,
    since the blocks share their code and their weights are graph inputs). Removes the per-op Python and launch
    overhead of the blocks, LoRA's included, and fuses their elementwise work (norms, activations, rotary, LoRA
    scale-and-add). ``dynamic`` keeps one graph for every sequence length (padding-free batches change length every
    step). ``recompute_budget`` (0..1) makes the compiled backward recompute activations instead of keeping them, like
    gradient checkpointing but fused: torch._functorch's ``activation_memory_budget``, a process-wide setting read
    when the graphs are compiled (the first training step), so it is set here for this training process. Returns
    the number of blocks compiled."""
    import torch

    layers = decoder_layers(model)
    if layers is None:
        return 0
    # every block shares one code object; leave room for a few guard failures (train/eval, checkpointing) per block
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if recompute_budget is not None:
        import torch._functorch.config

        torch._functorch.config.activation_memory_budget = recompute_budget
    for layer in layers:
        layer.compile(dynamic=dynamic)
    return len(layers)

