"""Several training processes through accelerate's launcher (DDP, FSDP2, DeepSpeed ZeRO when installed).

``sft-studio train`` with ``distributed.num_processes > 1`` becomes a thin *wrapper*: it writes ``run.yaml`` and an
accelerate config into the run directory and starts ``python -m accelerate.commands.launch ... -m core.cli train``;
each rank then runs the ordinary :func:`core.training.session.run_training` path. Division of labour:

* the wrapper holds the run-dir lock, reads stdin commands and signals and relays them as files (``STOP`` with the
  reason, ``PAUSE`` while paused) that every rank polls at step boundaries; it reports a failed rank as one
  ``failed`` event (the rank, its message, the tail of its log);
* rank 0 alone writes ``events.jsonl`` / stdout events, ``train.log``, ``run.yaml`` and the adapter; rank N logs to
  ``train.rank{N}.log`` and leaves ``.rank{N}.failure.json`` when it fails;
* the per-step stop/pause decision is collective (an all-reduce in the callback), so no rank waits alone in a
  collective while the others have stopped.

On a machine without GPUs the processes use the gloo backend on the CPU. accelerate's own ``--cpu`` launcher starts
one process (or needs MPI), so for CPU runs the launcher is started in its torchrun mode (``MULTI_GPU``) and each
rank trains with ``use_cpu=True``, which makes accelerate pick ``MULTI_CPU`` / gloo.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

CHILD_ENV = "SFT_STUDIO_DIST_CHILD"
WRAPPER_PID_ENV = "SFT_STUDIO_WRAPPER_PID"
PAUSE_FILE = "PAUSE"
ACCELERATE_CONFIG = "accelerate_config.yaml"
_FAILURE_GLOB = ".rank*.failure.json"


# --------------------------------------------------------------------------- where am I


def wants_launcher(config: Any) -> bool:
    """Whether this run goes through accelerate's launcher (more than one process)."""
    return int(getattr(getattr(config, "distributed", None), "num_processes", 1) or 1) > 1


def in_rank_child() -> bool:
    """True inside a process started by a distributed launcher (ours, or ``accelerate launch`` on a cluster)."""
    if os.environ.get(CHILD_ENV) == "1":
        return True
    try:
        return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_main_rank() -> bool:
    return not in_rank_child() or rank() == 0


def rank_log_name(n: int) -> str:
    return "train.log" if n == 0 else f"train.rank{n}.log"


# --------------------------------------------------------------------------- checks


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def check_distributed(config: Any) -> list[str]:
    """Problems with the ``distributed`` section that the schema's bounds cannot see; each names its key."""
    d = config.distributed
    problems: list[str] = []
    if d.strategy.startswith("deepspeed") and not deepspeed_available():
        problems.append(f"distributed.strategy '{d.strategy}' needs DeepSpeed, which is not installed here "
                        "(pip install deepspeed), or use ddp / fsdp")
    if d.strategy.startswith("deepspeed") and config.training.device == "cpu":
        problems.append(f"distributed.strategy '{d.strategy}' needs GPUs, but training.device is 'cpu'; use ddp or fsdp")
    if d.fsdp_cpu_offload and d.strategy != "fsdp":
        problems.append(f"distributed.fsdp_cpu_offload needs distributed.strategy fsdp, but it is '{d.strategy}'")
    if d.mixed_precision in ("bf16", "fp16") and config.training.device == "cpu":
        problems.append(f"distributed.mixed_precision {d.mixed_precision} needs GPUs, but training.device is 'cpu'")
    if d.mixed_precision != "auto" and config.training.precision != "auto":
        wanted = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}[d.mixed_precision]
        if wanted != config.training.precision:
            problems.append(f"distributed.mixed_precision '{d.mixed_precision}' disagrees with training.precision "
                            f"'{config.training.precision}'; set one of them to auto")
    if wants_launcher(config) and config.model.load_in_4bit and d.strategy != "ddp":
        problems.append(f"model.load_in_4bit (QLoRA) trains with distributed.strategy ddp only, not '{d.strategy}'")
    return problems


def precision_request(config: Any) -> str:
    """The ``training.precision`` the ranks use: ``distributed.mixed_precision`` when it is set, else the former."""
    mp = getattr(getattr(config, "distributed", None), "mixed_precision", "auto")
    if mp == "auto":
        return config.training.precision
    return {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}[mp]


# --------------------------------------------------------------------------- accelerate config and command


def accelerate_config(config: Any, *, num_machines: int = 1) -> dict:
    """accelerate's config file (``accelerate launch --config_file``) for this run.

    ``num_processes`` in the file is the total over all machines (accelerate's meaning); the run file's
    ``distributed.num_processes`` is per machine. The same file serves GPUs and the CPU (see the module docstring);
    accelerate enables FSDP only on GPUs (on the CPU the ranks run as DDP)."""
    d = config.distributed
    per_machine = max(1, d.num_processes)
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_GPU",
        "downcast_bf16": "no",
        "gpu_ids": "all",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": "no" if d.mixed_precision == "auto" else d.mixed_precision,
        "num_machines": num_machines,
        "num_processes": per_machine * num_machines,
        "main_process_port": d.main_process_port,
        "rdzv_backend": "static",
        "same_network": True,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
        # Not "use_cpu: true": accelerate's --cpu launcher starts a single process (or needs mpirun). On the CPU the
        # torchrun launcher is used and every rank trains with use_cpu=True (MULTI_CPU, gloo).
        "use_cpu": False,
    }
    if d.strategy == "fsdp":
        out["distributed_type"] = "FSDP"
        out["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_offload_params": bool(d.fsdp_cpu_offload),
            "fsdp_reshard_after_forward": True,
            # a full state dict gathered on rank 0: the adapter is saved as ordinary PEFT files
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_activation_checkpointing": False,
        }
    elif d.strategy.startswith("deepspeed"):
        out["distributed_type"] = "DEEPSPEED"
        stage = 3 if d.strategy.endswith("3") else 2
        out["deepspeed_config"] = {
            "zero_stage": stage,
            "gradient_accumulation_steps": config.training.gradient_accumulation_steps,
            "gradient_clipping": config.training.max_grad_norm or 1.0,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": False,
            **({"zero3_save_16bit_model": True} if stage == 3 else {}),
        }
    return out


def write_accelerate_config(config: Any, path: Path, *, num_machines: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ("# accelerate config written by SFT Studio for this run (accelerate launch --config_file ...)\n"
            + yaml.safe_dump(accelerate_config(config, num_machines=num_machines), sort_keys=False))
    path.write_text(text, encoding="utf-8")
    return path


def launcher_command(accelerate_config_path: str | Path, run_yaml: str | Path, extra_args: list[str] | None = None,
                     *, python: str | None = None) -> list[str]:
    """``python -m accelerate.commands.launch --config_file CFG -m core.cli train --config RUN.yaml ...``."""
    return [python or sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config_path),
            "-m", "core.cli", "train", "--config", str(run_yaml), *(extra_args or [])]


def _cpu_only(config: Any) -> bool:
    if config.training.device == "cpu":
        return True
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


# --------------------------------------------------------------------------- the ranks' side


class SilentEvents:
    """The event writer of ranks other than 0: the same interface, writes nothing."""

    path = None
    stream = None

    def emit(self, type: str, **fields: Any) -> dict:
        return {"type": type, **fields}

    def close(self) -> None:
        pass


def redirect_rank_output(output_dir: Path, n: int) -> None:
    """Point this rank's stdout and stderr (file descriptors, so native output too) at ``train.rank{N}.log``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir / rank_log_name(n), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def exit_with_launcher(poll_s: float = 1.0) -> threading.Thread:
    """End this rank when its launcher or our wrapper is gone. torchrun starts each rank in a session of its own, so
    the app's kill of the trainer's process group (or a ``kill -9`` of the wrapper) would otherwise leave the ranks
    training as orphans that hold the GPUs."""
    parent = os.getppid()
    try:
        wrapper = int(os.environ.get(WRAPPER_PID_ENV, "0"))
    except ValueError:
        wrapper = 0

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent or (wrapper and not alive(wrapper)):
                print("the launcher or the sft-studio wrapper is gone: this rank ends", file=sys.stderr, flush=True)
                os._exit(137)

    thread = threading.Thread(target=watch, name="sft-studio-launcher-watch", daemon=True)
    thread.start()
    return thread


def record_rank_failure(output_dir: Path, n: int, kind: str, message: str, hint: str = "") -> None:
    """Leave ``.rank{N}.failure.json`` for the wrapper (the first one written is the root cause)."""
    try:
        (output_dir / f".rank{n}.failure.json").write_text(json.dumps(
            {"rank": n, "kind": kind, "message": message, "hint": hint, "time": time.time(), "pid": os.getpid()}),
            encoding="utf-8")
    except OSError:
        pass


def agree(flags: list[bool], device: Any = None) -> list[bool]:
    """All ranks' flags OR-ed together (an all-reduce MAX); the flags unchanged outside a process group."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return flags
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flags
    backend = dist.get_backend()
    dev = device if device is not None and backend != "gloo" else "cpu"
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


# --------------------------------------------------------------------------- the wrapper


def _failures(output_dir: Path, since: float) -> list[dict]:
    found = []
    for path in output_dir.glob(_FAILURE_GLOB):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("time", 0) >= since:
            found.append(data)
    return sorted(found, key=lambda d: d.get("time", 0))


def _rank_from_launcher(lines: list[str]) -> int | None:
    """The failing rank named in torchrun's "Root Cause" report, for a rank that died without a word (a signal)."""
    text = "\n".join(lines)
    at = text.rfind("Root Cause")
    match = re.search(r"rank\s*:\s*(\d+)", text[at:] if at >= 0 else text)
    return int(match.group(1)) if match else None


def _exit_signal(lines: list[str]) -> str:
    text = "\n".join(lines)
    match = re.search(r"exitcode\s*:\s*(-?\d+)", text[text.rfind("Root Cause"):] if "Root Cause" in text else text)
    return match.group(1) if match else ""


def run_launcher(config: Any, *, resume: bool, control: Any, events: Any, log_tail: Any,
                 exit_codes: dict[str, int]) -> int:
    """The wrapper: launch ``config.distributed.num_processes`` ranks and supervise them until they end.

    ``control`` is the wrapper's :class:`~core.training.control.TrainingControl` (stdin, signals); its state is
    relayed to the ranks as ``STOP`` / ``PAUSE`` files. Returns the exit status; a failure is reported as one
    ``failed`` event naming the rank."""
    from core.config import save_run_config
    from core.launch import child_environment

    out = Path(config.output_dir)
    (out / PAUSE_FILE).unlink(missing_ok=True)
    for stale in out.glob(_FAILURE_GLOB):
        stale.unlink(missing_ok=True)
    run_yaml = save_run_config(config, out / "run.yaml")
    cpu = _cpu_only(config)
    cfg_path = write_accelerate_config(config, out / ACCELERATE_CONFIG)
    cmd = launcher_command(cfg_path, run_yaml, ["--resume"] if resume else [])
    env = child_environment()
    env[CHILD_ENV] = "1"
    env[WRAPPER_PID_ENV] = str(os.getpid())
    if cpu:
        # two cores shared by N ranks: one intra-op thread each unless the user says otherwise
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.distributed.num_processes)))
    started = time.time()
    if cpu and config.distributed.strategy != "ddp":
        events.emit("warning", kind="distributed", message=(
            f"distributed.strategy {config.distributed.strategy} needs GPUs: accelerate trains CPU processes as plain "
            "data parallel (DDP, gloo); the accelerate config keeps the setting for a GPU machine"))
    print(f"launching {config.distributed.num_processes} processes ({config.distributed.strategy}"
          f"{', CPU/gloo' if cpu else ''}): {shlex.join(cmd)}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=None, stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        events.emit("failed", kind="crash", message=f"the launcher could not be started: {exc}", hint=shlex.join(cmd),
                    rank=None, log_tail=[])
        return exit_codes.get("crash", 1)
    tail: collections.deque[str] = collections.deque(maxlen=200)

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", errors="replace")
            tail.append(line.rstrip("\n"))
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    pumper = threading.Thread(target=pump, name="launcher-stderr", daemon=True)
    pumper.start()
    relayed_stop, relayed_pause = False, False
    try:
        while proc.poll() is None:
            if control.stop_requested and not relayed_stop:
                (out / "STOP").write_text(control.stop_reason or "stop", encoding="utf-8")
                relayed_stop = True
            paused = control.pause_requested
            if paused != relayed_pause:
                if paused:
                    (out / PAUSE_FILE).write_text("pause", encoding="utf-8")
                else:
                    (out / PAUSE_FILE).unlink(missing_ok=True)
                relayed_pause = paused
            time.sleep(0.2)
    except (KeyboardInterrupt, SystemExit):  # a second signal: end the ranks now, without saving
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        (out / PAUSE_FILE).unlink(missing_ok=True)
    code = proc.wait()
    pumper.join(timeout=5)
    if code == 0:
        return 0
    failures = _failures(out, started)
    launcher_lines = list(tail)
    named = _rank_from_launcher(launcher_lines)
    by_rank = {int(f["rank"]): f for f in failures}
    # A rank that dies without a Python error (a signal, os._exit) leaves no failure file; the others then fail on
    # the broken connection, and their files would hide the real cause. torchrun names the first rank it saw die.
    if failures and (named is None or named in by_rank):
        first = failures[0]
        n, kind = int(first["rank"]), first.get("kind", "crash")
        message = f"rank {n} failed: {first.get('message', '')}"
        hint = first.get("hint", "")
    else:
        n = named
        kind = "crash"
        sig = _exit_signal(launcher_lines)
        message = (f"rank {n} died (exit code {sig})" if n is not None else
                   f"the launcher failed with exit code {code}")
        hint = "the rank's log shows where it stopped; `sft-studio train --resume` continues from the last checkpoint"
    others = sorted(r for r in by_rank if r != n)
    rank_tail = log_tail(out / rank_log_name(n)) if n is not None else []
    events.emit("failed", kind=kind, message=message, hint=hint, rank=n, log_tail=rank_tail or launcher_lines[-30:],
                other_ranks_failed=others)
    print(f"error: {message}" + (f"\nhint: {hint}" if hint else ""), file=sys.stderr)
    return exit_codes.get(kind, 1)


# --------------------------------------------------------------------------- export for a cluster


def export_cluster(config: Any, out_dir: Path) -> list[Path]:
    """Write ``run.yaml``, ``accelerate_config.yaml``, ``launch.sh`` and a Slurm template ``train.slurm``."""
    from core.config import save_run_config

    out_dir.mkdir(parents=True, exist_ok=True)
    per_node = max(1, config.distributed.num_processes)
    port = config.distributed.main_process_port
    run_yaml = save_run_config(config, out_dir / "run.yaml")
    cfg = write_accelerate_config(config, out_dir / ACCELERATE_CONFIG)
    train = "-m core.cli train --config run.yaml"
    launch = out_dir / "launch.sh"
    launch.write_text(f"""#!/usr/bin/env bash
# SFT Studio run, exported for a multi-GPU machine. One machine:   ./launch.sh
# Several machines: run it on each with NUM_MACHINES, MACHINE_RANK (0 on the first) and MAIN_PROCESS_IP (the first
# machine's address) set. Paths in run.yaml (model, data, output_dir) must exist there; edit them if they differ.
# Needs the sft-studio package (and accelerate) installed in the Python that runs `accelerate`.
set -euo pipefail
cd "$(dirname "$0")"
NUM_MACHINES="${{NUM_MACHINES:-1}}"
MACHINE_RANK="${{MACHINE_RANK:-0}}"
MAIN_PROCESS_IP="${{MAIN_PROCESS_IP:-127.0.0.1}}"
GPUS_PER_MACHINE="${{GPUS_PER_MACHINE:-{per_node}}}"
accelerate launch --config_file {ACCELERATE_CONFIG} \\
  --num_machines "$NUM_MACHINES" --num_processes $(( NUM_MACHINES * GPUS_PER_MACHINE )) \\
  --machine_rank "$MACHINE_RANK" --main_process_ip "$MAIN_PROCESS_IP" --main_process_port {port} \\
  {train} "$@"
""", encoding="utf-8")
    launch.chmod(0o755)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(config.output_dir).name or "run")
    slurm = out_dir / "train.slurm"
    slurm.write_text(f"""#!/bin/bash
# SFT Studio run as a Slurm batch job (template: adjust partition, time and resources). Submit with:
#   sbatch --nodes=2 train.slurm
#SBATCH --job-name=sft-studio-{name}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={per_node}
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
cd "${{SLURM_SUBMIT_DIR:-$(pwd)}}"
export GPUS_PER_NODE={per_node}
# the first node of the allocation hosts the rendezvous
export MAIN_PROCESS_IP="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
# one task per node; each starts GPUS_PER_NODE ranks through accelerate
srun --kill-on-bad-exit=1 bash -c 'accelerate launch --config_file {ACCELERATE_CONFIG} \\
  --num_machines $SLURM_NNODES --num_processes $(( SLURM_NNODES * GPUS_PER_NODE )) \\
  --machine_rank $SLURM_NODEID --main_process_ip $MAIN_PROCESS_IP --main_process_port {port} \\
  --rdzv_backend static \\
  {train}'
""", encoding="utf-8")
    return [run_yaml, cfg, launch, slurm]
