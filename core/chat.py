"""Chat with a run: base and tuned answers from ONE loaded base model (the tuned answer runs with the adapter,
the base answer inside ``model.disable_adapter()``), streamed token by token.

The engine runs in a child process (``sft-studio chat-worker``) so the GUI never imports torch or touches CUDA.
Protocol — one JSON object per line:

parent → worker on stdin::

    {"cmd": "load", "run_dir": "runs/x", "which": ["base", "tuned"], "device": "auto", "dtype": "auto"}
    {"cmd": "generate", "id": "7", "which": "tuned", "messages": [{"role": "user", "content": "Hi"}],
     "max_new_tokens": 256, "temperature": 0.7, "top_p": 0.9, "greedy": false}
    {"cmd": "stop", "id": "7"}          # id omitted: stop whatever is generating
    {"cmd": "quit"}                     # end of input (the parent died) means quit too

worker → parent on stdout, each line prefixed with :data:`core.training.events.MARKER`::

    {"type": "ready"}                                    once, at start
    {"type": "loaded", "which": [...], "base_model": ..., "device": ..., "dtype": ..., "seconds": ...}
    {"type": "token", "id": ..., "which": ..., "text": "<delta>", "n_tokens": ...}
    {"type": "done", "id": ..., "which": ..., "text": ..., "n_tokens": ..., "seconds": ..., "finish_reason": ...}
    {"type": "stopped", "id": ..., "which": ..., "text": <partial>, "n_tokens": ..., "seconds": ...}
    {"type": "error", "id": <or null>, "message": ...}

Generate commands run one at a time in the order received (a side-by-side answer is two commands); ``stop``
acts at once, also on a command still waiting in the queue. :class:`ChatClient` is a small stdlib-only
client for tests and headless use; the GUI may use it or drive the same protocol through a ``QProcess``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from core.training.events import MARKER, EventWriter, parse_event_line

DEFAULTS = {"max_new_tokens": 256, "temperature": 0.7, "top_p": 0.9, "greedy": False}
MAX_NEW_TOKENS_LIMIT = 32768


def chat_worker_argv(module: str = "core.cli") -> list[str]:
    """The command line that starts the worker with this interpreter (``python -m core.cli chat-worker``)."""
    return [sys.executable, "-m", module, "chat-worker"]


# --------------------------------------------------------------------------------------------- the worker


def _make_streamer(tokenizer: Any) -> Any:
    """A ``TextIteratorStreamer`` that hands on every token's text at once (transformers' default waits for a
    whole word), holding back only an incomplete UTF-8 character."""
    from transformers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):
        n_tokens = 0

        def put(self, value: Any) -> None:
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.n_tokens += value.numel()
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):
                return
            delta = text[self.print_len:]
            self.print_len = len(text)
            if delta:
                self.on_finalized_text(delta)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.text_queue.put((text, self.n_tokens), timeout=self.timeout)  # the count as of this text
            if stream_end:
                self.text_queue.put(self.stop_signal, timeout=self.timeout)

    return TokenStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _flag_criteria(flag: threading.Event) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class FlagCriteria(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            return torch.full((input_ids.shape[0],), flag.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([FlagCriteria()])


class ChatWorker:
    """The loop of the chat child process: reads commands from ``stdin``, writes events to ``stdout``."""

    def __init__(self, stdin: IO[str], stdout: IO[str]) -> None:
        self._stdin = stdin
        self._events = EventWriter(None, stream=stdout)
        self._emit_lock = threading.Lock()
        self._commands: queue.Queue[dict | None] = queue.Queue()
        self._state_lock = threading.Lock()
        self._current_id: Any = None
        self._current_flag: threading.Event | None = None
        self._stop_requested: set[str] = set()
        self._quitting = threading.Event()
        self.models: dict[str, Any] = {}  # which -> model
        self.shared_adapter = False  # True: "base" is the tuned PeftModel with its adapter disabled
        self.tokenizer: Any = None
        self.device = "cpu"

    def emit(self, type: str, **fields: Any) -> None:
        with self._emit_lock:
            self._events.emit(type, **fields)

    # -- input ------------------------------------------------------------------------------------------

    def _read_commands(self) -> None:
        while True:
            try:
                line = self._stdin.readline()
            except (OSError, ValueError):
                line = ""
            if not line:
                break  # EOF: the parent went away
            line = line.strip()
            if not line:
                continue
            try:
                command = json.loads(line)
                if not isinstance(command, dict) or not isinstance(command.get("cmd"), str):
                    raise ValueError("expected an object with a 'cmd' field")
            except ValueError as exc:
                self.emit("error", id=None, message=f"unreadable command ({exc}): {line[:200]}")
                continue
            if command["cmd"] == "stop":
                self._stop(command.get("id"))
            elif command["cmd"] == "quit":
                break
            else:
                self._commands.put(command)
        self._quitting.set()
        self._stop(None)
        self._commands.put(None)

    def _stop(self, request_id: Any) -> None:
        with self._state_lock:
            if self._current_flag is not None and (request_id is None or str(request_id) == str(self._current_id)):
                self._current_flag.set()
            elif request_id is not None:
                self._stop_requested.add(str(request_id))

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve commands until ``quit`` or end of input; returns the exit code (0)."""
        threading.Thread(target=self._read_commands, name="chat-stdin", daemon=True).start()
        self.emit("ready", pid=os.getpid())
        while True:
            command = self._commands.get()
            if command is None or self._quitting.is_set():
                break
            try:
                if command["cmd"] == "load":
                    self._load(command)
                elif command["cmd"] == "generate":
                    self._generate(command)
                else:
                    self.emit("error", id=command.get("id"), message=f"unknown command {command['cmd']!r}")
            except Exception as exc:  # noqa: BLE001 - report and keep serving
                self.emit("error", id=command.get("id"), message=_describe(exc))
        self.emit("bye")
        return 0

    def _load(self, command: dict) -> None:
        from core.export import (
            inference_device,
            inference_dtype,
            load_run_model,
            load_run_tokenizer,
            open_run_dir,
        )

        started = time.time()
        which = command.get("which") or ["base", "tuned"]
        if isinstance(which, str):
            which = [which]
        if not set(which) <= {"base", "tuned"} or not which:
            raise ValueError(f"load: 'which' must list base and/or tuned, not {which!r}")
        if not command.get("run_dir"):
            raise ValueError("load: 'run_dir' is required")
        run = open_run_dir(command["run_dir"])
        device = inference_device(command.get("device", "auto"))
        dtype = inference_dtype(device, command.get("dtype", "auto"))
        self.models, self.tokenizer, self.shared_adapter = {}, None, False
        self.tokenizer = load_run_tokenizer(run)
        if "tuned" in which:
            self.models["tuned"] = load_run_model(run, device, dtype, with_adapter=True)
            if "base" in which:
                if run.is_full_model:
                    self.models["base"] = load_run_model(run, device, dtype, with_adapter=False)
                else:
                    self.models["base"] = self.models["tuned"]
                    self.shared_adapter = True
        else:
            self.models["base"] = load_run_model(run, device, dtype, with_adapter=False)
        self.device = device
        self.emit("loaded", which=sorted(self.models), run_dir=str(run.run_dir), base_model=run.base_spec,
                  device=device, dtype=dtype, chat_template=bool(self.tokenizer.chat_template),
                  seconds=round(time.time() - started, 2))

    def _prompt(self, messages: Sequence[dict]) -> Any:
        tokenizer = self.tokenizer
        if tokenizer.chat_template:
            encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_dict=True,
                                                    return_tensors="pt")
        else:  # a base model without a chat template: a plain transcript
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
            encoded = tokenizer(text, return_tensors="pt")
        return {k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}

    def _generate(self, command: dict) -> None:
        request_id = command.get("id")
        which = command.get("which", "tuned")
        if which not in self.models:
            loaded = ", ".join(sorted(self.models)) or "nothing"
            raise ValueError(f"generate: '{which}' is not loaded ({loaded} is); send a load command first")
        messages = command.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError("generate: 'messages' must be a non-empty list of {role, content} objects")
        with self._state_lock:
            if request_id is not None and str(request_id) in self._stop_requested:
                self._stop_requested.discard(str(request_id))
                self.emit("stopped", id=request_id, which=which, text="", n_tokens=0, seconds=0.0)
                return
            flag = threading.Event()
            self._current_id, self._current_flag = request_id, flag
        try:
            self._run_generation(command, request_id, which, messages, flag)
        finally:
            with self._state_lock:
                self._current_id, self._current_flag = None, None

    def _run_generation(self, command: dict, request_id: Any, which: str, messages: list, flag: threading.Event) -> None:
        import torch

        options = {**DEFAULTS, **{k: command[k] for k in DEFAULTS if k in command}}
        max_new = int(options["max_new_tokens"])
        if not 1 <= max_new <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"generate: max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}")
        temperature, top_p = float(options["temperature"]), float(options["top_p"])
        greedy = bool(options["greedy"]) or temperature <= 0
        model = self.models[which]
        tokenizer = self.tokenizer
        inputs = self._prompt(messages)
        prompt_len = int(inputs["input_ids"].shape[1])
        streamer = _make_streamer(tokenizer)
        eos = _eos_ids(tokenizer, model)
        kwargs: dict[str, Any] = {
            **inputs, "max_new_tokens": max_new, "streamer": streamer, "stopping_criteria": _flag_criteria(flag),
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": eos, "do_sample": not greedy,
        }
        if not greedy:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if command.get("min_new_tokens"):
            kwargs["min_new_tokens"] = int(command["min_new_tokens"])
        if command.get("seed") is not None:
            torch.manual_seed(int(command["seed"]))
        outcome: dict[str, Any] = {}
        use_base = which == "base" and self.shared_adapter

        def work() -> None:
            try:
                with torch.inference_mode(), (model.disable_adapter() if use_base else contextlib.nullcontext()):
                    outcome["ids"] = model.generate(**kwargs)[0, prompt_len:].tolist()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = exc
                streamer.end()

        started = time.time()
        thread = threading.Thread(target=work, name="chat-generate", daemon=True)
        thread.start()
        for delta, count in streamer:
            if delta:
                self.emit("token", id=request_id, which=which, text=delta, n_tokens=count)
        thread.join()
        seconds = round(time.time() - started, 3)
        if "error" in outcome:
            raise outcome["error"]
        ids = outcome.get("ids", [])
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if flag.is_set():
            self.emit("stopped", id=request_id, which=which, text=text, n_tokens=len(ids), seconds=seconds)
            return
        finish = "eos" if ids and ids[-1] in eos else "length"
        self.emit("done", id=request_id, which=which, text=text, n_tokens=len(ids), seconds=seconds,
                  tokens_per_second=round(len(ids) / seconds, 1) if seconds > 0 else None, finish_reason=finish)


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for i in value if isinstance(value, list) else [value]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return ids


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
    if "out of memory" in text.lower():
        return f"out of memory: {text}. Use a smaller max_new_tokens, or close other programs using the GPU."
    return text


def run_chat_worker(stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """Entry point of ``sft-studio chat-worker``: events go to the real stdout; anything libraries print goes
    to stderr so that it cannot break the event stream."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = stdout or sys.stdout
    if stdout is None:
        sys.stdout = sys.stderr
    try:
        return ChatWorker(stdin or sys.stdin, out).run()
    finally:
        if stdout is None:
            sys.stdout = out


# --------------------------------------------------------------------------------------------- a client


class ChatClient:
    """Starts a chat worker and talks to it (stdlib only: safe in the GUI process)."""

    def __init__(self, argv: Sequence[str] | None = None, cwd: str | os.PathLike[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            list(argv or chat_worker_argv()), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, cwd=cwd, env=env, encoding="utf-8",
        )
        self.events: queue.Queue[dict | None] = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = parse_event_line(line.rstrip("\n"))
            if event is not None:
                self.events.put(event)
        self.events.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()

    def next_event(self, timeout: float = 60.0) -> dict | None:
        """The next event; None when the worker has exited. Raises ``queue.Empty`` on timeout."""
        return self.events.get(timeout=timeout)

    def wait_for(self, *types: str, timeout: float = 120.0) -> tuple[dict, list[dict]]:
        """Read events until one of ``types`` (or an error) arrives; returns it and everything seen before."""
        seen: list[dict] = []
        deadline = time.time() + timeout
        while True:
            event = self.next_event(max(0.01, deadline - time.time()))
            if event is None:
                raise RuntimeError("the chat worker exited:\n" + "\n".join(list(self.stderr_tail)[-20:]))
            if event["type"] in types or event["type"] == "error":
                return event, seen
            seen.append(event)

    def close(self, timeout: float = 30.0) -> int:
        """Send ``quit`` and wait for the worker to exit; returns its exit code."""
        with contextlib.suppress(OSError, ValueError):
            self.send("quit")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


__all__ = ["MARKER", "ChatClient", "ChatWorker", "chat_worker_argv", "run_chat_worker"]
