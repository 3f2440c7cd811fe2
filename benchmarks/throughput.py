"""Plain TRL defaults vs the studio's automatic path, side by side in one process, on the same synthetic
Alpaca-like data and the same LoRA (r=16, alpha=32, all-linear, no dropout), random weights of real
architectures. Also QLoRA (NF4, double quantisation, bf16 compute) end to end and the memory estimate against
measured peaks.

    python benchmarks/throughput.py --out OUT [--only qwen,llama,qlora,grid,lab:L-auto] [--tiny]

Writes one JSON object per experiment to OUT/results.jsonl and prints a table. ``--tiny`` runs a 2-layer model
on the CPU to check the script itself. Groups (``--only group`` or ``group:experiment``): qwen, llama (plain vs
studio), qlora (save, plain, studio 60 steps with the save/reload/merge round trip), grid, grid8b (memory grid),
lab (attention check and ablation), s3q / qlora1b (1B QLoRA round trips, recomputation variants), s3q8 (8B QLoRA
recomputation variants), s3fused (16-bit runs that must recompute), s3sync (per-step host waits on/off), s3host
(inductor settings), s4q8 (8B QLoRA with and without TRL's activation offloading). Long rows:
benchmarks/long_context.py. What each measured is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from benchmarks.architectures import LLAMA_3_1_8B, LLAMA_3_2_1B, QWEN2_5_0_5B  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": False}
H100_BF16_PEAK = 989e12  # dense bf16 tensor-core peak of an H100 SXM (datasheet)
GiB = 2**30
RESULTS: list[dict] = []
OUT = Path(".")
PROFILE_DIR: Path | None = None  # --profile: torch.profiler tables of 3 steps after warm-up, per experiment


# ------------------------------------------------------------------------------------------------------- data


def make_rows(n: int, vocab: int, max_length: int, seed: int = 0) -> list[dict]:
    """Alpaca-like lengths (log-normal, median ≈ 180 tokens, mean ≈ 220, cut at max_length) with a learnable
    rule: each next token is a fixed function of the previous one (a random permutation of a 4096-token subset).
    The first ~35 % of each row is the prompt (labels -100)."""
    import random

    rng = random.Random(seed)
    subset = list(range(16, min(vocab, 4096 + 16)))
    perm = subset[:]
    rng.shuffle(perm)
    nxt = dict(zip(subset, perm, strict=True))
    rows = []
    for _ in range(n):
        length = max(24, min(max_length, int(rng.lognormvariate(5.2, 0.6))))
        tok = rng.choice(subset)
        ids = []
        for _ in range(length):
            ids.append(tok)
            tok = nxt[tok]
        prompt = max(4, int(length * rng.uniform(0.2, 0.5)))
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({"<pad>": 0, "<eos>": 1, "a": 2}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


# ------------------------------------------------------------------------------------------------ measurement


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def build_model(arch: dict, attn: str, device: str):
    from transformers import AutoModelForCausalLM

    from core.training.memory import load_model_config

    config = load_model_config(arch)
    config._attn_implementation = attn
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    return model


def trainer_class(deferred: bool = False):
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from core.training.syncfree import DeferredMetrics

    class Timed(*((DeferredMetrics, SFTTrainer) if deferred else (SFTTrainer,))):
        """SFTTrainer that records the largest micro-batch (host-side, no sync)."""

        max_micro_tokens = 0
        max_trained_tokens = 0
        step_context = None  # set by the studio path (TunedSettings.training_step_context)
        real_tokens = 0  # tokens of the rows themselves (no padding, no filler), for tokens/s

        def _wrap_collator(self):
            inner = self.data_collator

            def collate(examples):
                batch = inner(examples)
                self.real_tokens += sum(len(e["input_ids"]) for e in examples)
                self.max_micro_tokens = max(self.max_micro_tokens, int(batch["input_ids"].numel()))
                trained = sum(sum(1 for x in e["labels"][1:] if x != -100) for e in examples)
                self.max_trained_tokens = max(self.max_trained_tokens, trained)
                return batch

            self.data_collator = collate

        def training_step(self, *args, **kwargs):
            import contextlib

            with (self.step_context() if self.step_context else contextlib.nullcontext()):
                return super().training_step(*args, **kwargs)

    class Clock(TrainerCallback):
        def __init__(self, trainer_ref, warmup):
            self.ref, self.warmup, self.marks, self.losses, self.step_s = trainer_ref, warmup, [], [], []

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()  # host time per step (no sync): shows compile/recompile stalls
            self.step_s.append(round(now - getattr(self, "last", now), 3))
            self.last = now
            if state.global_step == self.warmup or state.global_step == args.max_steps:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.marks.append((time.perf_counter(), self.ref[0].real_tokens, state.global_step))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append((state.global_step, float(logs["loss"])))

    return Timed, Clock


def run_trainer(name: str, model, args, rows, *, arch: dict, steps: int, warmup: int, extra: dict,
                estimate_fn=None, before_train=None, profile: bool = False, deferred: bool = False) -> dict:
    from datasets import Dataset

    Timed, Clock = trainer_class(deferred)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    ds = Dataset.from_list(rows)
    ref = [None]
    clock = Clock(ref, warmup)
    t0 = time.perf_counter()
    trainer = Timed(model=model, args=args, train_dataset=ds, processing_class=tokenizer(), peft_config=lora_config(),
                    callbacks=[clock])
    ref[0] = trainer
    trainer._wrap_collator()
    if before_train is not None:
        before_train(trainer)
    if (profile or PROFILE_DIR is not None) and device == "cuda":
        trainer.add_callback(profiler_callback(name, warmup))
    setup_s = time.perf_counter() - t0
    trainer.train()
    (t_a, tok_a, s_a), (t_b, tok_b, s_b) = clock.marks[0], clock.marks[-1]
    tps = (tok_b - tok_a) / (t_b - t_a)
    from types import SimpleNamespace

    from core.training.memory import count_parameters

    params = count_parameters(arch, SimpleNamespace(enabled=True, r=16, target_modules="all-linear", use_dora=False))
    result = {
        "name": name, "tokens_per_s": round(tps, 1), "steps_timed": s_b - s_a,
        "tokens_per_step": round((tok_b - tok_a) / max(1, s_b - s_a), 1),
        "mfu": round(tps * 4 * params.total / H100_BF16_PEAK, 4), "setup_s": round(setup_s, 1),
        "max_micro_tokens": trainer.max_micro_tokens, "losses": clock.losses, "step_s": clock.step_s, **extra,
    }
    if device == "cuda":
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
        result["model_alloc_gib"] = round(base_alloc / GiB, 3)
    if estimate_fn is not None:
        est = estimate_fn(trainer.max_micro_tokens, trainer.max_trained_tokens)
        result["estimate_allocated_gib"] = round(est.peak_allocated / GiB, 3)
        result["estimate_total_gib"] = round(est.total / GiB, 3)
        result["estimate_breakdown_gib"] = {k: round(v / GiB, 3) for k, v in est.breakdown().items()}
        if "peak_allocated_gib" in result:
            result["estimate_error"] = round(result["estimate_allocated_gib"] / result["peak_allocated_gib"] - 1, 3)
    return result, trainer


def profiler_callback(name: str, warmup: int, steps: int = 3):
    """Profiles optimizer steps warmup+1 .. warmup+steps; writes the op tables and prints GPU busy share."""
    from transformers import TrainerCallback

    class Prof(TrainerCallback):
        prof, t0 = None, 0.0

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup and self.prof is None:
                torch.cuda.synchronize()
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                               torch.profiler.ProfilerActivity.CUDA])
                self.prof.start()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self.prof is not None and state.global_step == warmup + steps:
                torch.cuda.synchronize()
                wall = time.perf_counter() - self.t0
                self.prof.stop()
                ka = self.prof.key_averages()

                def dev(e):
                    return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

                kernels = sum(dev(e) for e in ka) / 1e6
                n_kernels = sum(e.count for e in ka if dev(e) > 0)
                text = [f"wall {wall:.3f}s for {steps} steps, device busy {kernels:.3f}s ({kernels / wall:.0%}), "
                        f"~{n_kernels / steps:.0f} device ops/step"]
                for key in ("self_cuda_time_total", "self_cpu_time_total", "cpu_time_total"):
                    try:
                        text.append(ka.table(sort_by=key, row_limit=40, max_name_column_width=70))
                    except Exception as exc:  # noqa: BLE001
                        text.append(f"({key}: {exc})")
                folder = PROFILE_DIR or (OUT / "profiles")
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{name}.txt").write_text("\n\n".join(text))
                print(f"PROFILE {name}: {text[0]}", flush=True)
                self.prof = None

    return Prof()


def record(result: dict) -> None:
    RESULTS.append(result)
    with open(OUT / "results.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")
    show = {k: v for k, v in result.items() if k not in ("losses", "estimate_breakdown_gib", "step_s", "reasons")}
    print("RESULT", json.dumps(show), flush=True)


def free(*objs) -> None:
    for o in objs:
        del o
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def base_sft_args(out: str, steps: int, device: str) -> dict:
    return dict(output_dir=out, max_steps=steps, report_to="none", save_strategy="no", logging_steps=5,
                disable_tqdm=True, seed=0, **({} if device == "cuda" else {"use_cpu": True, "bf16": False}))


def studio_config(arch_name: str, *, batch=8, max_length=1024, checkpointing=None, four_bit=False, lr=2e-4):
    from core.config import RunConfig

    c = RunConfig()
    c.model.name_or_path = arch_name
    c.model.load_in_4bit = four_bit
    c.lora.r, c.lora.lora_alpha, c.lora.lora_dropout, c.lora.target_modules = 16, 32, 0.0, "all-linear"
    c.training.per_device_train_batch_size = batch
    c.training.gradient_accumulation_steps = 1
    c.training.gradient_checkpointing = checkpointing
    c.training.learning_rate = lr
    c.data.max_length = max_length
    return c


def device_info():
    from core.training.devices import detect_device

    return detect_device("auto")


# --------------------------------------------------------------------------------------------- experiments


def plain_trl(name, arch, rows, steps, warmup, device, *, batch=8, max_length=1024, checkpointing=True, model=None,
              four_bit=False):
    """TRL's SFTConfig defaults (bf16, gradient checkpointing, padded batches, SDPA), LoRA r16 all-linear."""
    from trl import SFTConfig

    from core.training.memory import estimate_memory

    model = model if model is not None else build_model(arch, "sdpa", device)
    args = SFTConfig(per_device_train_batch_size=batch, max_length=max_length,
                     gradient_checkpointing=checkpointing, **base_sft_args(f"/tmp/bench-{name}", steps, device))
    cfg = studio_config(name, batch=batch, max_length=max_length, checkpointing=checkpointing, four_bit=four_bit)

    def est(tokens, trained_tokens):
        return estimate_memory(cfg, None, model_config=arch, gradient_checkpointing=checkpointing, tokens=tokens,
                               padding_free=False, trained_tokens=trained_tokens,
                               device_kind=device)

    result, trainer = run_trainer(name, model, args, rows, arch=arch, steps=steps, warmup=warmup, estimate_fn=est,
                                  extra={"path": "plain-trl", "batch": batch, "checkpointing": checkpointing,
                                         "four_bit": four_bit})
    record(result)
    return trainer


def studio(name, arch, rows, steps, warmup, device, *, liger=None, four_bit_model=None, compile_layers=None,
           varlen=None, attn=None, casts=None, profile=False, tweak=None, inductor=None, budget=None, deferred=True, **cfg_kw):
    """The studio's automatic choices (core.training.performance.tuned_settings), applied as session.py does.
    ``inductor``: torch._inductor.config values to try; ``budget``: torch._functorch activation_memory_budget."""
    from trl import SFTConfig

    for key, value in (inductor or {}).items():
        setattr(torch._inductor.config, key, value)

    from core.training.memory import estimate_memory
    from core.training.performance import tuned_settings

    cfg = studio_config(name, four_bit=four_bit_model is not None, **cfg_kw)
    cfg.training.torch_compile = compile_layers
    cfg.model.attn_implementation = attn
    dev = device_info()
    lengths = [len(r["input_ids"]) for r in rows]
    tuned = tuned_settings(cfg, dev, model_config=arch, lengths=lengths, liger=liger, varlen=varlen)
    if casts is not None:
        tuned.skip_lora_input_casts = not casts
    if not deferred:  # the step with TRL's per-step host reads, for comparison
        tuned.sft_args.pop("accelerator_config", None)
    if budget is not None:
        tuned.recompute_budget = budget
        torch._functorch.config.activation_memory_budget = budget
    if tweak is not None:
        tweak(tuned)
    for reason in tuned.reasons:
        print(f"  [{name}] auto: {reason}", flush=True)
    attn = cfg.model.attn_implementation or tuned.attn_implementation or "sdpa"
    tuned.before_load(attn)
    if callable(four_bit_model):  # a loader: load the 4-bit model with the attention the studio chose
        model = four_bit_model(attn)
    else:
        model = four_bit_model if four_bit_model is not None else build_model(arch, attn, device)
    tc = cfg.training
    base = dict(per_device_train_batch_size=tc.per_device_train_batch_size,
                gradient_accumulation_steps=tc.gradient_accumulation_steps, max_length=cfg.data.max_length,
                packing=tc.packing, learning_rate=tc.learning_rate,
                gradient_checkpointing=bool(tc.gradient_checkpointing), **base_sft_args(f"/tmp/bench-{name}", steps, device))
    kwargs = tuned.sft_kwargs(base)
    args = SFTConfig(**kwargs)
    padding_free = bool(kwargs.get("padding_free"))

    def est(tokens, trained_tokens):
        fused = tuned.compile_layers and tuned.recompute_budget is not None  # recomputed by the compiled layers
        return estimate_memory(cfg, None, model_config=arch,
                               gradient_checkpointing=bool(kwargs["gradient_checkpointing"]) or fused,
                               micro_batch=kwargs["per_device_train_batch_size"], tokens=tokens,
                               padding_free=padding_free, liger=bool(kwargs.get("use_liger_kernel")),
                               trained_tokens=trained_tokens, device_kind=device, attn=attn,
                               compiled=tuned.compile_layers and (fused or not kwargs["gradient_checkpointing"]),
                               recompute_budget=tuned.recompute_budget if fused else None)

    extra = {"path": "studio", "attn": attn, "padding_free": padding_free, "inductor": inductor, "budget": budget,
             "deferred_metrics": deferred,
             "checkpointing": bool(kwargs["gradient_checkpointing"]), "liger": bool(kwargs.get("use_liger_kernel")),
             "batch": kwargs["per_device_train_batch_size"], "accum": kwargs.get("gradient_accumulation_steps", 1),
             "reasons": tuned.reasons, "compiled_layers": tuned.compile_layers, "recompute_budget": tuned.recompute_budget,
             "skip_lora_input_casts": tuned.skip_lora_input_casts}

    def before_train(trainer):
        for line in tuned.prepare_model(trainer.model):
            print(f"  [{name}] {line}", flush=True)
        trainer.step_context = tuned.training_step_context

    result, trainer = run_trainer(name, model, args, rows, arch=arch, steps=steps, warmup=warmup, estimate_fn=est,
                                  extra=extra, before_train=before_train, profile=profile, deferred=deferred)
    record(result)
    return trainer


def fused_recompute(tuned) -> None:
    """What the studio picks when a 16-bit run must recompute (a smaller GPU): compiled layers that recompute."""
    from core.training.performance import RECOMPUTE_BUDGET

    tuned.sft_args["gradient_checkpointing"] = False
    tuned.compile_layers = True
    tuned.recompute_budget = RECOMPUTE_BUDGET


def guarded(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except Exception as exc:  # noqa: BLE001 - one failed experiment must not stop the others
        traceback.print_exc()
        record({"name": a[0] if a else fn.__name__, "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
        return None
    finally:
        free()


def qlora(arch, rows, steps, warmup, device, folder: Path, baseline: bool = True, name: str = "qlora-studio",
          roundtrip: bool = True, **studio_kw):
    """Save random bf16 weights, load them in NF4 (double quantisation, bf16 compute), train (plain TRL and the
    studio path), save the adapter, reload it, merge it into the 16-bit base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").exists():
        save_random(arch, device, folder)
        free()

    def load(attn="sdpa"):
        return load4(folder, attn)

    if baseline:
        guarded(plain_trl, "qlora-plain-trl", arch, rows, steps, warmup, device, model=load())
        free()
    trainer = guarded(studio, name, arch, rows, steps, warmup, device, four_bit_model=load, **studio_kw)
    if trainer is None or not roundtrip:
        return
    # end to end: save, reload, merge into a 16-bit base
    out = {"name": f"{name}-roundtrip"}
    try:
        batch = trainer.data_collator([{k: v for k, v in r.items()} for r in rows[:8]])
        batch = {k: v.to("cuda") for k, v in batch.items() if torch.is_tensor(v)}
        trainer.model.eval()

        def loss_of(model):
            with torch.no_grad():  # no KV cache: with one, transformers' SDPA ignores the packed rows' boundaries
                return float(model(**batch, use_cache=False).loss)

        out["loss_trained_4bit"] = loss_of(trainer.model)
        with trainer.model.disable_adapter():
            out["loss_trained_adapter_off"] = loss_of(trainer.model)
        train_attn = trainer.model.get_base_model().config._attn_implementation
        # what the adapter file must carry: the LoRA weights, and nothing else may have changed in the base
        from peft import get_peft_model_state_dict

        trained_lora = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(trainer.model).items()}
        out["lora_tensors"] = len(trained_lora)
        out["non_lora_trainable"] = [n for n, p in trainer.model.named_parameters()
                                     if p.requires_grad and "lora_" not in n][:10]
        base_after = {n: p.detach().float().cpu() for n, p in trainer.model.get_base_model().named_parameters()
                      if "lora_" not in n and p.is_floating_point()}
        used_liger = bool(getattr(trainer.args, "use_liger_kernel", False))
        adapter = Path("/tmp/qlora-adapter")
        trainer.model.save_pretrained(adapter)
        out["adapter_files"] = sorted(p.name for p in adapter.iterdir())
        del trainer
        free()
        base4 = load()
        out["loss_base_4bit"] = loss_of(base4)
        diffs = sorted(((float((p.detach().float().cpu() - base_after[n]).abs().max()), n)
                        for n, p in base4.named_parameters() if n in base_after), reverse=True)
        out["base_params_compared"] = len(diffs)
        out["base_param_max_diff"] = diffs[:3]
        reloaded = PeftModel.from_pretrained(base4, adapter)
        out["loss_reloaded_4bit"] = loss_of(reloaded)
        reloaded_lora = get_peft_model_state_dict(reloaded)
        out["lora_reload_max_diff"] = max((float((reloaded_lora[k].float().cpu() - v).abs().max())
                                           for k, v in trained_lora.items() if k in reloaded_lora), default=None)
        out["lora_missing_on_reload"] = [k for k in trained_lora if k not in reloaded_lora][:5]
        if used_liger:  # the same kernels the run trained with
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=reloaded.get_base_model())
            out["loss_reloaded_4bit_liger"] = loss_of(reloaded)
        del reloaded, base4
        free()
        if train_attn != "sdpa":  # the same reload with the attention the run trained with
            out["loss_reloaded_4bit_train_attn"] = loss_of(PeftModel.from_pretrained(load(train_attn), adapter))
            free()
        base16 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map={"": 0},
                                                      attn_implementation="sdpa")
        merged = PeftModel.from_pretrained(base16, adapter).merge_and_unload()
        out["loss_merged_bf16"] = loss_of(merged)
        out["merged_type"] = type(merged).__name__
        out["merged_dtype"] = str(next(merged.parameters()).dtype)
        merged.save_pretrained("/tmp/qlora-merged")
        out["merged_saved"] = True
        del merged, base16
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    record(out)
    free()


def environment() -> dict:
    import importlib.metadata as md

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "liger-kernel",
                "flash-attn"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["device"] = f"{p.name}, {p.total_memory / GiB:.1f} GiB, {p.multi_processor_count} SMs"
        env["cuda"] = torch.version.cuda
    return env


def experiments(qwen, llama, rows, device, steps):
    qs, ls = (steps or 40), (steps or 16)
    folder = Path("/tmp/llama8b-random")
    folder1b = Path("/tmp/llama1b-random")
    q1b_roundtrips = [
        ("q1b-save", lambda: save_random(LLAMA_3_2_1B, device, folder1b)),
        ("q1b-liger", lambda: qlora(LLAMA_3_2_1B, rows, 40, 4, device, folder1b, baseline=False, name="q1b-liger",
                                    lr=1e-3)),
        ("q1b-noliger", lambda: qlora(LLAMA_3_2_1B, rows, 40, 4, device, folder1b, baseline=False,
                                      name="q1b-noliger", lr=1e-3, liger=False)),
    ]
    inductor_tries = (("auto", None), ("cpp", {"cpp_wrapper": True}), ("combo", {"combo_kernels": True}),
                      ("cpp-combo", {"cpp_wrapper": True, "combo_kernels": True}))
    return {
        "qwen": [
            ("qwen0.5b-plain-trl", lambda: plain_trl("qwen0.5b-plain-trl", qwen, rows, qs, 5, device)),
            ("qwen0.5b-studio", lambda: studio("qwen0.5b-studio", qwen, rows, qs, 5, device)),
        ],
        "qwen2": [
            ("qwen0.5b-studio-liger", lambda: studio("qwen0.5b-studio-liger", qwen, rows, qs, 5, device, liger=True)),
        ],
        "llama": [
            ("llama8b-plain-trl", lambda: plain_trl("llama8b-plain-trl", llama, rows, ls, 4, device)),
            ("llama8b-studio", lambda: studio("llama8b-studio", llama, rows, ls, 4, device)),
        ],
        "llama2": [
            ("llama8b-studio-noliger", lambda: studio("llama8b-studio-noliger", llama, rows, ls, 4, device,
                                                      liger=False)),
        ],
        "grid": [
            (f"grid-qwen-plain-b{bs}-l{ml}-ck{int(ck)}",
             (lambda bs=bs, ml=ml, ck=ck: plain_trl(f"grid-qwen-plain-b{bs}-l{ml}-ck{int(ck)}", qwen, rows, 6, 2,
                                                    device, batch=bs, max_length=ml, checkpointing=ck)))
            for bs, ml, ck in ((4, 512, False), (16, 1024, False), (16, 2048, True))
        ] + [
            (f"grid-qwen-studio-b{bs}-ck{int(ck)}",
             (lambda bs=bs, ck=ck: studio(f"grid-qwen-studio-b{bs}-ck{int(ck)}", qwen, rows, 6, 2, device, batch=bs,
                                          checkpointing=ck)))
            for bs, ck in ((16, False), (32, True))
        ],
        "grid8b": [
            ("grid-llama8b-studio-b8-ck1", lambda: studio("grid-llama8b-studio-b8-ck1", llama, rows, 6, 2, device,
                                                          batch=8, checkpointing=True)),
            ("grid-llama8b-plain-b4-l512-ck0", lambda: plain_trl("grid-llama8b-plain-b4-l512-ck0", llama, rows, 6, 2,
                                                                 device, batch=4, max_length=512,
                                                                 checkpointing=False)),
        ],
        "lab": [
            ("attn-check", lambda: attention_check(device)),
            ("Q-sdpa-eager", lambda: studio("Q-sdpa-eager", qwen, rows, qs, 5, device, varlen=False,
                                            compile_layers=False, casts=True)),
            ("Q-varlen-nocast", lambda: studio("Q-varlen-nocast", qwen, rows, qs, 5, device, compile_layers=False)),
            ("Q-auto", lambda: studio("Q-auto", qwen, rows, qs, 8, device)),
            ("L-sdpa-eager", lambda: studio("L-sdpa-eager", llama, rows, ls, 4, device, varlen=False,
                                            compile_layers=False, casts=True)),
            ("L-varlen-nocast", lambda: studio("L-varlen-nocast", llama, rows, ls, 4, device, compile_layers=False)),
            ("L-auto", lambda: studio("L-auto", llama, rows, ls + 4, 8, device)),
            ("L-auto-prof", lambda: studio("L-auto-prof", llama, rows, 12, 8, device, profile=True)),
        ],
        "s3q": q1b_roundtrips + [
            ("q1b-compile-ck", lambda: qlora(LLAMA_3_2_1B, rows, 24, 8, device, folder1b,
                                             baseline=False, name="q1b-compile-ck", roundtrip=False,
                                             compile_layers=True)),
            ("q1b-compile-budget", lambda: qlora(LLAMA_3_2_1B, rows, 24, 8, device, folder1b,
                                                 baseline=False, name="q1b-compile-budget", roundtrip=False,
                                                 compile_layers=True, checkpointing=False, budget=0.1)),
        ],
        "s3q8": [
            ("qlora-save", lambda: save_random(llama, device, folder)),
            ("qlora-plain-trl", lambda: qlora_plain(llama, rows, steps or 20, 4, device, folder)),
            ("q8-auto", lambda: qlora(llama, rows, 24, 8, device, folder, baseline=False, name="q8-auto",
                                      roundtrip=False)),
            ("q8-budget0", lambda: qlora(llama, rows, 24, 8, device, folder, baseline=False, name="q8-budget0",
                                         roundtrip=False, budget=0.0)),
            ("q8-eager-ck", lambda: qlora(llama, rows, 20, 4, device, folder, baseline=False, name="q8-eager-ck",
                                          roundtrip=False, compile_layers=False)),
            ("q8-eager-ck-noliger", lambda: qlora(llama, rows, 20, 4, device, folder, baseline=False,
                                                  name="q8-eager-ck-noliger", roundtrip=False, compile_layers=False,
                                                  liger=False)),
        ],
        "s4q8": [  # QLoRA memory (issue 18.2): TRL's activation offloading over the compiled recomputation
            ("qlora-save", lambda: save_random(llama, device, folder)),
            ("q8-auto", lambda: qlora(llama, rows, 24, 8, device, folder, baseline=False, name="q8-auto",
                                      roundtrip=False)),
            ("q8-offload", lambda: qlora(llama, rows, 24, 8, device, folder, baseline=False, name="q8-offload",
                                         roundtrip=False,
                                         tweak=lambda t: t.sft_args.update(activation_offloading=True))),
        ],
        "s3fused": [
            ("grid-qwen-studio-b32-fused", lambda: studio("grid-qwen-studio-b32-fused", qwen, rows, 8, 3, device,
                                                          batch=32, tweak=fused_recompute)),
            ("grid-llama8b-studio-b8-fused", lambda: studio("grid-llama8b-studio-b8-fused", llama, rows, 10, 4,
                                                            device, batch=8, tweak=fused_recompute)),
        ],
        "s3sync": [
            ("Q-syncs", lambda: studio("Q-syncs", qwen, rows, qs, 5, device, deferred=False)),
            ("Q-nosync", lambda: studio("Q-nosync", qwen, rows, qs, 5, device)),
            ("L-syncs", lambda: studio("L-syncs", llama, rows, ls + 4, 6, device, deferred=False)),
            ("L-nosync", lambda: studio("L-nosync", llama, rows, ls + 4, 6, device)),
            ("L-nosync-prof", lambda: studio("L-nosync-prof", llama, rows, 12, 8, device, profile=True)),
        ],
        "s3host": [
            (f"Q-{label}", (lambda label=label, ind=ind: studio(f"Q-{label}", qwen, rows, qs, 5, device, inductor=ind)))
            for label, ind in inductor_tries
        ],
        "s3host8b": [
            (f"L-{label}", (lambda label=label, ind=ind: studio(f"L-{label}", llama, rows, ls + 4, 8, device,
                                                               inductor=ind)))
            for label, ind in inductor_tries
        ],
        "qlora1b": q1b_roundtrips,
        "qlora": [
            ("qlora-save", lambda: save_random(llama, device, folder)),
            ("qlora-plain-trl", lambda: qlora_plain(llama, rows, steps or 20, 4, device, folder)),
            ("qlora-studio", lambda: qlora(llama, rows, steps or 60, 4, device, folder, baseline=False, lr=1e-3)),
            ("qlora-studio-compiled", lambda: qlora(llama, rows, steps or 20, 4, device, folder, baseline=False,
                                                    name="qlora-studio-compiled", roundtrip=False,
                                                    compile_layers=True)),
        ],
    }


def attention_check(device) -> None:
    """core.training.attention (PyTorch's varlen FlashAttention) against SDPA with a block-diagonal causal mask:
    outputs and gradients on random packed rows, GQA 32/8 heads, bf16."""
    if device != "cuda":
        return
    from core.training.attention import varlen_attention_forward

    torch.manual_seed(0)
    lens = [37, 300, 5, 1024, 211]
    total, hq, hkv, d = sum(lens), 32, 8, 128
    q = torch.randn(1, hq, total, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, hkv, total, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, hkv, total, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    out, _ = varlen_attention_forward(None, q, k, v, None, scaling=d ** -0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                      max_length_q=max(lens), max_length_k=max(lens))
    g = torch.randn_like(out)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), g)
    seg = torch.repeat_interleave(torch.arange(len(lens), device="cuda"), torch.tensor(lens, device="cuda"))
    mask = (seg[:, None] == seg[None, :]) & torch.ones(total, total, dtype=torch.bool, device="cuda").tril()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q64, k64.repeat_interleave(4, 1), v64.repeat_interleave(4, 1),
                                                           attn_mask=mask).transpose(1, 2)
    rq, rk, rv = torch.autograd.grad(ref, (q64, k64, v64), g.double())

    def rel(a, b):
        return round(float((a.double() - b).norm() / b.norm()), 6)

    record({"name": "attn-check", "out_rel_err": rel(out, ref), "dq_rel_err": rel(gq, rq), "dk_rel_err": rel(gk, rk),
            "dv_rel_err": rel(gv, rv), "nan": bool(out.isnan().any() or gq.isnan().any())})


def ceiling(device) -> None:
    """The machine's own bf16 matmul rate (8B-sized projections at 2k tokens) and copy bandwidth."""
    if device != "cuda":
        return
    out = {"name": "ceiling"}
    for label, (m, k, n) in {"mm_2k_4096x14336": (2048, 4096, 14336), "mm_8k_4096x4096": (8192, 4096, 4096)}.items():
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(10):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            a @ b
        end.record()
        torch.cuda.synchronize()
        out[label + "_tflops"] = round(2 * m * k * n * 50 / (start.elapsed_time(end) / 1e3) / 1e12, 1)
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    out["copy_gbps"] = round(2 * 2**30 * 10 / (start.elapsed_time(end) / 1e3) / 1e9, 0)
    record(out)


def save_random(arch, device, folder: Path) -> None:
    t0 = time.perf_counter()
    m = build_model(arch, "sdpa", device)
    m.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    print(f"saved random {folder.name} in {time.perf_counter() - t0:.0f}s", flush=True)


def load4(folder: Path, attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    t0 = time.perf_counter()
    m = AutoModelForCausalLM.from_pretrained(folder, quantization_config=bnb, dtype=torch.bfloat16,
                                             device_map={"": 0}, attn_implementation=attn)
    print(f"loaded 4-bit in {time.perf_counter() - t0:.0f}s, {torch.cuda.memory_allocated() / GiB:.2f} GiB", flush=True)
    return m


def qlora_plain(arch, rows, steps, warmup, device, folder: Path) -> None:
    trainer = plain_trl("qlora-plain-trl", arch, rows, steps, warmup, device, model=load4(folder), four_bit=True)
    del trainer


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--only", default="qwen,llama,qlora,grid")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--one", default=None, help="run this one experiment in this process (used by the parent)")
    ap.add_argument("--timeout", type=int, default=400, help="seconds per experiment before it is killed")
    ap.add_argument("--profile", action="store_true", help="write torch.profiler tables of 3 steps per experiment")
    a = ap.parse_args()
    global PROFILE_DIR
    OUT = Path(a.out)
    if a.profile:
        PROFILE_DIR = OUT / "profiles"
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not a.one:
        env = environment()
        print("ENV", json.dumps(env), flush=True)
        (OUT / "env.json").write_text(json.dumps(env, indent=1))
    qwen, llama = (TINY, TINY) if a.tiny else (QWEN2_5_0_5B, LLAMA_3_1_8B)
    rows = make_rows(4000, qwen["vocab_size"], 1024)
    lens = [len(r["input_ids"]) for r in rows]
    if not a.one:
        print(f"data: {len(rows)} rows, mean {sum(lens) / len(lens):.0f} tokens, max {max(lens)}", flush=True)
    table = experiments(qwen, llama, rows, device, a.steps)
    if a.one:
        group_name, _, name = a.one.partition(":")
        for n, fn in table[group_name]:
            if n == name:
                guarded(fn)
                if name == "qlora-save":
                    record({"name": name, "done": True})
                break
        return
    import subprocess

    for entry in a.only.split(","):  # a group, or group:experiment
        group, _, only = entry.partition(":")
        for name, _ in table.get(group, []):
            if only and name != only:
                continue
            cmd = [sys.executable, __file__, "--out", str(OUT), "--one", f"{group}:{name}"] + (
                ["--tiny"] if a.tiny else []) + (["--steps", str(a.steps)] if a.steps else []) + (
                ["--profile"] if a.profile else [])
            t0 = time.perf_counter()
            (OUT / "logs").mkdir(exist_ok=True)
            with open(OUT / "logs" / f"{name}.log", "w") as log:  # the whole output, kept when a run hangs
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
                try:
                    code = proc.wait(timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = "killed (timeout)"
                    record({"name": name, "error": f"timed out after {a.timeout}s"})
            for line in (OUT / "logs" / f"{name}.log").read_text(errors="replace").splitlines():
                if line.startswith(("RESULT", "PROFILE", "  [")) or "Error" in line:
                    print(line[:600], flush=True)
            print(f"[{name}] exit {code} in {time.perf_counter() - t0:.0f}s", flush=True)
    RESULTS.clear()
    RESULTS.extend(json.loads(line) for line in (OUT / "results.jsonl").read_text().splitlines() if line.strip())
    print("\nSUMMARY")
    for r in RESULTS:
        if "error" in r:
            print(f"{r['name']:<36} ERROR {r['error'][:150]}")
        elif "tokens_per_s" in r:
            print(f"{r['name']:<36} {r['tokens_per_s']:>9.0f} tok/s  MFU {r['mfu']:.3f}  peak "
                  f"{r.get('peak_allocated_gib', float('nan')):.2f} GiB  est {r.get('estimate_allocated_gib', 0):.2f} "
                  f"GiB ({r.get('estimate_error', math.nan):+.1%})  loss {r['losses'][:1]} -> {r['losses'][-1:]}")
        else:
            print(r)


if __name__ == "__main__":
    main()
