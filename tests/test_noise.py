"""What a learner reads in an executed notebook is the course's output, not the libraries' chatter.

The scan reads what nbval's run recorded (``nbval-outputs.jsonl``, written by tests/nbval_outputs.py) and fails on:

- a Python warning (``…/module.py:12: FutureWarning: …``, as ``warnings`` prints one);
- a library's log line (DEBUG, INFO or WARNING, in the formats promptflow, mlflow, the inference server and
  Python's logging print them): the course sets the libraries' levels once (``phi3course.telemetry.quiet_logs``),
  and a warning that concerns the learner belongs in :data:`ALLOWED` with the reason, or in the notebook's text;
- a traceback, or an error output;
- more than one progress bar in a cell unless each bar stands for one long step of its own (:data:`STEP_BARS`):
  a library's bars for the sub-steps of what the course already shows with one bar are noise. nbval folds a
  bar's redraws into its last state, so the scan counts bars, not redraws: a bar drawn as text (``tqdm`` rather
  than ``tqdm.auto``) keeps a line per redraw in a notebook papermill saves, which the scan cannot see.

Each failure names the notebook's cell and the line. ``make test`` runs it after nbval over its run directory and
again after the Azure dry run (``COURSE_OUTPUTS_RUN_DIR``, as tests/test_outputs.py); ``make test-local`` runs the
course as a learner does (``make course``, the `local` profile, papermill) and scans the notebooks it executed
(``COURSE_NOISE_EXECUTED_DIR``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from phi3course import telemetry
from tests.nbval_outputs import FILE_NAME
from tests.test_outputs import RUN_DIR_ENV

ROOT = Path(__file__).resolve().parents[1]

PYTHON_WARNING = re.compile(r"\b[A-Z]\w*Warning: ")  # warnings.formatwarning: "file:line: Category: message"
TRACEBACK = re.compile(r"^Traceback \(most recent call last\):|^\s*File \"[^\"]+\", line \d+, in ")
LEVEL = r"(?P<level>DEBUG|INFO|WARNING|WARN)"
LOG_LINES = [
    re.compile(pattern)
    for pattern in (
        rf"^\[[^\]]*\d\d:\d\d[^\]]*\]\[(?P<logger>[\w.]+)\]\[{LEVEL}\] - ",  # promptflow's SDK
        rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{{4}}\s+\d+\s+(?P<logger>[\w.]+)\s+{LEVEL}\s",  # its executor
        rf"^\d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d {LEVEL} (?P<logger>[\w.]+): ",  # mlflow
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[DIW]) \[\d+\] (?P<logger>[\w.]+) - ",  # azmlinfsrv
        rf"^{LEVEL}:(?P<logger>[\w.]+):",  # logging.basicConfig's default
        rf"^\[?\d{{4}}[-/]\d\d[-/]\d\d[ T][\d:,.]+\S*[\] ].*?\b{LEVEL}\b",  # any other timestamped log line
    )
]
BAR = re.compile(r"^(?P<desc>[^|\r\n]*?):?\s+\d{1,3}%\|")  # tqdm: "desc:  42%|████▏     | 5/12 [...]"

# Lines the course prints on purpose although they match a pattern above; each with why a learner reads it.
ALLOWED: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ I \[\d+\] azmlinfsrv[\w.]* - "),
        "03_deploy prints the deployment's own log (online_deployments.get_logs) on purpose: the inference server "
        "saying it loaded the scoring script, as Azure ML shows it",
    ),
]

# Bars that stand for one long step each, so several may share a cell (the bar names, tqdm's ``desc``).
STEP_BARS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^training$"), "the course's bar over the optimiser's steps (trainer_hooks)"),
    (re.compile(r"^(held-out|general probe|replay)\b"), "the course's bar over a set of questions (evaluate)"),
    (re.compile(r"^asking$"), "03's bar over the requests it sends the endpoint at once (evaluate.Progress)"),
    (re.compile(r"^asking the \w+ model$"), "04's bar over one batch run's lines, one per model (flow.lines_progress)"),
    (re.compile(r"^course \("), "the runner's bar over the notebooks"),
    (re.compile(r"^unpacking "), "the course's bar while it unpacks a model file (models)"),
    (re.compile(r"^Loading weights$"), "transformers reading a model's weights: long for a model of Phi-3's size"),
    (re.compile(r"^Writing model shards$"), "transformers writing a merged model: long for a model of Phi-3's size"),
]


@dataclass(frozen=True)
class Noise:
    cell: str  # nbval's id: "notebooks/04_prompt_flow_chat.ipynb::Cell 4"
    kind: str
    line: str

    def __str__(self) -> str:
        return f"{self.cell}: {self.kind}: {self.line[:200]!r}"


def output_texts(output: dict[str, Any]) -> Iterator[str]:
    """The text a learner reads in one output: a stream, a result's or display's plain text, an error."""
    kind = output.get("output_type")
    if kind == "stream":
        yield str(output.get("text", ""))
    elif kind in {"display_data", "execute_result"}:
        text = output.get("data", {}).get("text/plain", "")
        yield "".join(text) if isinstance(text, list) else str(text)
    elif kind == "error":
        yield f"{output.get('ename')}: {output.get('evalue')}"


def lines_of(text: str) -> list[str]:
    """Lines as a terminal draws them apart: tqdm redraws with carriage returns, a saved notebook keeps each."""
    return [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]


def allowed(line: str) -> bool:
    return any(pattern.search(line) for pattern, _ in ALLOWED)


def noise_in_cell(cell: str, outputs: Iterable[dict[str, Any]]) -> list[Noise]:
    """What in one cell's outputs a learner would have to wade through."""
    found: list[Noise] = []
    bars: dict[str, str] = {}  # bar name → its first line
    for output in outputs:
        if output.get("output_type") == "error":
            found.append(Noise(cell, "error", next(output_texts(output))))
            continue
        for text in output_texts(output):
            for line in lines_of(text):
                if bar := BAR.match(line):
                    bars.setdefault(bar["desc"].strip(), line)
                    continue
                if allowed(line):
                    continue
                if TRACEBACK.search(line):
                    found.append(Noise(cell, "traceback", line))
                elif PYTHON_WARNING.search(line):
                    found.append(Noise(cell, "Python warning", line))
                elif log := next(filter(None, (p.search(line) for p in LOG_LINES)), None):
                    found.append(Noise(cell, f"log line at {log['level']}", line))
    if len(bars) > 1:
        found += [
            Noise(cell, f"one of {len(bars)} progress bars in the cell, not a step of its own", line)
            for name, line in bars.items()
            if not any(pattern.search(name) for pattern, _ in STEP_BARS)
        ]
    return found


def noise_in(records: Iterable[str]) -> list[Noise]:
    """Noise in every cell of an nbval-outputs.jsonl (its lines)."""
    found: list[Noise] = []
    for record in records:
        if record.strip():
            cell = json.loads(record)
            found += noise_in_cell(cell["cell"], cell["outputs"])
    return found


def noise_in_notebooks(folder: Path) -> list[Noise]:
    """Noise in every executed notebook in ``folder`` (``make course`` saves them beside the run's summary.json)."""
    import nbformat

    found: list[Noise] = []
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code":
                found += noise_in_cell(f"{path.name}::Cell {index}", cell.get("outputs", []))
    return found


EXECUTED_DIR_ENV = "COURSE_NOISE_EXECUTED_DIR"


# --- the scan, on crafted outputs ----------------------------------------------------------------------------
def stream(text: str, name: str = "stderr") -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def record(cell: str, *outputs: dict[str, Any]) -> str:
    return json.dumps({"cell": f"notebooks/{cell}", "outputs": list(outputs)})


def test_the_scan_names_each_kind_of_noise_with_its_cell_and_line() -> None:
    records = [
        record(
            "02_fine_tune.ipynb::Cell 15", stream("2026/12/03 13:05:55 INFO mlflow.store.db.utils: Creating tables\n")
        ),
        record(
            "04_prompt_flow_chat.ipynb::Cell 4",
            stream(
                "[2026-12-03 12:11:01 +0000][promptflow.core._connection][WARNING] - Please use connection.secrets"
                "[key] to access secrets.\n"
            ),
            stream(
                "2026-12-03 12:11:01 +0000   10142 execution.flow     INFO     Start executing nodes.\nQ: who?\n",
                "stdout",
            ),
        ),
        record(
            "04_prompt_flow_chat.ipynb::Cell 9",
            stream("[2026-12-03 12:11:37 +0000][promptflow._sdk._orchestrator.run_submitter][INFO] - Submitting\n"),
        ),
        record(
            "02_fine_tune.ipynb::Cell 5",
            stream("/x/site-packages/torch/nn/modules.py:12: FutureWarning: `foo` is deprecated\n  warnings.warn(\n"),
        ),
        record("03_deploy.ipynb::Cell 8", stream("INFO:httpx:HTTP Request: POST http://127.0.0.1:5001/score\n")),
        record(
            "05_agent_framework.ipynb::Cell 3",
            stream('Traceback (most recent call last):\n  File "/x/y.py", line 3, in <module>\nValueError: no\n'),
        ),
        record("05_agent_framework.ipynb::Cell 4", {"output_type": "error", "ename": "ValueError", "evalue": "no"}),
    ]
    found = noise_in(records)
    assert [(n.cell.split("/")[1], n.kind) for n in found] == [
        ("02_fine_tune.ipynb::Cell 15", "log line at INFO"),
        ("04_prompt_flow_chat.ipynb::Cell 4", "log line at WARNING"),
        ("04_prompt_flow_chat.ipynb::Cell 4", "log line at INFO"),
        ("04_prompt_flow_chat.ipynb::Cell 9", "log line at INFO"),
        ("02_fine_tune.ipynb::Cell 5", "Python warning"),
        ("03_deploy.ipynb::Cell 8", "log line at INFO"),
        ("05_agent_framework.ipynb::Cell 3", "traceback"),
        ("05_agent_framework.ipynb::Cell 3", "traceback"),
        ("05_agent_framework.ipynb::Cell 4", "error"),
    ]
    assert "Please use connection.secrets" in str(found[1]) and "Cell 4" in str(found[1])


def test_the_course_s_own_lines_and_the_allowed_ones_pass() -> None:
    records = [
        record(
            "02_fine_tune.ipynb::Cell 19",
            stream("Successfully registered model 'phi3-course-smoke'.\n"),
            stream("held-out (tuned): 1/1 batch, 11.2 s\nloss 6.4 → 2.1 (warnings: none)\n", "stdout"),
        ),
        record(
            "03_deploy.ipynb::Cell 6",
            stream(
                "deployed: http://127.0.0.1:56677/score\n"
                "2026-12-03 12:23:12,969 I [25460] azmlinfsrv.user_script - Users's init has completed successfully\n",
                "stdout",
            ),
        ),
        record(
            "05_agent_framework.ipynb::Cell 6", stream("The provided chat client does not support function invoking\n")
        ),
    ]
    assert noise_in(records) == []


def bar(desc: str, done: int, total: int = 12) -> str:
    filled = "█" * (10 * done // total)
    return f"{desc}: {100 * done // total:3d}%|{filled:<10}| {done}/{total} [00:01<00:02,  1.14it/s]"


def test_one_bar_per_long_step_but_not_a_library_s_bars_for_the_sub_steps() -> None:
    redrawn = "\r".join(bar("held-out via the workflow", n, 30) for n in range(31))  # one bar, 31 redraws
    widget = {
        "output_type": "display_data",
        "data": {"text/plain": bar("Loading weights", 0, 15), "application/vnd.jupyter.widget-view+json": {}},
    }
    one_step_each = [
        record("05_agent_framework.ipynb::Cell 10", stream(redrawn + "\n")),
        record("02_fine_tune.ipynb::Cell 5", widget),
        record("02_fine_tune.ipynb::Cell 9", stream(bar("Map", 3) + "\n")),  # a library's bar, alone in its cell
        record(
            "02_fine_tune.ipynb::Cell 18",
            stream(bar("Writing model shards", 1, 1) + "\n" + bar("held-out (tuned)", 1, 1) + "\n"),
            stream(bar("general probe", 1, 1) + "\n"),
        ),
    ]
    assert noise_in(one_step_each) == []
    sub_steps = record(
        "02_fine_tune.ipynb::Cell 14",
        stream(bar("Tokenizing train dataset", 3) + "\r" + bar("Tokenizing train dataset", 12) + "\n"),
        stream(bar("Building labels for train dataset", 12) + "\n"),
        stream(bar("training", 12) + "\n"),
    )
    found = noise_in([sub_steps])
    assert [n.kind for n in found] == ["one of 3 progress bars in the cell, not a step of its own"] * 2
    assert [n.line.split(":")[0] for n in found] == ["Tokenizing train dataset", "Building labels for train dataset"]


# --- the scan, on nbval's run ----------------------------------------------------------------------------------
@pytest.mark.skipif(
    not os.environ.get(RUN_DIR_ENV),
    reason=f"runs in `make test` after nbval, over its run directory ({RUN_DIR_ENV}=runs/nbval)",
)
def test_no_noise_in_the_nbval_run() -> None:
    run_path = Path(os.environ[RUN_DIR_ENV])
    run_path = run_path if run_path.is_absolute() else ROOT / run_path  # relative to the course, as COURSE_RUN_DIR
    outputs = run_path / FILE_NAME
    assert outputs.is_file(), f"no {outputs}: run nbval with -p tests.nbval_outputs, as make test does"
    found = noise_in(outputs.read_text(encoding="utf-8").splitlines())
    assert not found, (
        "library noise in what the notebooks showed — quiet it at its source (phi3course.telemetry.quiet_logs), or "
        "add the line to tests/test_noise.py's ALLOWED with why a learner reads it:\n"
        + "\n".join(str(n) for n in found)
    )


def test_the_scan_reads_the_notebooks_a_run_executed(tmp_path) -> None:
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("INFO: prose"), nbformat.v4.new_code_cell("x")]
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", name="stderr", text="INFO:httpx:HTTP Request\n")]
    nbformat.write(notebook, tmp_path / "03_deploy.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "notes.ipynb")  # not one of the course's notebooks
    assert [(n.cell, n.kind) for n in noise_in_notebooks(tmp_path)] == [("03_deploy.ipynb::Cell 1", "log line at INFO")]


@pytest.mark.skipif(
    not os.environ.get(EXECUTED_DIR_ENV),
    reason=f"runs in `make test-local` after `make course`, over the notebooks it executed ({EXECUTED_DIR_ENV})",
)
def test_no_noise_in_the_notebooks_a_course_run_executed() -> None:
    folder = Path(os.environ[EXECUTED_DIR_ENV])
    folder = folder if folder.is_absolute() else ROOT / folder
    assert sorted(folder.glob("0[0-5]_*.ipynb")), f"no executed notebooks in {folder}: run `make course` first"
    found = noise_in_notebooks(folder)
    assert not found, (
        "library noise in what the notebooks showed — quiet it at its source (phi3course.telemetry.quiet_logs), or "
        "add the line to tests/test_noise.py's ALLOWED with why a learner reads it:\n"
        + "\n".join(str(n) for n in found)
    )


# --- the course's setup, against the libraries themselves ------------------------------------------------------
EMIT = """
import logging, sys
import datasets, mlflow
from tqdm import tqdm
from promptflow._sdk._orchestrator import run_submitter
from promptflow._utils.logger_utils import flow_logger
from promptflow.entities import CustomConnection

from phi3course import telemetry

def emit():
    flow_logger.info("Start executing nodes in thread pool mode.")  # each pf.test
    run_submitter.logger.info("Submitting run chat_variant_0, log path: /home/x/.promptflow/.runs/chat/logs.txt")
    CustomConnection(name="c", secrets={"key": "k" * 16}, configs={}).key  # as promptflow's connection manager reads
    logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
    datasets.Dataset.from_dict({"text": ["a", "b"]}).map(lambda row: row, desc="Tokenizing train dataset")
    for _ in tqdm(range(2), desc="training"):
        pass
    sys.stdout.flush(); sys.stderr.flush()

emit()
print("--- quiet ---", flush=True); print("--- quiet ---", file=sys.stderr, flush=True)
telemetry.quiet(check_hub=False, promptflow=False)
emit()
"""


def test_the_course_setup_quiets_libraries_imported_before_it(tmp_path) -> None:
    """A notebook imports promptflow, mlflow and datasets before ``course.start``: their noise, then none."""
    env = {k: v for k, v in os.environ.items() if k not in telemetry.QUIET_ENV}
    env.update(PF_HOME_DIRECTORY=str(tmp_path / "pf"), PYTHONPATH=str(ROOT / "lib"), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", EMIT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    before, after = zip(*(stream.split("--- quiet ---") for stream in (done.stdout, done.stderr)), strict=True)
    loud = "\n".join(str(n) for n in noise_in_cell("before", [stream(text) for text in before]))
    for source in ("promptflow.core._connection", "run_submitter", "execution.flow", "mlflow.store", "'Tokenizing"):
        assert source in loud, f"no noise from {source} even before the setup: the check below proves nothing"
    assert noise_in_cell("after", [stream(text) for text in after]) == []
