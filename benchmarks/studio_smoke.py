"""The real `sft-studio train` and `sft-studio bench` on CUDA, as a user runs them: a random Llama-3.2-1B-sized model
with a chat template, the bundled sample chat data, QLoRA (NF4) and 16-bit LoRA. Checks what the benchmark script
cannot (it drives TRL itself): the studio's own trainer, callbacks, evaluation, probe prompts, checkpoints and
adapter saving with the automatic choices (compiled layers, recomputation inside them, deferred metrics).

    python benchmarks/studio_smoke.py --out OUT

Prints one JSON line per run and exits non-zero when a run fails or does not learn.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def build_model(folder: Path) -> None:
    import torch
    from tiny_models import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer("qwen2_5")
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=len(tok), max_position_embeddings=4096,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def run_file(folder: Path, out: Path, *, four_bit: bool) -> Path:
    from core.config import RunConfig, save_run_config

    c = RunConfig()
    c.model.name_or_path = str(folder)
    c.model.load_in_4bit = four_bit
    c.data.path = str(ROOT / "resources" / "sample_chat.jsonl")
    c.data.eval_fraction = 0.1
    c.training.max_steps = 40 if four_bit or "1b" in str(folder) else 12
    c.training.learning_rate = 1e-3
    c.training.logging_steps = 5
    c.training.save_steps = 20
    c.output_dir = str(out)
    path = out.parent / f"{out.name}.yaml"
    save_run_config(c, path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="/tmp/studio-smoke-1b", help="a saved model folder (built if missing)")
    ap.add_argument("--only", default="qlora,lora16")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(a.model)
    if not (model / "config.json").exists():
        build_model(model)
    failed = False
    for name, four_bit in (("qlora", True), ("lora16", False)):
        if name not in a.only.split(","):
            continue
        run_dir = out / name
        cfg = run_file(model, run_dir, four_bit=four_bit)
        t0 = time.perf_counter()
        train = subprocess.run([sys.executable, "-m", "core.cli", "train", "--config", str(cfg)],
                               capture_output=True, text=True, cwd=ROOT)
        (out / f"{name}-train.log").write_text(train.stdout + train.stderr)
        events = []
        events_file = run_dir / "events.jsonl"
        if events_file.exists():
            events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
        started = next((e for e in events if e.get("type") == "started"), {})
        metrics = [e for e in events if e.get("type") == "metrics"]
        losses = [e["loss"] for e in metrics if "loss" in e]
        speeds = [e["tokens_per_second"] for e in metrics if "tokens_per_second" in e]
        evals = [e for e in metrics if "eval_loss" in e]
        probes = [e for e in events if e.get("type") == "sample"]
        failures = [e for e in events if e.get("type") in ("failed", "warning")]
        bench = subprocess.run([sys.executable, "-m", "core.cli", "bench", "--config", str(cfg), "--steps", "8",
                                "--json"], capture_output=True, text=True, cwd=ROOT)
        (out / f"{name}-bench.log").write_text(bench.stdout + bench.stderr)
        try:
            bench_result = json.loads(bench.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            bench_result = None
        adapter = sorted(p.name for p in (run_dir / "adapter").glob("*")) if (run_dir / "adapter").exists() else []
        result = {
            "run": name, "train_exit": train.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "auto_choices": started.get("auto_choices"), "first_loss": losses[:1], "last_loss": losses[-1:],
            "tokens_per_second": speeds[-3:], "eval_logs": len(evals), "probe_events": len(probes),
            "warnings_or_failure": failures[:3], "adapter_files": adapter,
            "bench_exit": bench.returncode, "bench": bench_result,
        }
        learned = bool(losses) and losses[-1] < losses[0]
        ok = train.returncode == 0 and bench.returncode == 0 and learned and "adapter_model.safetensors" in adapter
        result["ok"] = ok
        failed |= not ok
        print(json.dumps(result), flush=True)
        if not ok:
            print((train.stdout + train.stderr)[-3000:], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
