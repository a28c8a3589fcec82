"""A learner's session in a real browser: JupyterLab on 127.0.0.1, driven by Playwright with the system Chromium.

Notebooks 00→03 run headless first (smoke profile), or, under ``make test``, the smoke run nbval has just executed
is copied (``COURSE_BROWSER_FROM_RUN=runs/nbval``: the same notebooks, not run twice); then, in JupyterLab, the test
steps through 04_prompt_flow_chat with Shift+Enter as a learner would, types two questions into the chat box, reads
the answers from the page, runs the rest of the notebook and saves it. It also opens every notebook and checks
that each image it shows has loaded. Screenshots go to ``runs/screenshots`` (``make screenshots`` writes
them into ``images/`` for the README and notebooks).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from phi3course import flow, processes
from phi3course.chat import EMPTY_ANSWER
from phi3course.endpoint import free_port
from phi3course.paths import course_root
from phi3course.rundir import RunDir
from phi3course.tools import runner
from test_browser_setup import chromium

ROOT = course_root()
PROFILE = os.environ.get("COURSE_BROWSER_PROFILE", "smoke")  # `make screenshots` uses local: real answers
CHAT_NOTEBOOK = "04_prompt_flow_chat.ipynb"
QUESTIONS = ["Who leads the Quillmere Institute?", "And where is it based?"]
# `make test`: nbval's executed smoke run, copied and stepped through from 04 (on its own the test runs 00→03 itself)
FROM_RUN = os.environ.get("COURSE_BROWSER_FROM_RUN")
BEFORE_CHAT = ["00_setup", "01_data", "02_fine_tune", "03_deploy"]
BUSY = "Array.from(document.querySelectorAll('.jp-InputPrompt')).some(e => e.textContent.includes('*'))"


CHROMIUM = chromium(importing=True)  # missing: one line, and the module is skipped (in CI its tests fail)


def screenshot_dir() -> Path:
    folder = Path(os.environ.get("COURSE_SCREENSHOT_DIR") or ROOT / "runs" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shown_cells(page, within: str = "") -> list[int]:
    """Indexes of the notebook's cells on screen: those in the notebook's visible area, or the cell ``within`` is in."""
    return page.evaluate(
        """within => {
            const notebook = window.jupyterapp.shell.currentWidget.content.node;
            const cells = [...notebook.querySelectorAll('.jp-Cell')], view = notebook.getBoundingClientRect();
            const chosen = within ? [document.querySelector(within).closest('.jp-Cell')] : cells.filter(c => {
                const r = c.getBoundingClientRect();
                return r.bottom > view.top && r.top < view.bottom && r.height > 0;
            });
            return chosen.map(c => cells.indexOf(c));
        }""",
        within,
    )


def screenshot_sidecar(picture: Path, notebook: str, indexes: list[int], file_browser: bool = False) -> None:
    """``<picture>.json`` beside a screenshot: the source of the notebook cells it shows, as the checkout has them.

    tests/test_screenshots.py compares it with the notebook as it is, so a picture of code the course no longer
    has fails a test (retaken with ``make screenshots``); ``file_browser``: the picture shows the notebook list too."""
    cells = nbformat.read(ROOT / "notebooks" / notebook, as_version=4).cells
    shown = [{"id": cells[i].get("id"), "cell_type": cells[i].cell_type, "source": cells[i].source} for i in indexes]
    record = {"notebook": f"notebooks/{notebook}", "profile": PROFILE, "cells": shown}
    if file_browser:
        record["notebook_files"] = sorted(path.name for path in (ROOT / "notebooks").glob("*.ipynb"))
    picture.with_suffix(".json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


@dataclass
class Lab:
    url: str
    token: str
    root: Path  # a copy of notebooks/ and images/, so JupyterLab's saves never touch the checkout
    run: RunDir

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/notebooks/{name}?token={self.token}&reset"


def reuse_run(source: Path, target: Path) -> RunDir:
    """A copy at ``target`` of a run that has executed 00→03 with this profile (nbval's, in ``make test``).

    state.json's paths are moved to the copy (data, model, keys, MLflow's store); the store's model artifacts are
    read where the source keeps them, never written. 04 and later are dropped from the copy's summary, so the
    stage the browser records is its own; 04 starts the endpoints it needs again (03 and 99_cleanup stopped them).
    """
    source = source.resolve()
    summary = json.loads((source / "summary.json").read_text(encoding="utf-8")) if source.is_dir() else {}
    stages = summary.get("stages") or {}
    done = [name for name in BEFORE_CHAT if (stages.get(name) or {}).get("ok")]
    if summary.get("profile") != PROFILE or done != BEFORE_CHAT:
        pytest.fail(
            f"COURSE_BROWSER_FROM_RUN={source}: expected a {PROFILE} run with {', '.join(BEFORE_CHAT)} done, found "
            f"profile {summary.get('profile')!r} with {done or 'none'}. Run nbval over the notebooks into it first "
            "(as `make test` does), or unset COURSE_BROWSER_FROM_RUN to let the test run them.",
            pytrace=False,
        )
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("kernel-ipc-*", "*.sock"))
    state = target / "state.json"
    state.write_text(state.read_text(encoding="utf-8").replace(str(source), str(target)), encoding="utf-8")
    summary["stages"] = {name: stages[name] for name in BEFORE_CHAT}
    (target / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    run = RunDir(target)
    assert str(source) not in state.read_text(encoding="utf-8") and run.get("model_uri"), run.state
    return run


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    chromium()  # in CI without a browser: fail here, before minutes of notebooks
    root = tmp_path_factory.mktemp("lab")
    # not the kernels' IPC sockets a killed papermill run can leave in notebooks/ (copytree cannot copy sockets)
    shutil.copytree(ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns("kernel-ipc-*"))
    shutil.copytree(ROOT / "images", root / "images")
    run_path = root / "runs" / PROFILE
    if FROM_RUN:
        run = reuse_run(Path(FROM_RUN) if Path(FROM_RUN).is_absolute() else ROOT / FROM_RUN, run_path)
    else:
        run, failure = runner.run_course(PROFILE, run_dir=str(run_path), stop="03")
        assert failure is None, str(failure)

    settings = root / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    quiet = {"fetchNews": "false", "checkForUpdates": False}  # no news pop-up over the notebook
    (settings / "notification.jupyterlab-settings").write_text(json.dumps(quiet))
    notebook_settings = root / "lab-settings" / "@jupyterlab" / "notebook-extension"
    notebook_settings.mkdir(parents=True)  # every cell in the page, not only those scrolled into view
    (notebook_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = free_port(8888), secrets.token_hex(16)  # JupyterLab's usual port, or any free one
    env = {
        **os.environ,
        "COURSE_PROFILE": PROFILE,
        "COURSE_RUN_DIR": str(run_path),
        "JUPYTERLAB_SETTINGS_DIR": str(root / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "lab-workspaces"),
    }
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
    ]  # fmt: skip
    if os.geteuid() == 0:  # containers and CI run as root; JupyterLab refuses that unless told
        command.append("--allow-root")
    log = root / "jupyterlab.log"
    server = processes.launch(command, log, env, cwd=root)
    try:
        processes.wait_healthy(server, f"http://127.0.0.1:{port}/api/status?token={token}", log, 90, "JupyterLab")
        yield Lab(f"http://127.0.0.1:{port}", token, root, run)
    finally:
        processes.stop_group(server.pid)
        from phi3course import endpoint

        flow.stop_serving(run)
        endpoint.stop_all(run)
        flow.stop_pf_service()


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=chromium(),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
        )
        try:
            yield instance
        finally:
            instance.close()


def open_notebook(browser, lab: Lab, name: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(lab.notebook_url(name))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " return w && w.sessionContext && w.sessionContext.session?.kernel?.status === 'idle'; }",
        timeout=120_000,
    )
    return page


def run_next_cell(page, timeout_ms: int = 300_000) -> None:
    """Shift+Enter on the active cell, then wait until nothing is running; stop at the first traceback."""
    page.keyboard.press("Shift+Enter")
    page.wait_for_function(f"() => !({BUSY})", timeout=timeout_ms)
    traceback = page.locator(".jp-OutputArea-output:has-text('Traceback (most recent call last)')")
    if traceback.count():
        pytest.fail(f"a cell failed in JupyterLab:\n{traceback.first.inner_text()[-2000:]}")


def test_every_notebook_image_loads_in_jupyterlab(lab: Lab, browser) -> None:
    """Each image a notebook's markdown shows is in the page and has loaded (JupyterLab resolves the paths).

    One JupyterLab page opens the notebooks one after another, as a learner does from the file browser (loading the
    whole application once per notebook was most of this test's time)."""
    opened = "() => window.courseNotebook"
    loaded = (
        "n => { const w = window.courseNotebook;"
        " if (!w.node.querySelector('.jp-MarkdownOutput')) return false;"
        " const imgs = [...w.node.querySelectorAll('.jp-MarkdownOutput img')];"
        " return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }"
    )
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{lab.url}/lab?token={lab.token}&reset")
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.commands.hasCommand('docmanager:open')", timeout=120_000
    )
    shown = 0
    for notebook in sorted((lab.root / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(notebook, as_version=4).cells
        expected = sum(c.source.count("![") for c in cells if c.cell_type == "markdown")
        page.evaluate(
            "async path => { window.courseNotebook = null;"
            " const w = await window.jupyterapp.commands.execute('docmanager:open', {path});"
            " await w.context.ready; window.courseNotebook = w; }",
            f"notebooks/{notebook.name}",
        )
        page.wait_for_function(opened, timeout=60_000)
        try:
            page.wait_for_function(loaded, arg=expected, timeout=60_000)
        except Exception:  # Playwright's timeout: say which images did not load
            state = page.evaluate(
                "() => [...window.courseNotebook.node.querySelectorAll('.jp-MarkdownOutput img')]"
                ".map(i => [i.getAttribute('src'), i.naturalWidth])"
            )
            pytest.fail(f"{notebook.name}: expected {expected} loaded images, the page has {state}")
        shown += expected
        page.evaluate("() => window.courseNotebook.dispose()")  # its tab closed, the next one opened alone
    page.close()
    assert shown >= 2  # the architecture picture in 00, the chat box in 04


def test_a_learner_chats_with_the_fine_tuned_model_in_jupyterlab(lab: Lab, browser) -> None:
    page = open_notebook(browser, lab, CHAT_NOTEBOOK)
    page.locator(".jp-Cell").first.click()
    page.keyboard.press("Escape")  # command mode: Shift+Enter runs a cell and moves to the next

    question = page.locator("input[placeholder^='Ask a question']")
    for _ in range(40):
        run_next_cell(page)
        if question.count():
            break
    else:
        pytest.fail("the chat box never appeared")

    history = page.locator(".widget-html-content").last
    served = flow.FlowServer(lab.run.get("flow_url"), lab.run.get("flow_pid"), lab.run.path / "flow_serve.log")
    asked: list[dict] = []
    for turn, text in enumerate(QUESTIONS, start=1):
        question.fill(text)
        page.get_by_role("button", name="Send").click()
        page.wait_for_function(
            "([el, n]) => el.querySelectorAll('p').length >= n", arg=[history.element_handle(), turn], timeout=60_000
        )
        row = history.locator("p").nth(turn - 1).inner_text()
        assert row.startswith(f"you: {text}\nmodel:"), row
        # What the page shows is what the served flow answers to this question with this history (greedy decoding).
        expected = served.ask(text, asked)
        assert " ".join(row.split("model:", 1)[1].split()) == (" ".join(expected.split()) or EMPTY_ANSWER)
        asked.append({"inputs": {"question": text}, "outputs": {"answer": expected}})
    assert question.input_value() == ""  # the box clears after each question
    chat = page.locator(".widget-vbox").filter(has=question).last
    chat.screenshot(path=str(screenshot_dir() / "chat_box.png"))
    chat.evaluate("el => el.setAttribute('data-course-chat', '1')")
    chat_cell = shown_cells(page, within="[data-course-chat]")
    screenshot_sidecar(screenshot_dir() / "chat_box.png", CHAT_NOTEBOOK, chat_cell)
    chat.evaluate("el => el.closest('.jp-Cell').scrollIntoView({block: 'start'})")
    page.screenshot(path=str(screenshot_dir() / "jupyterlab_chat.png"))
    on_screen = shown_cells(page)
    assert chat_cell[0] in on_screen, on_screen
    screenshot_sidecar(screenshot_dir() / "jupyterlab_chat.png", CHAT_NOTEBOOK, on_screen, file_browser=True)

    # The rest, as a learner goes on: batch evaluation, then everything stopped. Focus is in the chat box,
    # so click the next cell's prompt first (command mode again).
    page.locator(".jp-Cell.jp-mod-active .jp-InputPrompt").click()
    not_run = (
        "() => window.jupyterapp.shell.currentWidget.content.widgets"
        ".filter(c => c.model.type === 'code' && !c.model.executionCount).length"
    )
    for _ in range(40):
        if page.evaluate(not_run) == 0:
            break
        run_next_cell(page)
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
    page.close()

    saved = nbformat.read(lab.root / "notebooks" / CHAT_NOTEBOOK, as_version=4)
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell ran"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    summary = json.loads(lab.run.summary_path.read_text())
    assert summary["stages"]["04_prompt_flow_chat"]["ok"] is True
    state = lab.run.state  # the notebook's last cells stopped what it started
    assert not [key for key, pid in state.items() if key.endswith("_pid") and processes.alive(pid)]


def test_no_key_in_the_executed_notebooks_or_logs(lab: Lab) -> None:
    """After the learner's session: the key is in no executed notebook (00→03 headless, or their outputs as nbval
    kept them; 04 saved from JupyterLab), log, state.json or summary.json (the README's promise; test_secrets.py
    holds the scan)."""
    from nbval_outputs import FILE_NAME
    from test_secrets import keys_of, leaks

    assert keys_of(lab.run.path), "03_deploy made no key: nothing was checked"
    saved = sorted((lab.root / "notebooks").glob("*.ipynb"))
    executed = (lab.run.path / FILE_NAME).is_file() if FROM_RUN else list(lab.run.path.glob("0*.ipynb"))
    assert executed and saved
    assert leaks(lab.run.path, also=[*saved, lab.root / "jupyterlab.log"]) == []


def test_a_reused_run_is_moved_to_its_copy_and_must_have_run_up_to_03(tmp_path) -> None:
    """``COURSE_BROWSER_FROM_RUN``: the copy's state points into the copy, its summary ends at 03, and a run that
    has not done 00→03 (or another profile's) is refused with what to do."""
    source = RunDir(tmp_path / "nbval")
    source.remember(model_uri="models:/m/1", train_path=source.path / "data" / "train.jsonl")
    source.remember(mlflow_tracking_uri=f"sqlite:///{source.path / 'mlflow.db'}")
    source.update_summary(profile=PROFILE)
    for name in [*BEFORE_CHAT, "04_prompt_flow_chat", "99_cleanup"]:
        source.record_stage(name, 1.0, True)
    copy = reuse_run(source.path, tmp_path / "copy" / PROFILE)
    assert copy.get("train_path") == str(copy.path / "data" / "train.jsonl")
    assert copy.get("mlflow_tracking_uri") == f"sqlite:///{copy.path / 'mlflow.db'}"
    assert list(copy.summary["stages"]) == BEFORE_CHAT  # the browser's 04 is recorded by the browser's run
    source.record_stage("03_deploy", 1.0, False)
    with pytest.raises(pytest.fail.Exception, match=r"expected a .* run with 00_setup, .*03_deploy done"):
        reuse_run(source.path, tmp_path / "again")
    assert not (tmp_path / "again").exists()  # refused before anything is copied
