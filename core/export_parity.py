"""Export parity: will the exported model be *prompted* the way training prompted it?

The most common complaint about fine-tuned models run elsewhere (GGUF/Ollama models that answer gibberish or never
stop) is a prompt-format mismatch: the chat template, the end-of-turn token or the BOS token got lost on the way.
After every export :func:`check_hf_export` / :func:`check_gguf_export` compare the export with what training
actually did, taken from the run itself (:func:`training_facts`):

- **chat template**: the template embedded in the export (the saved tokenizer's; GGUF ``tokenizer.chat_template``
  rendered with the GGUF's own bos/eos strings, as llama.cpp and LM Studio do) renders a sample of the run's
  training conversations to the same text as the run's template — and the tokens of those rows mean the same in
  the export's vocabulary;
- **end of turn**: the token training taught the model to emit at the end of an answer (the last non-blank
  trained token of every trained span of the studio's labels) is an end-of-generation token of the export
  (``generation_config.json`` ``eos_token_id`` for transformers/vLLM; GGUF ``eos``/``eot``/``eom`` ids);
- **BOS**: training sequences start with BOS exactly when the export's prompts will (template-written BOS,
  ``tokenizer.ggml.add_bos_token``), with no double BOS;
- **Ollama template** (GGUF): the Modelfile's TEMPLATE/SYSTEM/stop parameters reproduce the same text and stop.

The result is a :class:`ParityReport` (``as_dict()`` for JSON and the app, ``lines()`` for the CLI).

Standard library at import time; transformers and gguf are imported inside the functions.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.local_runners import Modelfile, OllamaTemplate, ollama_name, ollama_template

SAMPLE_ROWS = 24
PROBE_CONVERSATION = [{"role": "user", "content": "Hello! Who are you?"},
                      {"role": "assistant", "content": "I am a helpful assistant."}]


@dataclass
class ParityCheck:
    name: str  # "chat template" | "end of turn" | "BOS" | "Ollama template"
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


@dataclass
class ParityReport:
    """Whether an export is prompted as training prompted it; ``fixed`` lists what the export changed for that."""

    kind: str  # "adapter" | "merged" | "gguf"
    path: str
    checks: list[ParityCheck] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    rows: int = 0  # training rows compared
    source: str = ""  # what the training side was taken from

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def warnings(self) -> list[ParityCheck]:
        return [c for c in self.checks if not c.ok]

    def as_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "ok": self.ok, "rows": self.rows, "source": self.source,
                "checks": [c.as_dict() for c in self.checks], "fixed": list(self.fixed)}

    def lines(self) -> list[str]:
        """Plain-text report (ASCII markers: Windows consoles)."""
        head = ("prompt parity: OK, the export is prompted as training prompted it" if self.ok else
                f"prompt parity: WARNING, {len(self.warnings)} difference(s) from training")
        out = [f"{head} ({self.source})" if self.source else head]
        for c in self.checks:
            out.append(f"  [{'ok' if c.ok else '!!'}] {c.name}: {c.detail}")
            if c.fix and not c.ok:
                out.append(f"       fix: {c.fix}")
        out += [f"  [fixed] {f}" for f in self.fixed]
        return out


# ------------------------------------------------------------------------------------------ training side


@dataclass
class TrainingConversation:
    row: int  # 0-based row of the run's data (-1: the probe conversation)
    messages: list[dict]
    tools: Any
    text: str  # rendered with the run's chat template: what inference has to reproduce
    ids: list[int]  # the training input_ids (may be truncated)


@dataclass
class TrainingFacts:
    """What training did, from a sample of the run's rows built through the studio's pipeline."""

    tokenizer: Any
    template: str | None
    conversations: list[TrainingConversation]
    end_ids: Counter  # last non-blank trained token of each trained span -> count
    first_ids: list[list[int]]  # first two input ids of each sampled row
    text_rows: int  # rows tokenised with the tokenizer's own special tokens (text, string prompt/completion)
    system_prompts: list[str | None]  # per sampled conversation: its system prompt (None: none)
    rows: int
    source: str

    @property
    def bos_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    @property
    def bos_text(self) -> str | None:
        return getattr(self.tokenizer, "bos_token", None)

    @property
    def special_ids(self) -> set[int]:
        ids = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        for i, tok in (getattr(self.tokenizer, "added_tokens_decoder", {}) or {}).items():
            if getattr(tok, "special", False):
                ids.add(int(i))
        return ids

    def end_of_turn(self) -> list[int]:
        """The special tokens training ended answers with, most frequent first."""
        special = self.special_ids
        return [i for i, _ in self.end_ids.most_common() if i in special]

    @property
    def starts_with_bos(self) -> bool | None:
        """True/False when every sampled row did / did not start with BOS; None when mixed or no BOS token."""
        if self.bos_id is None or not self.first_ids:
            return None
        flags = {bool(ids) and ids[0] == self.bos_id for ids in self.first_ids}
        return flags.pop() if len(flags) == 1 else None

    @property
    def double_bos(self) -> bool:
        return self.bos_id is not None and any(ids[:2] == [self.bos_id, self.bos_id] for ids in self.first_ids)

    @property
    def constant_system_prompt(self) -> str | None:
        """The system prompt every sampled conversation used, when they all used the same one."""
        prompts = set(self.system_prompts)
        if len(prompts) == 1:
            only = prompts.pop()
            return only if only else None
        return None

    def name(self, token_id: int) -> str:
        return f"{self.tokenizer.convert_ids_to_tokens(int(token_id))} (id {token_id})"

    def render(self, messages: list[dict], tools: Any = None, template: str | None = None,
               add_generation_prompt: bool = False, **variables: Any) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, chat_template=template or self.template,
                                                  tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  **variables)


def training_facts(run: Any, tokenizer: Any = None, sample: int = SAMPLE_ROWS) -> TrainingFacts:
    """Build up to ``sample`` rows of ``run`` (a :class:`core.export.RunArtifacts`), spread over the data, exactly
    as training built them. Falls back to a probe conversation when the data can no longer be read."""
    if tokenizer is None:
        from core.export import load_run_tokenizer

        tokenizer = load_run_tokenizer(run)
    try:
        from core.pipeline import build_rows, open_run

        data = open_run(run.config, tokenizer=tokenizer)
    except Exception as exc:  # noqa: BLE001 - moved/deleted data, or a template that no longer resolves
        return _probe_facts(tokenizer, f"a probe conversation; the run's data could not be read ({_first_line(exc)})")
    template = data.template.text if data.template is not None else getattr(tokenizer, "chat_template", None)
    present = [i for i, e in enumerate(data.dataset.examples) if e is not None]
    if len(present) > sample:
        step = len(present) / sample
        present = [present[int(k * step)] for k in range(sample)]
    facts = TrainingFacts(tokenizer, template, [], Counter(), [], 0, [], 0, "")
    for result in build_rows(data, present, with_display=False):
        built = result.built
        if built is None or result.dropped is not None:
            continue
        facts.rows += 1
        facts.first_ids.append(list(built.input_ids[:2]))
        if not built.truncated:
            _count_end_tokens(facts, built.input_ids, built.labels)
        example = data.dataset.examples[result.row]
        messages = _messages_of(example)
        if messages is None:
            facts.text_rows += 1
            continue
        try:
            text = facts.render(messages, example.get("tools"))
        except Exception:  # noqa: BLE001 - the builder rendered it; a failure here is reported as a mismatch later
            continue
        facts.conversations.append(TrainingConversation(result.row, messages, example.get("tools"), text,
                                                        list(built.input_ids)))
        system = messages[0].get("content") if messages and messages[0].get("role") == "system" else None
        facts.system_prompts.append(system if isinstance(system, str) else None)
    if facts.rows == 0:
        return _probe_facts(tokenizer, "a probe conversation; no row of the run's data could be built")
    facts.source = f"{facts.rows} training row{'s' if facts.rows != 1 else ''} of {Path(str(run.config.data.path)).name}"
    return facts


def _messages_of(example: dict) -> list[dict] | None:
    if "messages" in example:
        return list(example["messages"])
    if isinstance(example.get("prompt"), list) and isinstance(example.get("completion"), list):
        return list(example["prompt"]) + list(example["completion"])
    return None


def _count_end_tokens(facts: TrainingFacts, ids: list[int], labels: list[int]) -> None:
    spans: list[tuple[int, int]] = []
    start = None
    for k, label in enumerate(labels):
        if label != -100 and start is None:
            start = k
        elif label == -100 and start is not None:
            spans.append((start, k - 1))
            start = None
    if start is not None:
        spans.append((start, len(labels) - 1))
    for s, e in spans:
        k = e
        while k >= s and not facts.tokenizer.decode([ids[k]]).strip():
            k -= 1  # "<|im_end|>\n": the newline after the end-of-turn token is trained too
        if k >= s:
            facts.end_ids[ids[k]] += 1


def _probe_facts(tokenizer: Any, source: str) -> TrainingFacts:
    template = getattr(tokenizer, "chat_template", None)
    facts = TrainingFacts(tokenizer, template, [], Counter(), [], 0, [], 0, source)
    if not template:
        return facts
    try:
        text = facts.render(PROBE_CONVERSATION)
        before = facts.render(PROBE_CONVERSATION[:1], add_generation_prompt=True)
    except Exception:  # noqa: BLE001
        return facts
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    prompt = list(tokenizer(before, add_special_tokens=False)["input_ids"])
    labels = [-100 if k < len(prompt) else t for k, t in enumerate(ids)]
    _count_end_tokens(facts, ids, labels)
    facts.first_ids.append(ids[:2])
    facts.conversations.append(TrainingConversation(-1, PROBE_CONVERSATION, None, text, ids))
    facts.system_prompts.append(None)
    facts.rows = 1
    return facts


# -------------------------------------------------------------------------------------- checks: shared


def _first_difference(a: str, b: str) -> str:
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at character {k}: training {a[max(0, k - 20):k + 30]!r} vs export {b[max(0, k - 20):k + 30]!r}"


def _template_check(facts: TrainingFacts, where: str, template: str | None, render: Any, vocab: Any,
                    fix: str) -> ParityCheck:
    """``render(conversation)`` renders with the export's template; ``vocab(ids)`` returns the first id whose
    token differs between training and export, or None."""
    if not facts.conversations:
        if facts.text_rows:
            return ParityCheck("chat template", True, "the run trained on plain text (no chat template involved)")
        return ParityCheck("chat template", True, "no conversation to compare (" + (facts.source or "no rows") + ")")
    if not template:
        return ParityCheck("chat template", False, f"{where} has no chat template, but training rendered "
                           "conversations with one: runners will format chats their own way", fix)
    for conv in facts.conversations:
        try:
            got = render(conv)
        except Exception as exc:  # noqa: BLE001 - jinja errors of every kind
            return ParityCheck("chat template", False, f"{where}'s chat template fails on training row {conv.row}: "
                               f"{_first_line(exc)}", fix)
        if got != conv.text:
            return ParityCheck("chat template", False, f"{where}'s chat template renders training row {conv.row} "
                               f"differently {_first_difference(conv.text, got)}", fix)
        bad = vocab(conv.ids)
        if bad is not None:
            return ParityCheck("chat template", False, f"token id {bad} of training row {conv.row} is "
                               f"{facts.tokenizer.convert_ids_to_tokens(bad)!r} in training but differs in {where}'s "
                               "vocabulary", "re-export from the run's own tokenizer (adapter/ folder)")
    n = len(facts.conversations)
    return ParityCheck("chat template", True, f"{where}'s chat template renders the {n} training conversation"
                       f"{'s' if n != 1 else ''} to the same text as training")


def _end_of_turn_check(facts: TrainingFacts, stop_ids: set[int] | None, where: str, names: Any, fix: str,
                       fixed: str = "") -> ParityCheck:
    ends = facts.end_of_turn()
    if not ends:
        if not facts.end_ids:
            return ParityCheck("end of turn", True, "no trained answer in the sample")
        last = facts.end_ids.most_common(1)[0][0]
        return ParityCheck("end of turn", False, f"training ended answers with ordinary text ({facts.name(last)}), "
                           "not a special token: the model has not learned to stop and will generate until the "
                           "length limit", "train with a chat template that closes each answer with an end-of-turn "
                           "or EOS token (every built-in template does)")
    shown = ", ".join(facts.name(i) for i in ends)
    if stop_ids is None:
        return ParityCheck("end of turn", True, f"training ended answers with {shown}; {where}'s stop tokens could "
                           "not be read, so this is not verified")
    missing = [i for i in ends if i not in stop_ids]
    if missing:
        stops = ", ".join(names(i) for i in sorted(stop_ids)) or "none"
        return ParityCheck("end of turn", False, f"{where} stops at {stops}, but training ended answers with "
                           f"{', '.join(facts.name(i) for i in missing)}: generation will not stop after the answer",
                           fix)
    detail = f"training ended answers with {shown}, which {where} treats as end of generation"
    return ParityCheck("end of turn", True, detail + (f" ({fixed})" if fixed else ""))


# --------------------------------------------------------------------------------- checks: transformers


def generation_eos_ids(folder: Path) -> set[int] | None:
    """``eos_token_id`` (int or list) of ``generation_config.json``, else of ``config.json``; None when neither
    says."""
    for name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError):
            continue
        if value is None:
            continue
        return {int(v) for v in (value if isinstance(value, list) else [value])}
    return None


def add_end_of_turn_to_generation_config(folder: str | Path, facts: TrainingFacts) -> str:
    """Make ``generate()`` stop where training taught the model to: add the end-of-turn token(s) to
    ``generation_config.json``'s ``eos_token_id`` (written when missing). Returns what changed, or ""."""
    folder = Path(folder)
    ends = facts.end_of_turn()
    current = generation_eos_ids(folder)
    missing = [i for i in ends if current is None or i not in current]
    if not missing:
        return ""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    old = config.get("eos_token_id")
    old_ids = [] if old is None else list(old) if isinstance(old, list) else [old]
    if not old_ids and current:
        old_ids = sorted(current)
    config["eos_token_id"] = [*old_ids, *missing]
    if facts.tokenizer.bos_token_id is not None:
        config.setdefault("bos_token_id", facts.tokenizer.bos_token_id)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    added = ", ".join(facts.name(i) for i in missing)
    return (f"generation_config.json: eos_token_id now {config['eos_token_id']} — added {added}, the token training "
            "ended answers with, so generate() and vLLM stop there")


def base_generation_eos_ids(run: Any) -> tuple[set[int] | None, str]:
    """The EOS ids ``generate()`` uses with the run's base model (an adapter is applied on top of it)."""
    from core.training.models import ModelError, resolve_model_source

    try:
        source = resolve_model_source(run.base_spec, run.run_dir)
    except ModelError:
        return None, "the base model"
    if source.gguf_file:
        meta = read_gguf_metadata(Path(source.path) / source.gguf_file)
        return meta.stop_ids, f"the base model ({source.gguf_file})"
    folder = Path(source.path)
    if folder.is_dir():
        return generation_eos_ids(folder), f"the base model's generation_config ({folder.name})"
    try:
        from transformers import GenerationConfig

        config = GenerationConfig.from_pretrained(source.path, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached
        return None, f"the base model {source.path}"
    value = config.eos_token_id
    if value is None:
        return None, f"the base model {source.path}"
    return {int(v) for v in (value if isinstance(value, list) else [value])}, f"{source.path}'s generation_config"


def check_hf_export(facts: TrainingFacts, folder: str | Path, kind: str, *, stop_ids: set[int] | None = None,
                    stop_where: str = "", fixed: list[str] | None = None) -> ParityReport:
    """Parity of an adapter or merged export folder. ``stop_ids``: the EOS ids generation will use (merged: read
    from the folder when not given; adapter: the base model's, see :func:`base_generation_eos_ids`)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    report = ParityReport(kind, str(folder), rows=facts.rows, source=facts.source, fixed=list(fixed or []))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    where = f"the {kind} export"

    def render(conv: TrainingConversation) -> str:
        return tokenizer.apply_chat_template(conv.messages, tools=conv.tools, chat_template=template, tokenize=False)

    def vocab(ids: list[int]) -> int | None:
        for i in sorted(set(ids)):
            if tokenizer.convert_ids_to_tokens(i) != facts.tokenizer.convert_ids_to_tokens(i):
                return i
        return None

    report.checks.append(_template_check(facts, where, template, render, vocab,
                                         "export again: the run's adapter/ folder carries the training template"))
    if kind == "merged" and stop_ids is None:
        stop_ids, stop_where = generation_eos_ids(folder), "the merged model's generation_config.json"
    end_fix = (f"pass eos_token_id={facts.end_of_turn()} to generate() (and to vLLM's sampling parameters "
               "stop_token_ids); the merged export writes them into generation_config.json")
    report.checks.append(_end_of_turn_check(facts, stop_ids, stop_where or where, _hf_name(tokenizer), end_fix))
    report.checks.append(_hf_bos_check(facts, tokenizer, template, where))
    return report


def _hf_name(tokenizer: Any) -> Any:
    return lambda i: f"{tokenizer.convert_ids_to_tokens(int(i))} (id {i})"


def _adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = list(tokenizer("a")["input_ids"])
    return bool(ids) and ids[0] == bos


def _hf_bos_check(facts: TrainingFacts, tokenizer: Any, template: str | None, where: str) -> ParityCheck:
    if facts.double_bos:
        return ParityCheck("BOS", False, "training sequences started with two BOS tokens (the template writes one and "
                           "the tokenizer added another)", "fix the run's chat template or tokenizer, then retrain")
    bos = facts.bos_text
    if bos is None:
        return ParityCheck("BOS", True, "the tokenizer has no BOS token")
    notes = []
    if facts.text_rows and _adds_bos(tokenizer) != _adds_bos(facts.tokenizer):
        return ParityCheck("BOS", False, f"training {'added' if _adds_bos(facts.tokenizer) else 'did not add'} {bos} "
                           f"to plain-text rows, but {where}'s tokenizer {'does' if _adds_bos(tokenizer) else 'does not'}",
                           "export again from the run's adapter/ folder (its tokenizer files)")
    if facts.conversations:
        start = facts.starts_with_bos
        writes = bool(template) and facts.conversations[0].text.startswith(bos)
        notes.append(f"training conversations {'start' if start else 'do not start'} with {bos}"
                     + (" (written by the chat template)" if writes else ""))
        if writes and _adds_bos(tokenizer):
            notes.append("render with apply_chat_template(..., tokenize=True); tokenising the rendered text again with "
                         "add_special_tokens=True would add a second one")
    if facts.text_rows:
        notes.append(f"plain-text rows {'start' if _adds_bos(tokenizer) else 'do not start'} with {bos}, as in training")
    return ParityCheck("BOS", True, "; ".join(notes) or "matches training")


# ----------------------------------------------------------------------------------------------- checks: GGUF


@dataclass
class GGUFMetadata:
    """The prompt-related metadata of a GGUF file (read with ``gguf.GGUFReader``)."""

    path: Path
    architecture: str | None
    chat_template: str | None
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    eos_ids: list[int]
    add_bos: bool | None
    tensor_count: int
    _tokens: Any = None  # tokenizer.ggml.tokens

    @property
    def stop_ids(self) -> set[int]:
        return {i for i in (self.eos_id, self.eot_id, self.eom_id, *self.eos_ids) if i is not None}

    def token(self, token_id: int | None) -> str | None:
        if token_id is None or self._tokens is None or not 0 <= token_id < len(self._tokens):
            return None
        return self._tokens[token_id]

    def name(self, token_id: int) -> str:
        return f"{self.token(token_id)} (id {token_id})"


def read_gguf_metadata(path: str | Path) -> GGUFMetadata:
    path = Path(path)
    return _read_gguf_metadata(str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)


@functools.lru_cache(maxsize=4)
def _read_gguf_metadata(path: str, mtime: int, size: int) -> GGUFMetadata:
    """Read once per file version with ``gguf.GGUFReader`` (a few seconds for a 49k-token vocabulary: an export
    takes tens of seconds, and a parity check reads the same file several times)."""
    return _read_with_gguf_reader(path)


def _metadata(path: str, value: Any, tensor_count: int, tokens: Any) -> GGUFMetadata:
    def as_int(key: str) -> int | None:
        v = value(key)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    eos_ids = value("tokenizer.ggml.eos_token_ids")
    add_bos = value("tokenizer.ggml.add_bos_token")
    return GGUFMetadata(
        path=Path(path), architecture=value("general.architecture"), chat_template=value("tokenizer.chat_template"),
        bos_id=as_int("tokenizer.ggml.bos_token_id"), eos_id=as_int("tokenizer.ggml.eos_token_id"),
        eot_id=as_int("tokenizer.ggml.eot_token_id"), eom_id=as_int("tokenizer.ggml.eom_token_id"),
        eos_ids=[int(i) for i in eos_ids] if isinstance(eos_ids, list) else [],
        add_bos=bool(add_bos) if isinstance(add_bos, (bool, int)) else None,
        tensor_count=tensor_count, _tokens=tokens)


def _read_with_gguf_reader(path: str) -> GGUFMetadata:
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def value(key: str) -> Any:
        found = reader.fields.get(key)
        if found is None:
            return None
        try:
            return found.contents()
        except Exception:  # noqa: BLE001 - an unexpected type: treat as absent
            return None

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    token_list = _TokenList([bytes(tokens.parts[i]) for i in tokens.data]) if tokens is not None else None
    return _metadata(path, value, len(reader.tensors), token_list)


class _TokenList:
    """Token strings of a GGUF vocabulary, decoded on demand."""

    def __init__(self, raw: list[bytes]) -> None:
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> str:
        return self.raw[i].decode("utf-8", errors="replace")


def gguf_render(facts: TrainingFacts, meta: GGUFMetadata) -> Any:
    """Render messages with the GGUF's chat template and its own BOS/EOS strings (what llama.cpp's --jinja does)."""
    variables = {k: v for k, v in (("bos_token", meta.token(meta.bos_id)), ("eos_token", meta.token(meta.eos_id)))
                 if v is not None}

    def render(messages: list[dict], add_generation_prompt: bool = False, tools: Any = None) -> str:
        return facts.render(messages, tools, meta.chat_template, add_generation_prompt, **variables)

    return render


def gguf_modelfile(facts: TrainingFacts, meta: GGUFMetadata, gguf_name: str, title: str = "") -> Modelfile:
    """The Ollama Modelfile for a GGUF export: a TEMPLATE proven equal to training on the sampled conversations
    (none when the template cannot be expressed), the run's constant system prompt, and stop parameters for the
    end-of-turn tokens (+ the turn-start token, as Ollama's own templates do)."""
    name = ollama_name(title or gguf_name.split(".")[0])
    modelfile = Modelfile(gguf_name, comments=[
        f"{title or gguf_name}: written by SFT Studio with the chat template, system prompt and stop tokens of its "
        "training.",
        f"In this folder: ollama create {name} -f Modelfile && ollama run {name}",
    ])
    template = _ollama_template_for(facts, meta)
    if template is not None:
        ok, _ = _ollama_matches(facts, template, facts.constant_system_prompt, gguf_render(facts, meta))
        modelfile.template = template if ok else None
    modelfile.system = facts.constant_system_prompt
    stops = [facts.tokenizer.convert_ids_to_tokens(i) for i in facts.end_of_turn()]
    if modelfile.template is not None:
        user_prefix = modelfile.template.roles["user"][0]
        for special in sorted(facts.tokenizer.all_special_tokens, key=len, reverse=True):
            if special and user_prefix.startswith(special):
                stops.append(special)
                break
    modelfile.stops = [s for s in dict.fromkeys(stops) if s and '"""' not in s]
    return modelfile


def _ollama_template_for(facts: TrainingFacts, meta: GGUFMetadata) -> OllamaTemplate | None:
    if not meta.chat_template or not facts.conversations:
        return None
    render = gguf_render(facts, meta)
    return ollama_template(lambda msgs, gen: render(msgs, gen), meta.token(meta.bos_id), bool(meta.add_bos))


def _ollama_matches(facts: TrainingFacts, template: OllamaTemplate, system: str | None,
                    render: Any) -> tuple[bool, str]:
    """Whether Ollama, with this template and SYSTEM, sends the model the training text of every sampled
    conversation (whole, and as a prompt up to its last user turn)."""
    checked = 0
    for conv in facts.conversations:
        if conv.tools or not template.supports(conv.messages):
            continue
        messages = conv.messages
        if system and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        expected = conv.text if not template.bos_text else template.bos_text + conv.text.removeprefix(template.bos_text)
        got = template.render(messages)
        if got != expected:
            return False, f"training row {conv.row} {_first_difference(expected, got)}"
        last_user = max((i for i, m in enumerate(conv.messages) if m.get("role") == "user"), default=None)
        if last_user is not None:
            prompt = render(conv.messages[: last_user + 1], True)
            if template.bos_text:
                prompt = template.bos_text + prompt.removeprefix(template.bos_text)
            got = template.render(messages[: len(messages) - len(conv.messages) + last_user + 1])
            if got != prompt:
                return False, f"the prompt of training row {conv.row} {_first_difference(prompt, got)}"
        checked += 1
    if not checked:
        return False, "no sampled conversation can be expressed in an Ollama template (tools or other roles)"
    return True, f"{checked} conversation{'s' if checked != 1 else ''}"


def check_gguf_export(facts: TrainingFacts, gguf_path: str | Path, *, modelfile: Modelfile | None = None,
                      fixed: list[str] | None = None) -> ParityReport:
    """Parity of a GGUF file (and of the Modelfile written next to it)."""
    meta = read_gguf_metadata(gguf_path)
    report = ParityReport("gguf", str(gguf_path), rows=facts.rows, source=facts.source, fixed=list(fixed or []))
    render = gguf_render(facts, meta)

    def vocab(ids: list[int]) -> int | None:
        for i in sorted(set(ids)):
            if meta.token(i) != facts.tokenizer.convert_ids_to_tokens(i):
                return i
        return None

    report.checks.append(_template_check(
        facts, "the GGUF", meta.chat_template, lambda conv: render(conv.messages, False, conv.tools), vocab,
        "export again from the run (the studio writes the training template into the GGUF); with llama.cpp you "
        "can also pass the template file: llama-server --jinja --chat-template-file chat_template.jinja"))
    ends = facts.end_of_turn()
    end_text = facts.tokenizer.convert_ids_to_tokens(ends[0]) if ends else ""
    fix = (f'Ollama: add PARAMETER stop "{end_text}" to the Modelfile (the one written next to the GGUF does); '
           f"llama.cpp: --override-kv tokenizer.ggml.eos_token_id=int:{ends[0] if ends else 0}") if ends else ""
    report.checks.append(_end_of_turn_check(facts, meta.stop_ids, "the GGUF", meta.name, fix))
    report.checks.append(_gguf_bos_check(facts, meta, render))
    if modelfile is not None:
        report.checks.append(_modelfile_check(facts, meta, modelfile, render))
    return report


def _gguf_bos_check(facts: TrainingFacts, meta: GGUFMetadata, render: Any) -> ParityCheck:
    if facts.double_bos:
        return ParityCheck("BOS", False, "training sequences started with two BOS tokens (the template writes one and "
                           "the tokenizer added another)", "fix the run's chat template or tokenizer, then retrain")
    bos = meta.token(meta.bos_id)
    if bos is None or facts.bos_id is None:
        return ParityCheck("BOS", True, "no BOS token")
    add = meta.add_bos
    add_text = ("tokenizer.ggml.add_bos_token is not set (the runner decides)" if add is None else
                f"the GGUF {'adds' if add else 'does not add'} {bos} (tokenizer.ggml.add_bos_token = {str(add).lower()})")
    override = f"llama.cpp: --override-kv tokenizer.ggml.add_bos_token=bool:{'false' if add else 'true'}"
    if facts.conversations and meta.chat_template:
        trained = facts.starts_with_bos
        try:
            writes = render(facts.conversations[0].messages, False, facts.conversations[0].tools).startswith(bos)
        except Exception:  # noqa: BLE001 - the template check reports it
            writes = False
        runtime = writes or bool(add)
        if trained is not None and trained != runtime:
            return ParityCheck("BOS", False, f"training conversations {'start' if trained else 'do not start'} with "
                               f"{bos}, but with the GGUF they {'will' if runtime else 'will not'}: {add_text}, and "
                               f"its template {'writes' if writes else 'does not write'} one", override)
        detail = (f"training conversations {'start' if trained else 'do not start'} with {bos}; {add_text}, "
                  f"its template {'writes' if writes else 'does not write'} one")
        if writes and add:
            detail += " (llama.cpp drops the template's copy when it adds its own; the Modelfile's template leaves it out)"
        return ParityCheck("BOS", True, detail)
    if facts.text_rows:
        trained = _adds_bos(facts.tokenizer)
        if add is not None and bool(add) != trained:
            return ParityCheck("BOS", False, f"training {'added' if trained else 'did not add'} {bos} to text rows, "
                               f"but {add_text}", override)
        return ParityCheck("BOS", True, f"text rows {'start' if trained else 'do not start'} with {bos}; {add_text}")
    return ParityCheck("BOS", True, add_text)


def _modelfile_check(facts: TrainingFacts, meta: GGUFMetadata, modelfile: Modelfile, render: Any) -> ParityCheck:
    ends = [facts.tokenizer.convert_ids_to_tokens(i) for i in facts.end_of_turn()]
    missing = [e for e in ends if e not in modelfile.stops and facts.tokenizer.convert_tokens_to_ids(e)
               not in meta.stop_ids]
    if missing:
        return ParityCheck("Ollama template", False, f"the Modelfile does not stop at {', '.join(missing)}",
                           "".join(f'add PARAMETER stop "{e}" to the Modelfile; ' for e in missing).strip("; "))
    if not facts.conversations:
        return ParityCheck("Ollama template", True, "stop parameters set; no conversation to compare the template on")
    if modelfile.template is None:
        return ParityCheck("Ollama template", False, "the chat template cannot be written as an Ollama template, so "
                           "the Modelfile has no TEMPLATE: Ollama then picks a built-in template only if the GGUF's is "
                           "within 100 edits of one, else it sends the raw text without chat markup",
                           "write a TEMPLATE for this format into the Modelfile by hand and check it with "
                           "`ollama show NAME --template`; llama.cpp and LM Studio use the GGUF's template as is")
    ok, detail = _ollama_matches(facts, modelfile.template, modelfile.system, render)
    if not ok:
        return ParityCheck("Ollama template", False, f"the Modelfile's TEMPLATE differs from training on {detail}",
                           "edit the Modelfile's TEMPLATE")
    system = " with its SYSTEM prompt" if modelfile.system else ""
    return ParityCheck("Ollama template", True, f"the Modelfile's TEMPLATE{system} renders {detail} like training "
                       f"and stops at {', '.join(modelfile.stops) or 'the GGUF end-of-generation tokens'}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
