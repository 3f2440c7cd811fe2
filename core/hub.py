"""The Hugging Face Hub, when it cannot be reached: switch the libraries to offline mode up front, so
loading a cached model or dataset answers in a second instead of retrying for a minute, and an uncached
one fails with a clear message."""

from __future__ import annotations

import functools
import os
import socket
import sys

HUB_HOST = "huggingface.co"


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the Hub (or the mirror in ``HF_ENDPOINT``) opens within ``timeout``."""
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    hostname, _, port = host.partition(":")
    try:
        with socket.create_connection((hostname, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def prefer_offline_when_unreachable() -> bool:
    """Put huggingface_hub / transformers / datasets in offline mode when the Hub cannot be reached.
    Returns True when offline mode is (now) on."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return True
    if hub_reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # Libraries already imported read the variable at import time; update their constants too.
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
    return True
