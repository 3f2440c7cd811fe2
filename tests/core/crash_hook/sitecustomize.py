"""Test-only: make one rank of a multi-process run raise at a given step (tests/core/test_distributed.py puts this
folder on PYTHONPATH). Set SFT_TEST_CRASH_RANK and SFT_TEST_CRASH_STEP; nothing happens in other processes."""

import os
import sys

if os.environ.get("SFT_TEST_CRASH_RANK") is not None and os.environ.get("RANK") == os.environ["SFT_TEST_CRASH_RANK"]:
    import importlib.abc

    _STEP = int(os.environ.get("SFT_TEST_CRASH_STEP", "1"))

    def _patch(module):
        original = module.EventCallback.on_step_end

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= _STEP:
                if os.environ.get("SFT_TEST_CRASH_MODE") == "exit":  # a death without a Python error (like a segfault)
                    os._exit(139)
                raise RuntimeError(f"simulated crash on rank {os.environ['RANK']} at step {state.global_step}")
            return original(self, args, state, control, **kwargs)

        module.EventCallback.on_step_end = on_step_end

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "core.training.callbacks":
                return None
            sys.meta_path.remove(self)
            import importlib.util

            spec = importlib.util.find_spec(name)
            exec_module = spec.loader.exec_module

            def patched_exec(module):
                exec_module(module)
                _patch(module)

            spec.loader.exec_module = patched_exec
            return spec

    sys.meta_path.insert(0, _Finder())
