"""How much accelerator memory a LoRA / QLoRA / full fine-tuning run needs: the fit check.

No library estimates LoRA training memory (TRL-NOTES, "Memory estimation"), so this module adds it up:

* **weights** — exact parameter counts from the model's ``config.json``: the model is built on
  ``torch.device("meta")`` (no memory, no download) and wrapped with ``get_peft_model``, so tied
  embeddings and the adapter are counted as the real run counts them. 16/32-bit weights take 2/4 bytes;
  4-bit NF4 linears take 0.5 byte plus their quantisation constants (one absmax per 64 weights: fp32,
  or 8-bit + a second-level fp32 per 256 blocks with double quantisation); embeddings, norms and the
  output layer stay 16-bit.
* **adapter, gradients, optimizer** — PEFT keeps LoRA weights in fp32 on a 16-bit base (TRL casts
  them to bf16 on a 4-bit base); AdamW keeps two moments in the parameter's dtype.
* **activations** — what autograd keeps per decoder layer and token for the modules of a Llama-style
  block (RMSNorm, q/k/v/o, SDPA, SwiGLU MLP, LoRA inputs and dropout copies), times the layers and the
  tokens of the largest micro-batch. With gradient checkpointing only each layer's input is kept, plus
  one layer recomputed during the backward pass.
* **loss** — TRL 1.16 computes the loss with a fused, chunked LM head (``trl.kernels.chunked_logprob``:
  tiles of 4096 tokens × 32768 vocabulary entries, fp32 gradient of the hidden states), never the full
  ``(tokens, vocab)`` logits.
* **overhead** — the CUDA context (outside PyTorch's allocator) and the caching allocator's slack.

The per-token constants were calibrated against measured peaks on an H100 (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GiB = 2**30
MiB = 2**20

# TRL 1.16 fused LM head tiles (trl/kernels/chunked_logprob.py: TOKEN_CHUNK_SIZE, trainer/utils.py chunk size)
_LOSS_TOKEN_TILE = 4096
_LOSS_VOCAB_TILE = 32768
_CUDA_CONTEXT = 600 * MiB  # driver + cuBLAS/cuDNN workspaces; not in torch.cuda.memory_allocated()
_ALLOCATOR_SLACK = 0.06  # reserved-but-unused fraction of the caching allocator at the peak
_OFFLOAD_STASH = 2  # layers' saved tensors still on the device under activation offloading (copies in flight)

FITS, TIGHT, WONT_FIT, UNKNOWN = "fits", "tight", "won't fit", "unknown"
_FIT_FRACTION = 0.90  # above this fraction of the device the run is "tight"

_ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_MODULES = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about an architecture (from its config)."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every base-model parameter, tied weights once
    linear: int  # parameters of nn.Linear layers that 4-bit loading quantises (all but the output layer)
    trainable: int  # LoRA parameters (or every parameter for a full fine-tune)


@dataclass
class MemoryEstimate:
    """Bytes per part; ``total`` is what the device must hold (context and allocator slack included)."""

    weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int
    loss: int
    transient: int  # backward-pass temporaries at the peak (gradients of one layer, 4-bit dequantised weights)
    overhead: int
    tokens: int  # tokens in the largest micro-batch the estimate assumes
    params: ParamCounts
    device_total: int | None = None
    verdict: str = UNKNOWN
    suggestions: list[str] = field(default_factory=list)
    assumptions: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_allocated(self) -> int:
        """What ``torch.cuda.max_memory_allocated()`` should read."""
        return (self.weights + self.adapter + self.gradients + self.optimizer + self.activations + self.loss
                + self.transient)

    @property
    def total(self) -> int:
        return self.peak_allocated + self.overhead

    def breakdown(self) -> dict[str, int]:
        return {
            "weights": self.weights, "adapter": self.adapter, "gradients": self.gradients,
            "optimizer": self.optimizer, "activations": self.activations, "loss": self.loss,
            "transient": self.transient, "overhead": self.overhead, "total": self.total,
        }

    def lines(self) -> list[str]:
        """A human-readable breakdown for the run log and the CLI."""
        out = [f"{k:<12}{v / GiB:8.2f} GiB" for k, v in self.breakdown().items()]
        if self.device_total:
            out.append(f"device      {self.device_total / GiB:8.2f} GiB -> {self.verdict}")
        out += [f"suggestion: {s}" for s in self.suggestions]
        return out

    def summary(self) -> str:
        where = f" of {self.device_total / GiB:.1f} GiB" if self.device_total else ""
        return f"estimated peak {self.total / GiB:.1f} GiB{where} ({self.verdict})"


class MemoryEstimateError(Exception):
    """The model's architecture could not be read (no config.json reachable)."""


# ----------------------------------------------------------------------------------------------- model config


def load_model_config(spec: str | dict | Any) -> Any:
    """A transformers ``PretrainedConfig`` from a dict, a model folder, a .gguf file, a Hub id in the local cache,
    or ``bundled:…``; raises :class:`MemoryEstimateError` when none is readable offline."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(spec, PretrainedConfig):
        return spec
    if isinstance(spec, dict):
        data = dict(spec)
        model_type = data.pop("model_type")
        return AutoConfig.for_model(model_type, **data)
    from core.training.models import ModelError, resolve_model_source

    try:
        source = resolve_model_source(str(spec))
    except ModelError as exc:
        raise MemoryEstimateError(str(exc)) from None
    try:
        if source.gguf_file:
            return load_model_config(gguf_facts(Path(source.path) / source.gguf_file)["config"])
        folder = Path(source.path)
        if (folder / "config.json").is_file():
            return load_model_config(json.loads((folder / "config.json").read_text()))
        return AutoConfig.from_pretrained(source.path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any loader failure means "architecture unknown"
        raise MemoryEstimateError(f"cannot read the architecture of '{spec}': {str(exc).splitlines()[0][:200]}") from None


def gguf_facts(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"config": <config dict>, "chat_template": bool}`` of a GGUF file. transformers parses the whole header
    (a 49k-token vocabulary is ~300k strings: 10-20 s on a busy laptop) to build the config, so the result is
    kept in memory and on disk, keyed by the file's path, size and modification time: the fit check, the model
    facts and the model library then answer at once from the second time on."""
    file = Path(path).resolve()
    stat = file.stat()
    return _gguf_facts_cached(str(file), stat.st_size, stat.st_mtime_ns)


def _facts_cache_dir() -> Path:
    root = os.environ.get("SFT_STUDIO_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "sft-studio" / "gguf-facts"


@functools.lru_cache(maxsize=16)
def _gguf_facts_cached(file: str, size: int, mtime_ns: int) -> dict[str, Any]:
    import hashlib

    key = hashlib.sha256(f"{file}|{size}|{mtime_ns}|v1".encode()).hexdigest()[:32]
    cached = _facts_cache_dir() / f"{key}.json"
    try:
        data = json.loads(cached.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            return data
    except (OSError, ValueError):
        pass
    from transformers import AutoConfig

    from core.gguf_header import read_gguf_header

    folder, name = str(Path(file).parent), Path(file).name
    config = AutoConfig.from_pretrained(folder, gguf_file=name, trust_remote_code=False).to_dict()
    has_template = read_gguf_header(file).get("tokenizer.chat_template") is not None
    # as the cache will hold it: the first answer and every later one are the same
    data = json.loads(json.dumps({"config": config, "chat_template": has_template, "file": file}, default=str))
    try:  # a cache that cannot be written only costs time
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, default=str), encoding="utf-8")
        os.replace(tmp, cached)
    except OSError:
        pass
    return data


def model_shape(model_config: Any) -> ModelShape:
    c = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return ModelShape(
        model_type=c.model_type, hidden=c.hidden_size, intermediate=c.intermediate_size, layers=c.num_hidden_layers,
        heads=heads, kv_heads=getattr(c, "num_key_value_heads", None) or heads, head_dim=head_dim,
        vocab=c.vocab_size, tied=bool(getattr(c, "tie_word_embeddings", False)),
    )


def _lora_key(lora: Any) -> tuple:
    targets = lora.target_modules if isinstance(lora.target_modules, str) else tuple(lora.target_modules)
    return (lora.enabled, lora.r, targets, lora.use_dora)


@functools.lru_cache(maxsize=32)
def _count_cached(config_json: str, lora_key: tuple) -> ParamCounts:
    import torch
    from transformers import AutoModelForCausalLM

    model_config = load_model_config(json.loads(config_json))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())
    output = model.get_output_embeddings()
    linear = sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not output
    )
    enabled, r, targets, use_dora = lora_key
    if not enabled:
        return ParamCounts(total, linear, total)
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=list(targets) if isinstance(
        targets, tuple) else targets, use_dora=use_dora, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return ParamCounts(total, linear, trainable)


def count_parameters(model_config: Any, lora: Any) -> ParamCounts:
    """Exact parameter counts of the base model and its adapter, built on the meta device (instant, no memory)."""
    config = load_model_config(model_config)
    config_json, key = config.to_json_string(use_diff=False), _lora_key(lora)
    # kept on disk too: building the model on the meta device takes 1-2 s for an 8B model, and the model library
    # estimates dozens of models for every change of the run
    stored = _counts_file(config_json, key)
    try:
        return ParamCounts(**json.loads(stored.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        pass
    counts = _count_cached(config_json, key)
    try:
        stored.parent.mkdir(parents=True, exist_ok=True)
        tmp = stored.with_name(f".{stored.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(counts.__dict__), encoding="utf-8")
        os.replace(tmp, stored)
    except OSError:
        pass
    return counts


def _counts_file(config_json: str, lora_key: tuple) -> Path:
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        versions = f"{version('transformers')}|{version('peft')}"
    except PackageNotFoundError:
        versions = ""
    digest = hashlib.sha256(f"{config_json}|{lora_key!r}|{versions}|v1".encode()).hexdigest()[:32]
    return _facts_cache_dir().parent / "param-counts" / f"{digest}.json"


# ------------------------------------------------------------------------------------------------ the estimate


def _adapted(lora: Any) -> set[str]:
    if not lora.enabled:
        return set(_ATTN_MODULES + _MLP_MODULES)
    if isinstance(lora.target_modules, str):
        if lora.target_modules == "all-linear":
            return set(_ATTN_MODULES + _MLP_MODULES)
        return {m for m in _ATTN_MODULES + _MLP_MODULES if m in lora.target_modules}
    return {m for m in _ATTN_MODULES + _MLP_MODULES if any(t == m or t.endswith(m) for t in lora.target_modules)}


def layer_activation_bytes(shape: ModelShape, lora: Any, *, dtype_bytes: int, masked: bool, liger: bool,
                           seq_len: int, attn: str = "sdpa") -> float:
    """Bytes autograd keeps per token for one decoder layer (no checkpointing)."""
    s, h, q, kv, i = dtype_bytes, shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    adapted = _adapted(lora)
    dropout = lora.enabled and lora.lora_dropout > 0
    total = 0.0
    # two RMSNorms: the eager one keeps an fp32 copy of its input; Liger's keeps the 16-bit input
    norm = (s * h if liger else 4 * h) + 4
    total += 2 * norm
    # inputs kept for the adapters (shared by the modules reading the same tensor unless dropout copies them)
    def kept(modules: tuple[str, ...], width: int) -> float:
        hit = [m for m in modules if m in adapted]
        if not hit:
            return 0.0
        if dropout:
            return len(hit) * (s + 1) * width  # a dropped-out copy and its mask per module
        return s * width

    total += kept(("q_proj", "k_proj", "v_proj"), h)
    total += kept(("o_proj",), q)
    total += kept(("gate_proj", "up_proj"), h)
    total += kept(("down_proj",), i)
    if lora.enabled:
        total += s * lora.r * len(adapted)  # LoRA A outputs, kept for B
    # attention: q, k, v (expanded to all heads when a mask stops SDPA's native GQA), output, logsumexp
    kv_kept = q if (masked or attn == "eager") else kv
    total += s * (2 * q + 2 * kv_kept) + 4 * shape.heads
    if attn == "eager":
        total += (s + 1) * shape.heads * seq_len  # softmax probabilities and the dropout mask, per query
    # SwiGLU MLP: gate (SiLU input), SiLU output, up (both kept by the product); Liger recomputes the SiLU
    total += s * (2 if liger else 3) * i
    return total


def estimate_memory(
    config: Any,
    device_total_bytes: int | None = None,
    *,
    model_config: Any = None,
    gradient_checkpointing: bool | None = None,
    micro_batch: int | None = None,
    tokens: int | None = None,
    padding_free: bool = False,
    liger: bool = False,
    precision: str | None = None,
    device_kind: str = "cuda",
    trained_fraction: float = 1.0,
    trained_tokens: int | None = None,
    attn: str | None = None,
    compiled: bool = False,
    recompute_budget: float | None = None,
    offload: bool = False,
    suggest: bool = True,
) -> MemoryEstimate:
    """Estimate peak memory of training ``config`` (a :class:`~core.config.RunConfig`).

    ``tokens`` is the number of tokens in the largest micro-batch (padding included); by default the worst case
    ``micro_batch × data.max_length``. ``gradient_checkpointing`` / ``precision`` default to the run file's values
    (auto → off / bf16). ``device_total_bytes`` turns on the verdict and the suggestions. With
    ``gradient_checkpointing`` and ``compiled``, ``recompute_budget`` is the compiled layers' activation memory budget
    (core.training.performance): they keep what checkpointing keeps plus that share of the rest. ``offload`` is
    TRL's activation offloading: what the layers keep for the backward pass waits in pinned host memory instead
    (the estimate keeps a few layers' worth on the device for the copies in flight)."""
    tc, lora = config.training, config.lora
    model_config = load_model_config(model_config if model_config is not None else config.model.name_or_path)
    shape = model_shape(model_config)
    params = count_parameters(model_config, lora)
    checkpointing = bool(tc.gradient_checkpointing) if gradient_checkpointing is None else gradient_checkpointing
    batch = micro_batch or tc.per_device_train_batch_size
    max_len = config.data.max_length
    n = tokens if tokens is not None else batch * max_len
    seq_len = n if padding_free else min(max_len, max(1, n // batch))
    precision = precision or (tc.precision if tc.precision != "auto" else ("bf16" if device_kind == "cuda" else "fp32"))
    s = 2 if precision in ("bf16", "fp16") else 4
    weight_bytes = 2 if precision == "bf16" else 4  # the session loads fp16 runs in fp32 (autocast computes in fp16)
    quantized = bool(config.model.load_in_4bit)
    attn = attn or config.model.attn_implementation or "sdpa"
    if attn in ("flash_attention_2", "sdpa_varlen"):  # variable-length kernels: no mask, native GQA
        masked = False
    else:
        masked = padding_free or batch > 1

    # weights
    if quantized:
        per_weight = 0.5 + 1 / 64 + 4 / (64 * 256)  # NF4 + 8-bit absmax per 64 + fp32 per 256 absmax (double quant)
        weights = params.linear * per_weight + (params.total - params.linear) * 2
    else:
        weights = params.total * weight_bytes
    # trainable state
    if lora.enabled:
        adapter_bytes = 2 if quantized and s == 2 else 4
        adapter = params.trainable * adapter_bytes
        gradients = params.trainable * adapter_bytes
        optimizer = params.trainable * adapter_bytes * 2
    else:
        adapter = 0
        gradients = params.trainable * weight_bytes
        optimizer = params.trainable * weight_bytes * 2

    # activations
    # compiled decoder layers keep what Liger's fused kernels keep: inductor's partitioner recomputes the norms and
    # the SiLU in the backward instead of saving them (measured on an H100: within 5-11 % of this, RESULTS.md)
    per_layer = layer_activation_bytes(shape, lora, dtype_bytes=s, masked=masked, liger=liger or compiled, seq_len=seq_len,
                                       attn=attn)
    if checkpointing:
        kept = shape.layers * s * shape.hidden * n + per_layer * n  # layer inputs + one layer recomputed
        if compiled and recompute_budget is not None:  # the partitioner keeps this share of the rest
            kept += recompute_budget * max(0, (shape.layers - 1) * per_layer * n - shape.layers * s * shape.hidden * n)
    else:
        kept = shape.layers * per_layer * n
    offloaded = 0
    if offload:
        # TRL's OffloadActivations: every saved tensor goes to the host as the forward pass makes it, with up to
        # _OFFLOAD_STASH layers' tensors still on the device while their copies run; the backward pass brings one
        # layer's back at a time (prefetching the next)
        layer_saved = (s * shape.hidden * n) if checkpointing else per_layer * n
        on_device = min(shape.layers, _OFFLOAD_STASH) * layer_saved
        offloaded = max(0, shape.layers * layer_saved - on_device)
        kept -= offloaded
    mask = 0
    if masked and attn == "sdpa":
        mask = (n * n if padding_free else batch * seq_len * seq_len) * (1 + s)
    embed_out = (4 * shape.hidden + s * shape.hidden) * n  # final norm
    activations = int(kept + mask + embed_out)

    # loss: fused, chunked LM head over the trained positions
    valid = max(1, trained_tokens if trained_tokens is not None else int(n * trained_fraction))
    loss = int(valid * shape.hidden * (s + 4) + min(valid, _LOSS_TOKEN_TILE) * _LOSS_VOCAB_TILE * s * 2 + valid * 48)

    # backward temporaries: gradients of the widest tensors of one layer, and a 4-bit weight dequantised
    transient = s * n * (3 * shape.intermediate + 2 * shape.hidden) + 4 * n * shape.hidden
    if quantized:
        transient += 2 * s * shape.hidden * shape.intermediate
    if checkpointing and compiled and recompute_budget is not None:
        # the compiled backward holds about 16 bytes per token and hidden unit more than the eager one (gradients of
        # the residual stream in fp32 beside the recomputed layer); calibrated on an H200, 8B LoRA, one row of
        # 32k-128k tokens, where the estimate without this term fell 5-9 % short (benchmarks/RESULTS.md)
        transient += 16 * shape.hidden * n
    transient = int(transient)
    if checkpointing and not (compiled and recompute_budget is not None):
        # transformers' checkpointing frees the loss buffers before the layers' backward, where one recomputed layer
        # and its gradients peak: only what the loss needs beyond that phase adds to the peak (measured on an H100:
        # summing both overshot small checkpointed models by 25-37 %, benchmarks/RESULTS.md). The compiled
        # recomputation measured closer to the sum and keeps it.
        loss = max(0, loss - int(per_layer * n + transient))

    allocated = weights + adapter + gradients + optimizer + activations + loss + transient
    overhead = int(allocated * _ALLOCATOR_SLACK + (_CUDA_CONTEXT if device_kind == "cuda" else 0))
    est = MemoryEstimate(
        weights=int(weights), adapter=int(adapter), gradients=int(gradients), optimizer=int(optimizer),
        activations=activations, loss=loss, transient=transient, overhead=overhead, tokens=n, params=params,
        device_total=device_total_bytes,
        assumptions={
            "gradient_checkpointing": checkpointing, "micro_batch": batch, "tokens": n, "precision": precision,
            "load_in_4bit": quantized, "padding_free": padding_free, "liger": liger, "attn": attn, "compiled": compiled,
            "recompute_budget": recompute_budget if checkpointing and compiled else None,
            "activation_bytes_per_token_per_layer": int(per_layer),
            "activation_offloading": offload, "offloaded_to_host_bytes": int(offloaded),
        },
    )
    if device_total_bytes:
        est.verdict = verdict(est.total, device_total_bytes)
        if suggest and est.verdict != FITS:
            est.suggestions = _suggestions(
                config, device_total_bytes, model_config=model_config, checkpointing=checkpointing, batch=batch,
                tokens=n, padding_free=padding_free, liger=liger, precision=precision, device_kind=device_kind,
                trained_fraction=trained_fraction, attn=attn, compiled=compiled, recompute_budget=recompute_budget,
                offload=offload,
            )
    return est


def verdict(total: int, device_total: int) -> str:
    if total <= _FIT_FRACTION * device_total:
        return FITS
    if total <= device_total:
        return TIGHT
    return WONT_FIT


def _suggestions(config: Any, device_total: int, *, checkpointing: bool, batch: int, tokens: int,
                 **kw: Any) -> list[str]:
    """Up to two single changes, cheapest for speed first, that bring the estimate under the device's memory."""
    import copy

    tries: list[tuple[str, dict, Any]] = []
    if not checkpointing:
        tries.append(("turn on training.gradient_checkpointing", {"gradient_checkpointing": True}, None))
    if batch > 1:
        half = batch // 2
        tries.append((
            f"lower training.per_device_train_batch_size to {half} and double gradient_accumulation_steps "
            f"(same effective batch)",
            {"gradient_checkpointing": checkpointing, "micro_batch": half, "tokens": max(1, tokens * half // batch)},
            None,
        ))
    if not config.model.load_in_4bit and kw.get("device_kind") == "cuda" and config.lora.enabled:
        cfg4 = copy.deepcopy(config)
        cfg4.model.load_in_4bit = True
        tries.append(("set model.load_in_4bit: true (QLoRA)", {"gradient_checkpointing": True}, cfg4))
    if config.data.max_length > 256:
        short = copy.deepcopy(config)
        short.data.max_length = config.data.max_length // 2
        tries.append((f"lower data.max_length to {short.data.max_length}",
                      {"gradient_checkpointing": checkpointing, "tokens": max(1, tokens // 2)}, short))
    out = []
    for text, change, cfg in tries:
        args = {"micro_batch": batch, "tokens": tokens, **kw, **change}
        est = estimate_memory(cfg or config, device_total, suggest=False, **args)
        if est.verdict == FITS:
            out.append(f"{text}: {est.total / GiB:.1f} GiB")
        if len(out) == 2:
            break
    return out


def worst_case_tokens(lengths: list[int], micro_batch: int, padding_free: bool, *, epochs: int = 3,
                      seed: int = 0) -> int:
    """Tokens in the largest micro-batch a shuffled run meets: the largest over ``epochs`` random shuffles of the
    rows into micro-batches (padding to each batch's longest row unless padding-free). The absolute worst case (the
    ``micro_batch`` longest rows together) almost never happens with a long-tailed length mix and would turn on
    gradient checkpointing needlessly."""
    import random

    if not lengths:
        return 0
    rng = random.Random(seed)
    order = list(lengths)
    worst = 0
    for _ in range(max(1, epochs)):
        rng.shuffle(order)
        for start in range(0, len(order), micro_batch):
            chunk = order[start:start + micro_batch]
            worst = max(worst, sum(chunk) if padding_free else max(chunk) * len(chunk))
    return worst
