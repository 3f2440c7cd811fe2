"""Does the studio's fast path learn what plain TRL learns? (issue 18, item 4)

Same data, same initial weights, same seed, same hyperparameters: N steps of plain TRL (``SFTTrainer`` as a user
runs it: SFTConfig defaults, padded batches, SDPA, gradient checkpointing) and of ``sft-studio train`` (the real
CLI, which on CUDA picks compiled decoder layers, padding-free batches with the ``sdpa_varlen`` kernel, deferred
metrics, bf16 LoRA inputs, and for QLoRA recomputation inside the compiled layers). Two plain-TRL seeds measure
the run-to-run noise.

    python benchmarks/learning_parity.py --out OUT [--models qwen,llama8b] [--steps 300 | qwen=300,llama8b=200]
        [--runs plain-A,plain-B,studio-A] [--extra-runs qwen=plain-A2+studio-B] [--lr 1e-3] [--tiny]

On the lent GPU machine (no trl/datasets/bitsandbytes there): run ../shared/gpu/fetch-wheels.sh here, carry
``.whl`` and start the command with its pip line. Results and how they were run: benchmarks/RESULTS.md, "Learning
parity (issue 18.4)".

The task is synthetic and needs the prompt: chat rows "copy/reverse/sort/map: s1 s2 … sn" whose answer is the
sequence copied, reversed, sorted or mapped through a fixed random table of the 36 symbols; n = 3…40, so rows
vary in length (padding-free matters); loss only on the answer (the studio builds the labels; plain TRL is given
the very same ``input_ids``/``labels``). Models: random weights of the real architectures
(benchmarks/architectures.py), saved once and loaded by every run; a tiny BPE tokenizer with the model family's
chat template (tests/tiny_models.py). Hyperparameters (both paths): LoRA r16 α32 all-linear dropout 0, batch 8,
accumulation 1, lr 1e-3, 10 warm-up steps then linear decay, max_grad_norm 1, weight decay 0, logging every 10
steps (and step 1), one evaluation on the held-out rows after the last step.

All runs start at once as separate processes on the one GPU (small batches leave it mostly idle), so wall times
here are not speed measurements. ``--tiny`` runs a 2-layer model on the CPU to check the script itself (there
the studio takes its CPU path: no compile, no padding-free). Writes OUT/log lines, OUT/results.json and
OUT/runs.tgz (each run's log, the studio's events.jsonl and train.log).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.architectures import LLAMA_3_1_8B, QWEN2_5_0_5B  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024, "tie_word_embeddings": False,
        "initializer_range": 0.2}
MODELS = {  # key -> (architecture, tokenizer family of tests/tiny_models.py, 4-bit)
    "qwen": (QWEN2_5_0_5B, "qwen2_5", False),
    "llama8b": (LLAMA_3_1_8B, "llama3_1", True),
}
SYMBOLS = list("abcdefghijklmnopqrstuvwxyz0123456789")
HYPER = dict(lr=1e-3, warmup=10.0, batch=8, logging_steps=10, max_length=1024, r=16, alpha=32)


# ------------------------------------------------------------------------------------------------------- data


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    table_rng = random.Random(12345)  # the lookup table is the same for every split
    values = SYMBOLS[:]
    table_rng.shuffle(values)
    table = dict(zip(SYMBOLS, values, strict=True))
    rows = []
    for _ in range(n):
        task = rng.choice(("copy", "reverse", "sort", "map"))
        seq = [rng.choice(SYMBOLS) for _ in range(rng.randint(3, 40))]
        answer = {"copy": seq, "reverse": seq[::-1], "sort": sorted(seq), "map": [table[s] for s in seq]}[task]
        rows.append({"messages": [{"role": "user", "content": f"{task}: {' '.join(seq)}"},
                                  {"role": "assistant", "content": " ".join(answer)}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def prepare_model(key: str, folder: Path, tiny: bool, device: str, seed: int = 1234) -> None:
    """Random weights of the real architecture (bf16 on CUDA), saved once; every run loads this folder."""
    if (folder / "config.json").exists():
        return
    import torch
    from tiny_models import build_tokenizer
    from transformers import AutoModelForCausalLM

    from core.training.memory import load_model_config

    arch, family, _ = MODELS[key]
    tok = build_tokenizer(family)
    arch = dict(TINY if tiny else arch)
    assert len(tok) <= arch["vocab_size"]
    arch.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = load_model_config(arch)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp, max_shard_size="5GB")
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    print(f"saved random {key} weights to {folder} in {time.perf_counter() - t0:.0f}s", flush=True)


def run_config(model_dir: Path, data_dir: Path, out_dir: Path, *, four_bit: bool, steps: int, seed: int):
    from core.config import RunConfig

    c = RunConfig()
    c.model.name_or_path = str(model_dir)
    c.model.load_in_4bit = four_bit
    c.data.path = str(data_dir / "train.jsonl")
    c.data.eval_path = str(data_dir / "eval.jsonl")
    c.data.max_length = HYPER["max_length"]
    c.lora.r, c.lora.lora_alpha, c.lora.lora_dropout, c.lora.target_modules = HYPER["r"], HYPER["alpha"], 0.0, "all-linear"
    t = c.training
    t.max_steps, t.learning_rate, t.warmup_steps = steps, HYPER["lr"], HYPER["warmup"]
    t.per_device_train_batch_size, t.gradient_accumulation_steps = HYPER["batch"], 1
    t.logging_steps, t.save_steps, t.eval_steps, t.seed = HYPER["logging_steps"], steps, steps, seed
    t.lr_scheduler_type, t.weight_decay, t.max_grad_norm = "linear", 0.0, 1.0
    c.output_dir = str(out_dir)
    return c


# ------------------------------------------------------------------------------------------ plain TRL (child)


def plain_trl(config_path: Path, out_json: Path) -> None:
    """Plain TRL on the rows the studio builds for this run file: SFTConfig defaults apart from the shared
    hyperparameters, the model from the saved folder (bf16, SDPA; NF4 + double quant + bf16 compute for 4-bit)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from core.config import load_run_config
    from core.pipeline import build_training_rows, open_run

    c = load_run_config(config_path)
    run = open_run(c)
    rows = build_training_rows(run)
    assert not rows.dropped, rows.dropped[:3]
    cuda = torch.cuda.is_available()
    kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32, "attn_implementation": "sdpa"}
    if c.model.load_in_4bit and cuda:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(c.model.name_or_path, **kwargs)
    t = c.training
    args = SFTConfig(
        output_dir=str(Path(c.output_dir) / "checkpoints"), max_steps=t.max_steps, learning_rate=t.learning_rate,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, logging_steps=t.logging_steps,
        logging_first_step=True, save_strategy="no", eval_strategy="steps", eval_steps=t.eval_steps, seed=t.seed,
        warmup_steps=t.warmup_steps, lr_scheduler_type=t.lr_scheduler_type, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, max_length=c.data.max_length, report_to="none", disable_tqdm=True,
        **({} if cuda else {"use_cpu": True, "bf16": False}))
    peft = LoraConfig(r=c.lora.r, lora_alpha=c.lora.lora_alpha, lora_dropout=c.lora.lora_dropout,
                      target_modules=c.lora.target_modules, task_type="CAUSAL_LM")

    def ds(pairs):
        return Dataset.from_dict({"input_ids": [p[0] for p in pairs], "labels": [p[1] for p in pairs]})

    class Echo(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            print("PARITY_LOG " + json.dumps({"step": state.global_step, **(logs or {})}), flush=True)

    trainer = SFTTrainer(model=model, args=args, train_dataset=ds(rows.train), eval_dataset=ds(rows.eval),
                         processing_class=run.tokenizer, peft_config=peft, callbacks=[Echo()])
    print(f"plain TRL: {len(rows.train)} train rows, {len(rows.eval)} eval rows, gradient_checkpointing="
          f"{args.gradient_checkpointing}, attn={model.config._attn_implementation}", flush=True)
    t0 = time.perf_counter()
    trainer.train()
    out = {"log_history": trainer.state.log_history, "train_s": round(time.perf_counter() - t0, 1)}
    if cuda:
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out_json.write_text(json.dumps(out))


# --------------------------------------------------------------------------------------------------- driver


def studio_history(run_dir: Path) -> list[dict]:
    """The studio run's logs, from its events.jsonl (what the app and `sft-studio` record)."""
    events = run_dir / "events.jsonl"
    if not events.exists():
        return []
    out = []
    for line in events.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("type") == "metrics":
            out.append(e)
        elif e.get("type") == "started":
            out.append({"auto_choices": e.get("auto_choices"), "gradient_checkpointing": e.get("gradient_checkpointing")})
    return out


def plain_history(log_path: Path) -> list[dict]:
    out = []
    if log_path.exists():
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("PARITY_LOG "):
                out.append(json.loads(line[len("PARITY_LOG "):]))
    return out


def curves(history: list[dict]) -> tuple[dict[int, float], float | None]:
    losses = {int(h["step"]): float(h["loss"]) for h in history if "loss" in h and "step" in h}
    evals = [float(h["eval_loss"]) for h in history if "eval_loss" in h]
    return losses, (evals[-1] if evals else None)


def compare(a: dict[int, float], b: dict[int, float]) -> dict:
    steps = sorted(set(a) & set(b))
    if not steps:
        return {"steps": 0}
    diffs = [(abs(a[s] - b[s]), s) for s in steps]
    signed = [a[s] - b[s] for s in steps]
    late = [d for d, s in diffs if s >= 50]
    worst = max(diffs)
    return {"steps": len(steps), "last_step": steps[-1], "max_abs": round(worst[0], 4), "at_step": worst[1],
            "mean_abs": round(sum(d for d, _ in diffs) / len(diffs), 4),
            "mean_signed": round(sum(signed) / len(signed), 4),
            "max_abs_from_step_50": round(max(late), 4) if late else None,
            "max_rel": round(max(abs(a[s] - b[s]) / max(abs(b[s]), 1e-9) for s in steps), 4)}


def environment(device: str) -> dict:
    import importlib.metadata as md

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "triton",
                "liger-kernel", "flash-attn"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    if device == "cuda":
        import torch

        p = torch.cuda.get_device_properties(0)
        env["device"] = f"{p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs"
        env["cuda"] = torch.version.cuda
    return env


class Child:
    def __init__(self, name: str, cmd: list[str], log: Path, env: dict):
        self.name, self.log, self.t0 = name, log, time.perf_counter()
        self.fh = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     env=env, start_new_session=True)
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()
        self.code = None
        self.seconds = None

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.fh.write(line)
            self.fh.flush()
            if line.startswith("PARITY_LOG ") or " auto: " in line or "Error" in line or "error:" in line \
                    or "Traceback" in line or "step " in line and "/" in line and "loss=" in line:
                print(f"[{self.name} {time.perf_counter() - self.t0:5.0f}s] {line.rstrip()[:400]}", flush=True)

    def finish(self, timeout: float) -> None:
        try:
            self.code = self.proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the process group this script started for this run
            self.proc.wait()
            self.code = "killed (deadline or another run failed)"
        self.thread.join(timeout=5)
        self.fh.close()
        self.seconds = round(time.perf_counter() - self.t0, 1)
        print(f"[{self.name}] exit {self.code} after {self.seconds}s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "parity-out"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "learning-parity"),
                    help="models, data and run folders (kept between calls on a warm machine)")
    ap.add_argument("--models", default="qwen,llama8b")
    ap.add_argument("--runs", default="plain-A,plain-B,studio-A",
                    help="PATH-SEED for every model; a digit after the seed letter repeats that seed (plain-A2)")
    ap.add_argument("--extra-runs", default="", help="runs of one model only: qwen=plain-A2+studio-B,llama8b=…")
    ap.add_argument("--steps", default="300", help="steps for every model, or qwen=300,llama8b=200")
    ap.add_argument("--seeds", default="1,2", help="seed A, seed B")
    ap.add_argument("--train-rows", type=int, default=4000)
    ap.add_argument("--eval-rows", type=int, default=256, help="a multiple of the batch (8): every eval batch full")
    ap.add_argument("--deadline", type=float, default=560, help="seconds after start at which runs are stopped")
    ap.add_argument("--lr", type=float, default=HYPER["lr"], help="peak learning rate of every run")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--child-plain", nargs=2, metavar=("RUN_YAML", "OUT_JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_plain:
        plain_trl(Path(a.child_plain[0]), Path(a.child_plain[1]))
        return 0

    t_start = time.perf_counter()
    HYPER["lr"] = a.lr
    import torch

    from core.config import save_run_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env_info = environment(device)
    print("ENV " + json.dumps(env_info), flush=True)
    data_dir = work / "data"
    data_dir.mkdir(exist_ok=True)
    write_jsonl(data_dir / "train.jsonl", make_rows(a.train_rows, seed=0))
    write_jsonl(data_dir / "eval.jsonl", make_rows(a.eval_rows, seed=1))
    seeds = dict(zip(("A", "B"), (int(s) for s in a.seeds.split(",")), strict=True))
    steps_for = {}
    for part in a.steps.split(","):
        key, _, value = part.rpartition("=")
        if key:
            steps_for[key] = int(value)
        else:
            steps_for = {k: int(value) for k in MODELS} | steps_for
    models = [m for m in a.models.split(",") if m]
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false",
                     PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    children: dict[str, Child] = {}
    plan: dict[str, dict] = {}
    for key in models:  # the small model first: its runs train while the large one is saved
        folder = work / f"model-{key}{'-tiny' if a.tiny else ''}"
        prepare_model(key, folder, a.tiny, device)
        four_bit = MODELS[key][2] and device == "cuda"
        extra = dict(part.split("=", 1) for part in a.extra_runs.split(",") if part)
        for run in a.runs.split(",") + [r for r in extra.get(key, "").split("+") if r]:
            path, _, seed_name = run.partition("-")
            seed_name = seed_name.rstrip("0123456789")  # plain-A2: a second run of seed A
            name = f"{key}-{run}"
            run_dir = work / "runs" / name
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            cfg = run_config(folder, data_dir, run_dir, four_bit=four_bit, steps=steps_for[key], seed=seeds[seed_name])
            yaml_path = work / "runs" / f"{name}.yaml"
            save_run_config(cfg, yaml_path)
            if path == "plain":
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child-plain", str(yaml_path),
                       str(logs / f"{name}.json")]
            else:
                cmd = [sys.executable, "-m", "core.cli", "train", "--config", str(yaml_path)]
            plan[name] = {"model": key, "path": path, "seed": seeds[seed_name], "steps": steps_for[key],
                          "started_s": round(time.perf_counter() - t_start, 1),
                          "four_bit": four_bit, "run_dir": str(run_dir)}
            children[name] = Child(name, cmd, logs / f"{name}.log", child_env)
    # wait for all; a run that fails stops the others (no device time spent on a comparison that cannot be made)
    while any(c.proc.poll() is None for c in children.values()):
        if time.perf_counter() - t_start > a.deadline:
            break
        if any(c.proc.poll() not in (None, 0) for c in children.values()):
            print("a run failed: stopping the others", flush=True)
            break
        time.sleep(2)
    for name, child in children.items():
        child.finish(0 if child.proc.poll() is None else 5)
        plan[name].update(exit=child.code, seconds=child.seconds)

    # ------------------------------------------------------------------------------------------- summary
    results = {"env": env_info, "hyper": HYPER, "seeds": seeds, "tiny": a.tiny, "runs": {}, "comparisons": {}}
    for name, info in plan.items():
        hist = plain_history(logs / f"{name}.log") if info["path"] == "plain" else studio_history(Path(info["run_dir"]))
        losses, eval_loss = curves(hist)
        extra = {}
        if info["path"] == "plain" and (logs / f"{name}.json").exists():
            extra = {k: v for k, v in json.loads((logs / f"{name}.json").read_text()).items() if k != "log_history"}
        started = next((h for h in hist if "auto_choices" in h), {})
        peaks = [h.get("gpu_peak_gib") for h in hist if "loss" in h]
        results["runs"][name] = {**info, **extra, "losses": losses, "eval_loss": eval_loss,
                                 "grad_norms": {int(h["step"]): h["grad_norm"] for h in hist if "grad_norm" in h},
                                 "auto_choices": started.get("auto_choices"),
                                 "gradient_checkpointing": started.get("gradient_checkpointing"),
                                 "memory_logged": [p for p in peaks if p is not None][-1:]}
    print("\nSUMMARY", flush=True)
    for key in models:
        r = results["runs"]
        comp = {}
        for x, y in (("studio-A", "plain-A"), ("studio-B", "plain-B"), ("plain-B", "plain-A"),
                     ("plain-A2", "plain-A"), ("studio-B", "studio-A")):
            rx, ry = r.get(f"{key}-{x}"), r.get(f"{key}-{y}")
            if not (rx and ry):
                continue
            label = f"{x}_vs_{y}".replace("-", "_")
            comp[label] = compare(rx["losses"], ry["losses"])
            if rx["eval_loss"] and ry["eval_loss"]:
                comp[label]["eval_ratio"] = round(rx["eval_loss"] / ry["eval_loss"], 5)
        results["comparisons"][key] = comp
        print(f"== {key}", flush=True)
        for label, value in comp.items():
            print(f"   {label}: {json.dumps(value)}", flush=True)
        names = [n for n in r if r[n]["model"] == key]
        steps = sorted(set().union(*(r[n]["losses"] for n in names))) if names else []
        print("step  " + "  ".join(f"{n.split('-', 1)[1]:>10}" for n in names), flush=True)
        for s in steps:
            print(f"{s:>4}  " + "  ".join(f"{r[n]['losses'].get(s, float('nan')):>10.4f}" for n in names), flush=True)
        print("eval  " + "  ".join(f"{(r[n]['eval_loss'] or float('nan')):>10.4f}" for n in names), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "env.json").write_text(json.dumps(env_info, indent=1))
    with tarfile.open(out / "runs.tgz", "w:gz") as tar:
        for p in sorted(logs.iterdir()):
            tar.add(p, arcname=f"logs/{p.name}")
        for name, info in plan.items():
            for fname in ("events.jsonl", "train.log", "run.yaml"):
                p = Path(info["run_dir"]) / fname
                if p.exists():
                    tar.add(p, arcname=f"{name}/{fname}")
    print(f"total {time.perf_counter() - t_start:.0f}s", flush=True)
    return 0 if all(c.code == 0 for c in children.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
