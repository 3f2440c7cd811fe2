"""Test-only stand-in for the desktop app, to kill it with SIGKILL while it supervises a trainer.

``python app_stand_in.py watch -- ARGS...`` (the process the test starts) makes itself a child subreaper (Linux),
starts ``app_stand_in.py app -- ARGS...`` and prints one JSON line ``{"app": PID, "trainer": PID}`` once the trainer
has reported training progress. The test then ``kill -9``s the app. The trainer, orphaned, is re-parented to this
watcher, which reaps it and prints ``{"trainer_exit": CODE}`` (so the test sees the trainer's real exit status).

``app`` mode does what the app's supervisor does: starts ``python -m core.cli train ARGS... --from-app`` with its
stdin and stdout on pipes (stderr to the file named by ``SFT_STUDIO_TRAINER_STDERR``) and keeps reading the events
until it is killed.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

MARKER = "@@sft-studio@@ "
PR_SET_CHILD_SUBREAPER = 36


def app(args: list[str]) -> None:
    with open(os.environ["SFT_STUDIO_TRAINER_STDERR"], "w") as err:
        trainer = subprocess.Popen([sys.executable, "-m", "core.cli", "train", *args, "--from-app"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
    announced = False
    for line in trainer.stdout:  # keep draining so the trainer never blocks on a full pipe
        if not announced and line.startswith(MARKER) and json.loads(line[len(MARKER):]).get("type") == "progress" \
                and json.loads(line[len(MARKER):]).get("step", 0) >= 1:
            print(json.dumps({"app": os.getpid(), "trainer": trainer.pid}), flush=True)
            announced = True
    trainer.wait()  # only reached if the trainer ends before the app is killed


def watch(args: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    stand_in = subprocess.Popen([sys.executable, __file__, "app", "--", *args], stdout=subprocess.PIPE, text=True)
    line = stand_in.stdout.readline()
    print(line.strip() or json.dumps({"error": "the app stand-in ended before the trainer made progress"}), flush=True)
    if not line:
        return
    trainer = json.loads(line)["trainer"]
    stand_in.wait()  # until the test kills it; the trainer is then our child
    _, status = os.waitpid(trainer, 0)
    print(json.dumps({"trainer_exit": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[3:]
    {"app": app, "watch": watch}[mode](rest)
