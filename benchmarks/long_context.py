"""Long rows: the studio's automatic path on single rows of 16k to 128k tokens, one process, one model.

    python benchmarks/long_context.py --out OUT [--lengths 16384,32768,65536,131072] [--arch llama-3.1-8b]
        [--variant auto|offload|checkpointing] [--tiny]

For each length: one synthetic row of that many tokens (the first 10 % prompt, no loss; the rest a learnable
sequence), micro-batch 1, LoRA r16 all-linear, random weights of the real architecture, the settings that
``core.training.performance.tuned_settings`` chooses for a run file with ``data.max_length`` = the length, applied as
``benchmarks/throughput.py`` applies them. Records tokens/s (real tokens after the warm-up step), the peak allocated
memory and the fit check's estimate for the same settings. The model is built and wrapped once; lengths run in
ascending order with the allocator's statistics reset between them, so a length that fails (out of memory) leaves
the longest one that trained on record. ``benchmarks/unsloth_long.py`` runs Unsloth on the same rows.

``--variant offload`` forces TRL's activation offloading on top of the automatic choices, ``checkpointing`` forces
transformers' gradient checkpointing instead of the compiled recomputation (for comparison).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.architectures import ARCHITECTURES  # noqa: E402
from benchmarks.long_rows import PROMPT_SHARE, long_row  # noqa: E402
from benchmarks.throughput import (  # noqa: E402
    TINY,
    base_sft_args,
    build_model,
    lora_config,
    studio_config,
    tokenizer,
    trainer_class,  # noqa: E402
)

GiB = 2**30



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--lengths", default="16384,32768,65536,131072")
    ap.add_argument("--arch", default="llama-3.1-8b", choices=sorted(ARCHITECTURES))
    ap.add_argument("--variant", default="auto", choices=["auto", "offload", "checkpointing"])
    ap.add_argument("--attn", default=None, help="model.attn_implementation (default: the automatic choice)")
    ap.add_argument("--steps", default="", help="steps per length, comma-separated (default 3 up to 32k, else 2)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU (checks the script)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / f"long-{a.variant}{'-' + a.attn if a.attn else ''}.jsonl"
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    arch = TINY if a.tiny else ARCHITECTURES[a.arch]
    lengths = [int(x) for x in a.lengths.split(",")]
    steps_for = [int(x) for x in a.steps.split(",")] if a.steps else [3 if n <= 32768 else 2 for n in lengths]

    from peft import get_peft_model
    from trl import SFTConfig

    from core.training.devices import detect_device
    from core.training.memory import estimate_memory
    from core.training.performance import tuned_settings

    dev = detect_device("auto")
    Timed, Clock = trainer_class(deferred=True)
    model = None
    for length, steps in zip(lengths, steps_for, strict=True):
        name = f"long-{a.arch}-{a.variant}{'-' + a.attn if a.attn else ''}-{length // 1024}k"
        t_start = time.perf_counter()
        try:
            cfg = studio_config(a.arch, batch=1, max_length=length)
            cfg.model.attn_implementation = a.attn
            if a.variant == "checkpointing":
                cfg.training.gradient_checkpointing = True
            tuned = tuned_settings(cfg, dev, model_config=arch, lengths=[length])
            if a.variant == "offload":
                tuned.sft_args["activation_offloading"] = True
            for reason in tuned.reasons:
                print(f"  [{name}] auto: {reason}", flush=True)
            attn = a.attn or tuned.attn_implementation or "sdpa"
            tuned.before_load(attn)
            if model is None:
                base = build_model(arch, attn, device)
                model = get_peft_model(base, lora_config())
            tc = cfg.training
            kwargs = tuned.sft_kwargs(dict(
                per_device_train_batch_size=1, gradient_accumulation_steps=1, max_length=length, packing=False,
                learning_rate=tc.learning_rate, gradient_checkpointing=bool(tc.gradient_checkpointing),
                **base_sft_args(f"/tmp/bench-{name}", steps, device)))
            kwargs["logging_steps"] = 1
            args = SFTConfig(**kwargs)
            row = long_row(length, arch["vocab_size"])
            from datasets import Dataset

            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            ref = [None]
            clock = Clock(ref, 1)
            trainer = Timed(model=model, args=args, train_dataset=Dataset.from_list([row] * steps),
                            processing_class=tokenizer(), callbacks=[clock])
            ref[0] = trainer
            trainer._wrap_collator()
            # each length compiles afresh: the recomputation budget is read when a graph is compiled, and graphs
            # compiled for a shorter row (no recomputation) would otherwise serve the longer one
            torch._dynamo.reset()
            from torch._functorch import config as functorch_config

            functorch_config.activation_memory_budget = 1.0
            for line in tuned.prepare_model(trainer.model):
                print(f"  [{name}] {line}", flush=True)
            trainer.step_context = tuned.training_step_context
            trainer.train()
            (t_a, _, s_a), (t_b, _, s_b) = clock.marks[0], clock.marks[-1]
            fused = tuned.compile_layers and tuned.recompute_budget is not None
            est = estimate_memory(cfg, dev.total_memory, model_config=arch,
                                  gradient_checkpointing=bool(kwargs["gradient_checkpointing"]) or fused,
                                  micro_batch=1, tokens=length, padding_free=False, trained_tokens=length - int(
                                      length * PROMPT_SHARE), device_kind=device, attn=attn,
                                  compiled=tuned.compile_layers,
                                  recompute_budget=tuned.recompute_budget if fused else None,
                                  offload=bool(kwargs.get("activation_offloading")), suggest=False)
            result = {
                "name": name, "length": length, "variant": a.variant, "ok": True,
                "tokens_per_s": round(length * (s_b - s_a) / (t_b - t_a), 1), "steps_timed": s_b - s_a,
                "step_s": clock.step_s, "losses": clock.losses, "attn": attn,
                "compiled_layers": tuned.compile_layers, "recompute_budget": tuned.recompute_budget,
                "checkpointing": bool(kwargs["gradient_checkpointing"]),
                "activation_offloading": bool(kwargs.get("activation_offloading")),
                "estimate_allocated_gib": round(est.peak_allocated / GiB, 3), "estimate_total_gib": round(est.total / GiB, 3),
                "estimate_verdict": est.verdict, "estimate_breakdown_gib": {k: round(v / GiB, 3) for k, v in est.breakdown().items()},
                "reasons": tuned.reasons, "wall_s": round(time.perf_counter() - t_start, 1),
            }
            if cuda:
                result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
                result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
                result["estimate_error"] = round(result["estimate_allocated_gib"] / result["peak_allocated_gib"] - 1, 3)
            del trainer
        except Exception as exc:  # noqa: BLE001 - an out-of-memory length is a result, not a crash
            traceback.print_exc()
            result = {"name": name, "length": length, "variant": a.variant, "ok": False,
                      "error": f"{type(exc).__name__}: {str(exc)[:400]}", "wall_s": round(time.perf_counter() - t_start, 1)}
            if cuda:
                result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
        print("RESULT", json.dumps(result), flush=True)
        with results.open("a") as f:
            f.write(json.dumps(result) + "\n")
        if not result["ok"] and "out of memory" in result["error"].lower():
            break  # longer rows will not fit either


if __name__ == "__main__":
    main()
