"""The chat worker as the GUI runs it: a child process speaking JSON lines, streaming tokens, answering base
and tuned from one loaded model, stopping mid-answer and exiting cleanly."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from core.chat import ChatClient

ROOT = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, "-m", "core.export_cli", "chat-worker"]
MESSAGES = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_factory) -> Path:
    from test_export import make_trained_run

    return make_trained_run(tmp_path_factory, tiny_model_factory)


def test_chat_worker_streams_compares_and_stops(run_dir):
    client = ChatClient(WORKER, cwd=ROOT)
    try:
        ready, _ = client.wait_for("ready", timeout=60)
        assert ready["type"] == "ready"
        client.send("generate", id="early", which="tuned", messages=MESSAGES)
        error, _ = client.wait_for("done", timeout=60)
        assert error["type"] == "error" and error["id"] == "early" and "load" in error["message"]

        client.send("load", run_dir=str(run_dir), which=["base", "tuned"], device="cpu")
        loaded, _ = client.wait_for("loaded", timeout=120)
        assert loaded["type"] == "loaded", loaded
        assert loaded["which"] == ["base", "tuned"] and loaded["chat_template"] and loaded["dtype"] == "fp32"

        answers = {}
        for which in ("tuned", "base"):
            client.send("generate", id=which, which=which, messages=MESSAGES, max_new_tokens=24, min_new_tokens=6,
                        greedy=True)
            done, seen = client.wait_for("done", timeout=60)
            assert done["type"] == "done", done
            tokens = [e for e in seen if e["type"] == "token"]
            assert len(tokens) > 1 and all(e["id"] == which and e["which"] == which for e in tokens)
            assert "".join(e["text"] for e in tokens) == done["text"]
            assert 6 <= done["n_tokens"] <= 24 and done["seconds"] >= 0
            answers[which] = done["text"]
        assert answers["base"] != answers["tuned"]  # the adapter is off for "base", on for "tuned"

        client.send("generate", id="long", which="tuned", messages=MESSAGES, max_new_tokens=20000,
                    min_new_tokens=20000, temperature=0.7, top_p=0.9)
        first, _ = client.wait_for("token", timeout=60)
        assert first["type"] == "token" and first["id"] == "long"
        client.send("stop", id="long")
        stopped, _ = client.wait_for("stopped", "done", timeout=60)
        assert stopped["type"] == "stopped" and stopped["id"] == "long" and 0 < stopped["n_tokens"] < 20000

        client.send("stop", id="queued")  # a stop that arrives before its generate command
        client.send("generate", id="queued", which="base", messages=MESSAGES)
        stopped, _ = client.wait_for("stopped", "done", timeout=60)
        assert stopped["type"] == "stopped" and stopped["n_tokens"] == 0
    finally:
        code = client.close(timeout=60)
    assert code == 0, "\n".join(client.stderr_tail)


def test_end_of_input_ends_the_worker():
    """A GUI that dies closes the pipe: the worker must exit on its own (and it starts without torch)."""
    client = ChatClient(WORKER, cwd=ROOT)
    client.wait_for("ready", timeout=60)
    assert client.proc.stdin is not None
    client.proc.stdin.close()
    assert client.proc.wait(timeout=30) == 0


def test_chat_worker_subcommand_is_registered():
    from core.export_cli import add_export_parsers, cmd_chat_worker

    parser = argparse.ArgumentParser()
    add_export_parsers(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["chat-worker"]).handler is cmd_chat_worker
