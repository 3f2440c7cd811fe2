"""Two runs pointed at the same output directory: the second is refused before it writes anything."""

from __future__ import annotations

import subprocess
import sys

from core.training.events import read_events
from core.training.rundir import RunDirBusy, RunDirLock


def test_lock_refuses_a_second_holder_and_vanishes_with_the_process(tmp_path):
    with RunDirLock(tmp_path):
        try:
            RunDirLock(tmp_path).acquire()
        except RunDirBusy as exc:
            assert "another training run is using this output_dir" in str(exc) and "pid" in str(exc)
        else:
            raise AssertionError("second lock was granted")
    RunDirLock(tmp_path).acquire().release()  # free again once released
    # a process that dies holding the lock (kill -9) leaves nothing stale behind
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from core.training.rundir import RunDirLock; "
                               f"lock = RunDirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        RunDirLock(tmp_path).acquire()
        raise AssertionError("lock granted while another process holds it")
    except RunDirBusy:
        pass
    holder.kill()
    holder.wait()
    RunDirLock(tmp_path).acquire().release()


def test_cli_train_into_a_busy_run_dir_exits_2_and_writes_nothing(tmp_path):
    from core.cli import main

    out = tmp_path / "run"
    (tmp_path / "run.yaml").write_text(f"output_dir: {out}\n")
    out.mkdir()
    (out / "events.jsonl").write_text('{"type": "started"}\n')
    with RunDirLock(out):
        assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 2
    assert read_events(out / "events.jsonl") == [{"type": "started"}]
    assert not (out / "run.yaml").exists()
