"""Unsloth on the rows of ``benchmarks/long_context.py``: one row of 16k-128k tokens per step, Llama-3.1-8B random
weights, LoRA r16 all-linear, Unsloth's own long-context settings (its gradient checkpointing, "unsloth", which
offloads each layer's input to the host, and its fused cross-entropy), measured the same way (real tokens after the
warm-up step, peak allocated memory after a reset taken once the model is loaded).

Runs under Unsloth's wheels (``../shared/gpu/unsloth_bench``: copy it to ``.ub/`` and run its fetch-wheels.sh)::

    pip install -q --no-index --no-deps --target /tmp/usite .ub/whl/*.whl
    PYTHONPATH=/tmp/usite python3 benchmarks/unsloth_long.py --harness .ub --out $OUT --lengths 16384,32768

It imports that harness for the random model (``save_random``, written once to /tmp/models/llama8b), its tokenizer
and version report; the row comes from ``benchmarks/long_rows.py``, as in long_context.py (torch only: the project's trl pin
differs from Unsloth's). One JSON line per length goes to OUT/long-unsloth.jsonl; lengths run in ascending order in
one process and stop at the first out-of-memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.long_rows import long_row  # noqa: E402

GiB = 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--harness", default=".ub", help="folder holding bench_unsloth.py")
    ap.add_argument("--lengths", default="16384,32768,65536,131072")
    ap.add_argument("--steps", default="")
    ap.add_argument("--cpu-check", action="store_true")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(a.harness).resolve()))
    import bench_unsloth as hb  # sets the offline environment before Unsloth is imported

    work = Path("/tmp/ubench-work")
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # Unsloth writes ./unsloth_compiled_cache
    arch = hb.archs(a.cpu_check)["llama"]
    folder = hb.model_folder("llama8b", a.cpu_check)
    if not (folder / "bench_params.json").exists():
        hb.save_random("llama8b", arch, folder, a.cpu_check)
    env = hb.versions()
    lengths = [int(x) for x in a.lengths.split(",")]
    steps_for = [int(x) for x in a.steps.split(",")] if a.steps else [3 if n <= 32768 else 2 for n in lengths]

    import torch
    import unsloth  # noqa: F401
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    cuda = torch.cuda.is_available()
    model, tok = FastLanguageModel.from_pretrained(model_name=str(folder), max_seq_length=max(lengths),
                                                   dtype=torch.bfloat16, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=32, lora_dropout=0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        bias="none", use_gradient_checkpointing="unsloth", random_state=0)

    class Clock(TrainerCallback):
        def __init__(self, warmup):
            self.warmup, self.marks, self.losses, self.step_s, self.tokens = warmup, [], [], [], 0

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.step_s.append(round(now - getattr(self, "last", now), 3))
            self.last = now
            if state.global_step == self.warmup or state.global_step == args.max_steps:
                if cuda:
                    torch.cuda.synchronize()
                self.marks.append((time.perf_counter(), state.global_step))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append((state.global_step, float(logs["loss"])))

    for length, steps in zip(lengths, steps_for, strict=True):
        name = f"long-unsloth-{length // 1024}k"
        t0 = time.perf_counter()
        try:
            row = long_row(length, arch["vocab_size"])
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            clock = Clock(1)
            args = SFTConfig(output_dir=f"/tmp/ubench-{name}", max_steps=steps, report_to="none", save_strategy="no",
                             logging_steps=1, disable_tqdm=True, seed=0, per_device_train_batch_size=1,
                             gradient_accumulation_steps=1, max_length=length, learning_rate=2e-4,
                             **({"bf16": True} if cuda else {"use_cpu": True, "bf16": False}))
            trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([row] * steps),
                                 processing_class=tok, callbacks=[clock])
            trainer.train()
            (t_a, s_a), (t_b, s_b) = clock.marks[0], clock.marks[-1]
            result = {"name": name, "path": "unsloth", "length": length, "ok": True,
                      "tokens_per_s": round(length * (s_b - s_a) / (t_b - t_a), 1), "steps_timed": s_b - s_a,
                      "step_s": clock.step_s, "losses": clock.losses,
                      "gradient_checkpointing_arg": getattr(trainer.args, "gradient_checkpointing", None),
                      "attn": getattr(getattr(model, "config", None), "_attn_implementation", None),
                      "versions": env, "wall_s": round(time.perf_counter() - t0, 1)}
            del trainer
        except Exception as exc:  # noqa: BLE001 - an out-of-memory length is a result
            traceback.print_exc()
            result = {"name": name, "path": "unsloth", "length": length, "ok": False,
                      "error": f"{type(exc).__name__}: {str(exc)[:400]}", "wall_s": round(time.perf_counter() - t0, 1)}
        if cuda:
            result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
            result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
        print("RESULT", json.dumps(result), flush=True)
        with (out / "long-unsloth.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")
        if not result["ok"] and "out of memory" in result["error"].lower():
            break


if __name__ == "__main__":
    main()
