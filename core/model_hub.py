"""The Hugging Face Hub side of the model library: search, a model's card and files before downloading, and a
download with progress that can be cancelled and resumed.

Everything goes through ``huggingface_hub`` (``HfApi`` for search and metadata, ``get_hf_file_metadata`` and
``http_get`` for the bytes, the standard cache layout, ``snapshot_download`` to link the snapshot), with the token
it finds in its standard places (``HF_TOKEN``, ``hf auth login``); the token is never written anywhere by the studio.

Why the bytes are not fetched by ``snapshot_download`` alone: huggingface_hub 2.x downloads each file into a
process-unique temporary file and deletes it on failure, so a cancelled or dropped download starts that file again
from zero (a 5 GB shard at 90 % is lost). Here each file is appended to ``blobs/<etag>.part`` in the cache with
``http_get(resume_size=…)`` (an HTTP Range request); a cancel, a kill or a network drop leaves a correct prefix that
the next run continues, and the finished blob is checked against its hash (the etag: sha256 for LFS files, the git
blob id otherwise) before it is moved into place. ``snapshot_download`` then links the snapshot and writes the refs
exactly as it does for its own downloads, so ``from_pretrained("org/name")`` and the cache scan find it.

Environment (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``) is read at call time, not at import.
Standard library only at import time.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".part"
CHUNK_SIZE = 1 << 20  # bytes read (and written, and reported) at a time
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


class HubError(Exception):
    """A Hub operation failed; ``kind`` is gated | auth | not_found | offline | network | disk | failed."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind


class DownloadCancelled(Exception):
    """The download was cancelled; what arrived is kept and the next download resumes from it."""


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_reason() -> str | None:
    """Why the Hub must not be contacted (offline mode), or None."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    return None


def hub_status(timeout: float = 2.0) -> str | None:
    """None when the Hub (or the mirror in ``HF_ENDPOINT``) answers; otherwise a sentence saying why not."""
    reason = offline_reason()
    if reason:
        return reason
    endpoint = hub_endpoint()
    scheme, _, rest = endpoint.partition("://")
    host = rest.split("/", 1)[0]
    hostname, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    try:
        with socket.create_connection((hostname, int(port or (443 if scheme == "https" else 80))), timeout=timeout):
            return None
    except OSError as exc:
        return f"the Hugging Face Hub ({host}) cannot be reached: {exc.strerror or exc}"


def _api() -> Any:
    _online()
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint())


def _online() -> None:
    """huggingface_hub reads HF_HUB_OFFLINE when it is imported: make its constant follow the environment now."""
    import huggingface_hub.constants as constants

    constants.HF_HUB_OFFLINE = offline_reason() is not None
    reason = offline_reason()
    if reason:
        raise HubError(f"{reason}: the Hub is not contacted (local models and files still work)", "offline")


def describe_hub_error(exc: BaseException, repo_id: str, repo_type: str = "model") -> HubError:
    """One sentence for a huggingface_hub/httpx error: gated, login, not found, offline, network, disk."""
    if isinstance(exc, HubError):
        return exc
    from huggingface_hub import errors

    endpoint = hub_endpoint()
    page = f"{endpoint}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    login = "log in with `hf auth login` (or set HF_TOKEN)"
    if isinstance(exc, errors.GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its conditions on {page} with your Hugging Face account, then "
                        f"{login} and run the download again", "gated")
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(f"{repo_id}: that revision does not exist on the Hub", "not_found")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(f"{repo_id}: no such {repo_type} on the Hub, or it is private; check the id, and for a "
                        f"private repository {login}", "not_found")
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return HubError(f"{repo_id}: a file of the repository is missing on the Hub ({_first_line(exc)})", "not_found")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError(f"offline mode is on (HF_HUB_OFFLINE=1): cannot download {repo_id}", "offline")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return HubError(f"{repo_id}: the Hub refused access ({status}); {login}", "auth")
        return HubError(f"{repo_id}: the Hub answered {status}: {_first_line(exc)}", "failed")
    if isinstance(exc, errors.LocalEntryNotFoundError) or _is_connection_error(exc):
        return HubError(f"cannot reach the Hugging Face Hub at {endpoint} (offline or blocked?): {_first_line(exc)}",
                        "network")
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return HubError(f"the disk is full while downloading {repo_id}; free space and run the download again (it "
                        "resumes)", "disk")
    return HubError(f"{repo_id}: {type(exc).__name__}: {_first_line(exc)}", "failed")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _is_connection_error(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ConnectError", "TimeoutException", "RemoteProtocolError", "NetworkError", "ConnectionError",
                         "ConnectTimeout", "ReadTimeout"})


# ------------------------------------------------------------------------------------------------------ search


@dataclass
class HubModel:
    repo_id: str
    downloads: int | None = None
    likes: int | None = None
    params: int | None = None
    gated: bool | str | None = None
    pipeline_tag: str | None = None
    library: str | None = None
    license: str | None = None
    updated: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SIZE_FILTERS = {  # label -> the Hub's num_parameters filter
    "any size": None, "< 1B": "max:1B", "1B – 4B": "min:1B,max:4B", "4B – 10B": "min:4B,max:10B",
    "10B – 40B": "min:10B,max:40B", "> 40B": "min:40B",
}


def _params_of(info: Any) -> int | None:
    st = getattr(info, "safetensors", None)
    total = getattr(st, "total", None) if st is not None else None
    return int(total) if isinstance(total, int) else None


def _license_of(info: Any) -> str | None:
    card = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    value = card.get("license") if hasattr(card, "get") else None
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    return str(value) if value else None


def search_models(query: str, *, limit: int = 40, size: str | None = None,
                  task: str | None = "text-generation") -> list[HubModel]:
    """Hub models matching ``query`` (name search), most downloaded first; ``size`` is a num_parameters filter
    such as ``"min:1B,max:4B"`` (see :data:`SIZE_FILTERS`)."""
    api = _api()
    try:
        found = api.list_models(
            search=query or None, filter=task, sort="downloads", limit=limit, num_parameters=size,
            expand=["downloads", "likes", "gated", "safetensors", "pipeline_tag", "library_name", "lastModified",
                    "cardData"],
        )
        out = []
        for info in found:
            updated = getattr(info, "last_modified", None)
            out.append(HubModel(
                repo_id=info.id, downloads=getattr(info, "downloads", None), likes=getattr(info, "likes", None),
                params=_params_of(info), gated=getattr(info, "gated", None),
                pipeline_tag=getattr(info, "pipeline_tag", None), library=getattr(info, "library_name", None),
                license=_license_of(info), updated=updated.date().isoformat() if updated else None,
            ))
        return out
    except Exception as exc:  # noqa: BLE001 - one sentence for the user
        raise describe_hub_error(exc, query or "search") from None


@dataclass
class HubFile:
    path: str
    size: int | None


@dataclass
class HubDetails:
    repo_id: str
    sha: str | None
    files: list[HubFile]
    gated: bool | str | None = None
    license: str | None = None
    params: int | None = None
    model_type: str | None = None
    architecture: str | None = None
    card: str = ""  # the model card's first lines (front matter and markup stripped)
    config: dict[str, Any] | None = None  # config.json (small): the fit check can run before downloading
    cached_path: str | None = None  # the local snapshot when this revision is already downloaded
    repo_type: str = "model"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_size": self.total_size}


def card_excerpt(text: str, lines: int = 12) -> str:
    """The first ``lines`` lines of prose of a model card: front matter, HTML, images and blank runs removed."""
    text = re.sub(r"\A---\s*\n.*?\n---\s*\n", "", text, flags=re.S)
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            if out and out[-1] != "":
                out.append("")
            continue
        if stripped.startswith(("<", "![", "[![")) or stripped.startswith("<!--"):
            continue
        out.append(line)
        if sum(1 for x in out if x) >= lines:
            break
    return "\n".join(out).strip()


def model_details(repo_id: str, *, revision: str | None = None, repo_type: str = "model",
                  card_lines: int = 12) -> HubDetails:
    """Files with sizes, gated flag, licence, parameter count and the card's first lines of a Hub repository,
    before downloading anything (the card is read into memory only; nothing enters the cache)."""
    api = _api()
    try:
        info = api.repo_info(repo_id, revision=revision, repo_type=repo_type, files_metadata=True)
    except Exception as exc:  # noqa: BLE001
        raise describe_hub_error(exc, repo_id, repo_type) from None
    files = [HubFile(s.rfilename, getattr(s, "size", None)) for s in (info.siblings or [])]
    config = getattr(info, "config", None) or {}
    archs = config.get("architectures") or [] if isinstance(config, dict) else []
    details = HubDetails(
        repo_id=repo_id, sha=info.sha, files=files, gated=getattr(info, "gated", None), license=_license_of(info),
        params=_params_of(info), model_type=config.get("model_type") if isinstance(config, dict) else None,
        architecture=archs[0] if archs else None, repo_type=repo_type,
    )
    if any(f.path == "README.md" for f in files):
        details.card = card_excerpt(_read_remote_text(repo_id, "README.md", info.sha, repo_type), card_lines)
    if repo_type == "model" and any(f.path == "config.json" for f in files):
        import json

        try:
            config_json = json.loads(_read_remote_text(repo_id, "config.json", info.sha, repo_type) or "null")
            details.config = config_json if isinstance(config_json, dict) else None
        except ValueError:
            details.config = None
        if details.config is None:  # listed but not readable: gated, or a broken file
            details.extra["config_unreadable"] = True
    details.cached_path = cached_snapshot(repo_id, info.sha, repo_type)
    return details


def _read_remote_text(repo_id: str, filename: str, revision: str | None, repo_type: str,
                      limit: int = 256 * 1024) -> str:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=hub_endpoint())
    try:
        response = get_session().get(url, headers=build_hf_headers(), follow_redirects=True, timeout=10)
        if response.status_code != 200:
            return ""
        return response.content[:limit].decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - the card is a nicety
        return ""


def _storage_folder(repo_id: str, repo_type: str, cache_dir: Path | None = None) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    from core.model_library import hf_hub_cache_dir

    return (cache_dir or hf_hub_cache_dir()) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)


def cached_snapshot(repo_id: str, revision: str | None = None, repo_type: str = "model",
                    cache_dir: Path | None = None) -> str | None:
    """The snapshot folder of ``repo_id`` at ``revision`` (a commit, or a ref such as ``main``) when present."""
    storage = _storage_folder(repo_id, repo_type, cache_dir)
    commit = revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else None
    if commit is None:
        try:
            commit = (storage / "refs" / (revision or "main")).read_text().strip()
        except OSError:
            return None
    folder = storage / "snapshots" / commit
    return str(folder) if folder.is_dir() else None


# ---------------------------------------------------------------------------------------------------- download


@dataclass
class DownloadProgress:
    """One progress report: bytes on disk (resumed ones included) of the bytes the snapshot needs."""

    done: int
    total: int
    speed: float  # bytes/s over the last seconds
    eta: float | None  # seconds
    files_done: int
    files_total: int
    current: str | None = None  # a file being downloaded
    resumed: int = 0  # bytes that were already on disk when this download started

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        from core.model_library import human_size

        eta = f", ETA {format_seconds(self.eta)}" if self.eta is not None else ""
        resumed = f", resumed from {human_size(self.resumed)}" if self.resumed else ""
        return (f"{human_size(self.done)} of {human_size(self.total)} ({self.fraction:.0%}), "
                f"{human_size(int(self.speed))}/s{eta}, {self.files_done}/{self.files_total} files{resumed}")


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class _Tracker:
    """Byte counts per file, shared by the worker threads and the reporting loop."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.lock = threading.Lock()
        self.sizes = sizes
        self.on_disk: dict[str, int] = dict.fromkeys(sizes, 0)
        self.finished: set[str] = set()
        self.active: list[str] = []
        self.transferred = 0  # bytes received by this process
        self.resumed = 0
        self.samples: list[tuple[float, int]] = []

    def set(self, name: str, n: int, resumed: bool = False) -> None:
        with self.lock:
            self.on_disk[name] = n
            if resumed:
                self.resumed += n

    def add(self, name: str, n: int) -> None:
        with self.lock:
            self.on_disk[name] = self.on_disk.get(name, 0) + n
            self.transferred += n

    def finish(self, name: str) -> None:
        with self.lock:
            self.on_disk[name] = self.sizes.get(name) or self.on_disk.get(name, 0)
            self.finished.add(name)
            if name in self.active:
                self.active.remove(name)

    def report(self) -> DownloadProgress:
        now = time.monotonic()
        with self.lock:
            done = sum(self.on_disk.values())
            total = sum(self.sizes.values())
            self.samples.append((now, self.transferred))
            self.samples = [s for s in self.samples if now - s[0] <= 5.0]
            t0, b0 = self.samples[0]
            speed = (self.transferred - b0) / (now - t0) if now - t0 >= 1.0 else 0.0  # no guess from one chunk
            current = self.active[0] if self.active else None
            files_done = len(self.finished)
        eta = (total - done) / speed if speed > 0 and total >= done else None
        return DownloadProgress(done, total, speed, eta, files_done, len(self.sizes), current, self.resumed)


def _counter_class(tracker: _Tracker, name: str, cancel: threading.Event) -> type:
    """A stand-in for the tqdm class huggingface_hub reports a file's bytes to; it also stops the transfer at the
    next chunk once ``cancel`` is set (the bytes written so far stay in the ``.part`` file)."""

    class Counter:
        def __init__(self, *_args: Any, **kwargs: Any) -> None:
            self.n = kwargs.get("initial") or 0
            self.total = kwargs.get("total")

        def update(self, n: int | float | None = 1) -> None:
            if cancel.is_set():
                raise DownloadCancelled()
            self.n += int(n or 0)
            tracker.add(name, int(n or 0))

        def update_transfer(self, _n: int | float | None = 1) -> None:  # network bytes (Xet); disk bytes count
            if cancel.is_set():
                raise DownloadCancelled()

        def __enter__(self) -> Counter:
            return self

        def __exit__(self, *_exc: Any) -> None:
            return None

        def __getattr__(self, _name: str) -> Any:  # refresh, close, set_postfix_str, ...: nothing to show
            return lambda *_a, **_k: None

    return Counter


class _Silent:
    """A tqdm stand-in that shows nothing (the final linking pass of ``snapshot_download`` moves no bytes)."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.n, self.total = 0, None

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *_exc: Any) -> None:
        return None

    def __getattr__(self, _name: str) -> Any:
        return lambda *_a, **_k: None


def _verify(file: Path, etag: str) -> bool:
    """The content matches its etag: sha256 for LFS files, the git blob id for the others (else unknown: True)."""
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        digest = hashlib.sha256()
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        digest = hashlib.sha1(f"blob {file.stat().st_size}\0".encode())
    else:
        return True
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(4 * 2**20), b""):
            digest.update(chunk)
    return digest.hexdigest() == etag


def _download_file(repo_id: str, filename: str, *, commit: str, repo_type: str, storage: Path, tracker: _Tracker,
                   cancel: threading.Event) -> None:
    """Download one file of the snapshot into ``blobs/<etag>``, resuming ``blobs/<etag>.part``."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=commit, endpoint=hub_endpoint())
    meta = get_hf_file_metadata(url)
    if not meta.etag:
        raise HubError(f"{repo_id}/{filename}: the server sent no ETag, so the file cannot be checked", "failed")
    etag = meta.etag
    blob = storage / "blobs" / etag
    if blob.is_file():
        tracker.finish(filename)
        return
    blob.parent.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
    headers = build_hf_headers()
    location = meta.location or url
    if location != url and _host(location) != _host(url):
        headers.pop("authorization", None)  # a signed CDN address: the token stays with the Hub
    lock = storage.parent / ".locks" / storage.name / f"{etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(str(lock)):
        if blob.is_file():  # another process finished it meanwhile
            tracker.finish(filename)
            return
        with open(partial, "r+b" if partial.exists() else "wb") as fh:
            fh.seek(0, os.SEEK_END)
            have = fh.tell()
            if meta.size is not None and have > meta.size:  # not a prefix of this file: start over
                fh.seek(0)
                fh.truncate()
                have = 0
            tracker.set(filename, have, resumed=have > 0)
            if meta.size is None or have < meta.size:
                http_get(location, fh, resume_size=have, headers=headers, expected_size=meta.size,
                         displayed_filename=filename, tqdm_class=_counter_class(tracker, filename, cancel))
        if meta.size is not None and partial.stat().st_size != meta.size:
            raise HubError(f"{repo_id}/{filename}: received {partial.stat().st_size} bytes of {meta.size}; run the "
                           "download again to resume", "network")
        if not _verify(partial, etag):
            partial.unlink(missing_ok=True)
            raise HubError(f"{repo_id}/{filename}: the downloaded bytes do not match the file's hash; the partial "
                           "file was removed, run the download again", "failed")
        os.chmod(partial, 0o644)
        os.replace(partial, blob)
    tracker.finish(filename)


def _host(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).netloc


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    repo_type: str = "model",
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
    max_workers: int = 4,
    interval: float = 0.25,
    allow_patterns: list[str] | None = None,
) -> str:
    """Download ``repo_id`` into the Hugging Face cache and return the snapshot folder. ``progress`` is called
    every ``interval`` seconds from this thread; setting ``cancel`` (or Ctrl+C) raises :class:`DownloadCancelled`
    and keeps what arrived; the next call resumes. Raises :class:`HubError` with one sentence otherwise."""
    cancel = cancel or threading.Event()
    reason = offline_reason()
    if reason:
        found = cached_snapshot(repo_id, revision, repo_type)
        if found:
            return found
        raise HubError(f"{reason}: cannot download {repo_id}, and it is not in the Hugging Face cache", "offline")
    api = _api()
    try:
        info = api.repo_info(repo_id, revision=revision, repo_type=repo_type, files_metadata=True)
    except Exception as exc:  # noqa: BLE001
        raise describe_hub_error(exc, repo_id, repo_type) from None
    commit = info.sha
    if not commit:
        raise HubError(f"{repo_id}: the Hub did not say which commit to download", "failed")
    storage = _storage_folder(repo_id, repo_type)
    siblings = [s for s in (info.siblings or []) if _wanted(s.rfilename, allow_patterns)]
    sizes = {s.rfilename: int(getattr(s, "size", None) or 0) for s in siblings}
    tracker = _Tracker(sizes)
    todo = []
    for s in sorted(siblings, key=lambda s: (sizes[s.rfilename], s.rfilename)):  # small files (config) first
        if (storage / "snapshots" / commit / s.rfilename).exists():
            tracker.finish(s.rfilename)
        else:
            todo.append(s.rfilename)
    errors: list[BaseException] = []
    jobs: queue.Queue[str] = queue.Queue()
    for name in todo:
        jobs.put(name)

    def work() -> None:
        while not cancel.is_set():
            try:
                name = jobs.get_nowait()
            except queue.Empty:
                return
            with tracker.lock:
                tracker.active.append(name)
            try:
                _download_file(repo_id, name, commit=commit, repo_type=repo_type, storage=storage, tracker=tracker,
                               cancel=cancel)
            except DownloadCancelled:
                return
            except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
                errors.append(exc)
                cancel.set()
                return

    # http_get reads the response in DOWNLOAD_CHUNK_SIZE pieces (10 MB): progress, cancel and what a kill keeps on
    # disk move in these steps, so smaller ones make the bar move and Cancel answer at 1 MB/s too
    import huggingface_hub.constants as constants

    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, CHUNK_SIZE)
    threads = [threading.Thread(target=work, name=f"download-{i}", daemon=True)
               for i in range(max(1, min(max_workers, len(todo))))]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            if progress is not None:
                progress(tracker.report())
            for t in threads:
                t.join(timeout=interval / max(1, len(threads)))
    except KeyboardInterrupt:
        cancel.set()
    if cancel.is_set():
        deadline = time.monotonic() + 3.0
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        if errors:
            raise describe_hub_error(errors[0], repo_id, repo_type) from None
        if progress is not None:
            progress(tracker.report())
        raise DownloadCancelled()
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, revision=revision, repo_type=repo_type, endpoint=hub_endpoint(),
                                 cache_dir=str(storage.parent), allow_patterns=allow_patterns, tqdm_class=_Silent)
    except Exception as exc:  # noqa: BLE001
        raise describe_hub_error(exc, repo_id, repo_type) from None
    for name in sizes:
        tracker.finish(name)
    if progress is not None:
        progress(tracker.report())
    return str(path)


def _wanted(name: str, patterns: list[str] | None) -> bool:
    if not patterns:
        return True
    import fnmatch

    return any(fnmatch.fnmatch(name, p) for p in patterns)
