"""Test-only fault injection for ``sft-studio train`` children (never imported by production code).

Put this folder first on the child's ``PYTHONPATH`` and set ``SFT_STUDIO_FAULT``; Python imports this module at
start-up. Without the variable it does nothing. Faults are patched in when the library that owns the hooked function
is first imported (an import hook), so start-up stays as fast as an ordinary run and every ``from x import y`` made
later sees the patched function.

``SFT_STUDIO_FAULT`` is ``ACTION@WHERE[:N]``:

=====================  ==============================================================================================
``kill@step:N``        SIGKILL itself in the middle of optimizer step N (after forward and backward, before the
                       optimizer step)
``kill@checkpoint:N``  SIGKILL itself while checkpoint-N is half-written (weights and optimizer saved, RNG and
                       trainer state not)
``kill@adapter``       SIGKILL itself while the final adapter is being written (half of the weights file on disk)
``enospc@checkpoint:N`` the first file written into checkpoint-N fails with ``OSError(ENOSPC)`` after half of it
                       reached the disk (what a full disk does)
``eacces@checkpoint:N`` the first file written into checkpoint-N fails with ``PermissionError(EACCES)``
``oom@step:N``         ``torch.OutOfMemoryError`` raised inside optimizer step N (the type CUDA raises)
=====================  ==============================================================================================
"""

from __future__ import annotations

import errno
import importlib.abc
import os
import signal
import sys

FAULT = os.environ.get("SFT_STUDIO_FAULT", "").strip()


def _announce(what: str) -> None:
    sys.stderr.write(f"@@fault@@ {what}\n")
    sys.stderr.flush()


def _die(what: str) -> None:
    _announce(f"kill -9 {what}")
    os.kill(os.getpid(), signal.SIGKILL)


def _half_write(path: object) -> None:
    """A killed or failed write leaves a partial file behind."""
    with open(os.fspath(path), "wb") as fh:
        fh.write(b"\x00" * 64)


def _parse(spec: str) -> tuple[str, str, int | None]:
    action, _, where = spec.partition("@")
    where, _, n = where.partition(":")
    return action, where, int(n) if n else None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, patch) -> None:
        self._inner, self._patch = inner, patch

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        self._patch(module)

    def __getattr__(self, name: str):  # get_source, get_resource_reader, ... of the real loader
        return getattr(self._inner, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` right after ``name`` is first imported."""

    def __init__(self, patches: dict) -> None:
        self.patches = patches

    def find_spec(self, name, path, target=None):
        if name not in self.patches:
            return None
        patch = self.patches.pop(name)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


def _install(spec: str) -> None:
    action, where, n = _parse(spec)
    state = {"fired": False}

    def in_dir(path: object, match) -> bool:
        return match(os.path.basename(os.path.dirname(os.path.abspath(os.fspath(path)))))

    def on_write(path: object, real) -> None:
        """Called before each checkpoint/adapter file write; may fail it or kill the process."""
        if state["fired"]:
            return
        if where == "checkpoint" and in_dir(path, lambda d: d == f"checkpoint-{n}"):
            name = os.path.basename(os.fspath(path))
            if action == "kill" and name.startswith("rng_state"):
                state["fired"] = True
                _die(f"while writing {path}")
            elif action == "enospc":
                state["fired"] = True
                _half_write(path)
                _announce(f"disk full at {path}")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
            elif action == "eacces":
                state["fired"] = True
                _announce(f"permission denied at {path}")
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        elif where == "adapter" and action == "kill" and in_dir(path, lambda d: d.startswith("adapter.tmp-")):
            state["fired"] = True
            _half_write(path)
            _die(f"while writing {path}")

    def patch_torch(torch) -> None:
        real = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)):
                on_write(f, real)
            return real(obj, f, *args, **kwargs)

        torch.save = save

    def patch_safetensors(st) -> None:
        real = st.save_file

        def save_file(tensors, filename, *args, **kwargs):
            on_write(filename, real)
            return real(tensors, filename, *args, **kwargs)

        st.save_file = save_file

    def patch_trainer(module) -> None:
        real = module.Trainer.training_step  # TRL's SFTTrainer.training_step ends in this one

        def training_step(self, model, inputs, *args, **kwargs):
            step = self.state.global_step + 1  # the optimizer step in progress
            if where == "step" and step == n and not state["fired"]:
                state["fired"] = True
                if action == "oom":
                    import torch

                    _announce(f"out of memory in step {step}")
                    raise torch.OutOfMemoryError(
                        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB "
                        "of which 1.06 GiB is free. (injected by tests/hardening/fault_injection)")
                if action == "kill":
                    real(self, model, inputs, *args, **kwargs)  # forward and backward ran, the optimizer has not
                    _die(f"in the middle of step {step}")
            return real(self, model, inputs, *args, **kwargs)

        module.Trainer.training_step = training_step

    sys.meta_path.insert(0, _AfterImport({
        "torch": patch_torch, "safetensors.torch": patch_safetensors, "transformers.trainer": patch_trainer,
    }))
    _announce(f"armed {spec}")


if FAULT:
    _install(FAULT)
