"""The model library dialog (issue 17), clicked through: local models with fit badges, filter, choose; Hub search,
details, download with progress, Cancel and Resume against the loopback Hub stand-in; offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

BIG = os.urandom(8_000_000)


@pytest.fixture(scope="module")
def hub(tiny_model_factory):
    from hub_server import HubServer, Repo, model_repo_from_folder

    repos = [
        model_repo_from_folder("tiny-org/tiny-chat", tiny_model_factory("qwen2_5"), downloads=500),
        Repo("tiny-org/big-weights", {"config.json": b'{"model_type": "llama"}', "weights.bin": BIG},
             slow={"weights.bin": (64 * 1024, 0.03)}, downloads=20),
    ]
    with HubServer(repos) as server:
        yield server


@pytest.fixture
def library_env(hub, tmp_path, monkeypatch):
    """A Hugging Face cache holding tiny-org/tiny-chat (downloaded by the real code), an LM Studio GGUF, the local Hub."""
    from local_models import write_gguf

    hub.use(monkeypatch, tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    from core.model_hub import download

    download("tiny-org/tiny-chat")
    write_gguf(tmp_path / "home" / ".lmstudio" / "models" / "pub" / "Tiny-GGUF" / "tiny-Q4_K_M.gguf")
    return tmp_path


@pytest.fixture
def session(qtbot):
    from app.session import StudioSession

    s = StudioSession()
    yield s
    qtbot.waitUntil(s.shutdown, timeout=120_000)  # a model load started by choosing may still be importing


@pytest.fixture
def make_dialog(qtbot):
    from app.views.model_library_dialog import ModelLibraryDialog

    made = []

    def make(session, **kwargs):
        dialog = ModelLibraryDialog(session, **kwargs)
        qtbot.addWidget(dialog)
        made.append(dialog)
        return dialog

    yield make
    for dialog in made:
        dialog.shutdown()


def _names(dialog) -> list[str]:
    proxy = dialog.proxy
    return [proxy.index(r, 1).data() for r in range(proxy.rowCount())]


def test_local_models_fit_badges_filter_and_choose(qtbot, library_env, session, make_dialog):
    # choosing changes the session's run config (without loading the model here: that is the page's job, below)
    dialog = make_dialog(session, choose=lambda spec: session.update_config(reload=False, model__name_or_path=spec))
    with qtbot.waitSignal(dialog.listed, timeout=30_000):
        dialog.open_library()
    names = _names(dialog)
    assert "tiny-org/tiny-chat" in names and "pub/Tiny-GGUF/tiny-Q4_K_M.gguf" in names
    with qtbot.waitSignal(dialog.fitsChecked, timeout=180_000) as fits:
        pass
    assert fits.args == [0]
    row = next(r for r, e in enumerate(dialog.model.entries) if e.name == "tiny-org/tiny-chat")
    entry = dialog.model.entries[row]
    assert entry.fit["verdict"] == "fits" and entry.fit["peak"] > 0
    badge = dialog.model.index(row, dialog.model.FIT_COLUMN).data()
    assert badge.startswith("fits · ") and badge.endswith("GiB")

    dialog.filter_edit.setText("tiny chat")
    assert _names(dialog) == ["tiny-org/tiny-chat"]
    dialog.table.selectRow(0)
    assert dialog.use_button.isEnabled() and "tiny-org/tiny-chat" in dialog.detail.text()
    with qtbot.waitSignal(dialog.chosen) as chosen:
        dialog.use_button.click()
    assert chosen.args == ["tiny-org/tiny-chat"]
    assert session.config.model.name_or_path == "tiny-org/tiny-chat" and session.dirty
    from core.model_library import recent_models

    assert recent_models()[0]["spec"] == "tiny-org/tiny-chat"


def test_library_button_sits_beside_the_model_field(qtbot, library_env, session):
    from app.views.params_page import ParamsPage

    page = ParamsPage(session)
    qtbot.addWidget(page)
    calls: list[dict] = []
    session.update_config = lambda reload=True, **changes: calls.append({"reload": reload, **changes})
    editor = page.form.editors["model.name_or_path"]
    assert editor.widget.layout().indexOf(page.library_button) > editor.widget.layout().indexOf(editor.browse_buttons[-1])
    dialog = page.open_library()
    dialog.check_fit = False
    qtbot.waitUntil(lambda: "tiny-org/tiny-chat" in _names(dialog), timeout=30_000)
    assert page.open_library() is dialog  # one dialog: a download keeps running while it is closed
    dialog.filter_edit.setText("tiny-Q4_K_M")
    dialog.table.selectRow(0)
    dialog.use_button.click()
    # through the page, as an edit of the field: the run re-loads (template check, token view) and re-probes (fit)
    assert len(calls) == 1 and calls[0]["reload"] is True
    assert Path(calls[0]["model__name_or_path"]).name == "tiny-Q4_K_M.gguf"
    page.shutdown()


def test_hub_search_download_cancel_and_resume(qtbot, hub, library_env, session, make_dialog):
    chosen: list[str] = []
    dialog = make_dialog(session, check_fit=False, choose=chosen.append)
    dialog.open_library()
    with qtbot.waitSignal(dialog.hubSearched, timeout=30_000):
        dialog.tabs.setCurrentIndex(1)  # checks the Hub, then lists the most downloaded models
    repos = [dialog.results.item(r, 0).text() for r in range(dialog.results.rowCount())]
    assert repos == ["tiny-org/tiny-chat", "tiny-org/big-weights"]
    dialog.hub_search.setText("big")
    with qtbot.waitSignal(dialog.hubSearched, timeout=30_000):
        dialog.search_button.click()
    with qtbot.waitSignal(dialog.detailsShown, timeout=30_000):
        dialog.results.selectRow(0)
    files = {dialog.files_table.item(r, 0).text(): dialog.files_table.item(r, 1).text()
             for r in range(dialog.files_table.rowCount())}
    assert files["weights.bin"] == "8.0 MB" and "8.0 MB" in dialog.details_title.text()

    dialog.download_button.click()
    assert dialog.downloading and dialog.cancel_button.isEnabled() and not dialog.download_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.progress.maximum() == 1000 and dialog.progress.value() > 0, timeout=60_000)
    assert " of 8.0 MB" in dialog.progress_label.text()
    with qtbot.waitSignal(dialog.downloadFinished, timeout=30_000) as cancelled:
        dialog.cancel_button.click()
    assert cancelled.args[0] == 130 and "Cancelled" in dialog.progress_label.text()
    assert dialog.resume_button.isEnabled() and not dialog.use_button.isEnabled()
    kept = [p.stat().st_size for p in (library_env / "hf").rglob("*.part")]
    assert kept and 0 < kept[0] < len(BIG)

    with qtbot.waitSignal(dialog.downloadFinished, timeout=60_000) as finished:
        dialog.resume_button.click()
    assert finished.args[0] == 0, finished.args
    assert (Path(dialog.download_path) / "weights.bin").read_bytes() == BIG
    assert f"bytes={kept[0]}-" in hub.ranges("weights.bin")
    assert dialog.progress.value() == 1000 and dialog.use_button.isEnabled()
    dialog.use_button.click()
    assert chosen == ["tiny-org/big-weights"]


def test_offline_hub_tab_says_so_and_the_local_list_works(qtbot, library_env, session, make_dialog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dialog = make_dialog(session, check_fit=False)
    with qtbot.waitSignal(dialog.listed, timeout=30_000):
        dialog.open_library()
    assert "tiny-org/tiny-chat" in _names(dialog)
    dialog.tabs.setCurrentIndex(1)
    qtbot.waitUntil(lambda: dialog.hub_offline is not None, timeout=30_000)
    assert "offline" in dialog.hub_banner.text().lower() and not dialog.hub_search.isEnabled()
    assert not dialog.search_button.isEnabled()


def test_hub_model_fit_before_download_is_the_fit_check(qtbot, library_env, session, make_dialog, tmp_path):
    """The Hub tab's fit line (from config.json alone) equals the fit check on the downloaded model."""
    from core.config import save_run_config
    from core.model_hub import cached_snapshot
    from core.probe import probe

    dialog = make_dialog(session)
    dialog.tabs.setCurrentIndex(1)
    qtbot.waitUntil(lambda: dialog.results.rowCount() > 0, timeout=30_000)
    with qtbot.waitSignal(dialog.detailsShown, timeout=30_000):
        dialog.results.selectRow(0)  # tiny-org/tiny-chat, downloaded by the fixture
    assert dialog.details.repo_id == "tiny-org/tiny-chat" and dialog.details.config["model_type"] == "llama"
    qtbot.waitUntil(lambda: dialog.hub_fit is not None, timeout=180_000)
    assert "Fit for this run" in dialog.hub_fit_label.text() and "estimated peak" in dialog.hub_fit_label.text()
    run = tmp_path / "run.yaml"
    cfg = session.config
    cfg.model.name_or_path = cached_snapshot("tiny-org/tiny-chat")
    save_run_config(cfg, run)
    expected = probe(str(run))["estimate"]
    assert (dialog.hub_fit["verdict"], dialog.hub_fit["total"]) == (expected["verdict"], expected["total"])
