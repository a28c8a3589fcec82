"""Run the course's notebooks in order with papermill, the way ``make course`` does.

Executed notebooks land beside the run's ``summary.json`` (``runs/<profile>/`` by default). The
first failing notebook stops the run; its name, the failing cell and the error are printed and
recorded, and ``--from`` starts again from it.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import profiles
from ..course import run_dir_for
from ..paths import course_notebooks
from ..rundir import RunDir, now


@dataclass
class Failure:
    notebook: str
    cell: int | None  # index in the source notebook, as JupyterLab counts from 0
    error: str
    output: Path
    code: str = ""  # the failing cell's first line

    def __str__(self) -> str:
        where = f"cell {self.cell} ({self.code!r})" if self.cell is not None else "before any cell ran"
        return f"{self.notebook} failed in {where}: {self.error}\n  executed notebook: {self.output}"


def _position(notebooks: list[Path], name: str, option: str) -> int:
    for index, notebook in enumerate(notebooks):
        if notebook.stem == name or notebook.stem.startswith(name):
            return index
    names = ", ".join(nb.stem for nb in notebooks)
    raise SystemExit(f"{option} {name!r} matches no notebook; choose one of: {names}")


def select(notebooks: list[Path], start: str | None, stop: str | None = None) -> list[Path]:
    """The notebooks from ``start`` to ``stop`` (both included, either may be a prefix such as ``02``)."""
    first = _position(notebooks, start, "--from") if start else 0
    last = _position(notebooks, stop, "--to") if stop else len(notebooks) - 1
    if last < first:
        raise SystemExit(f"--to {stop!r} comes before --from {start!r}")
    return notebooks[first : last + 1]


@functools.cache
def ipc_kernel_manager() -> type:
    """A kernel manager whose kernels talk over local IPC sockets instead of TCP ports.

    Nothing listens on a network port, and ipykernel 7 no longer prints its warning that TCP traffic is
    unencrypted for every notebook of a headless run (a warning learners took for an error).
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class IpcKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

    return IpcKernelManager


def _source_cell(error: BaseException, source: Path) -> tuple[int | None, str]:
    """Find the failing cell in the source notebook by its code (papermill's index counts cells it added)."""
    import nbformat

    code = getattr(error, "source", None)
    if code is None:
        return None, ""
    first_line = next((line for line in code.splitlines() if line.strip()), "")
    for index, cell in enumerate(nbformat.read(source, as_version=4).cells):
        if cell.cell_type == "code" and cell.source == code:
            return index, first_line
    return None, first_line


def run_course(
    profile: str = profiles.DEFAULT_PROFILE,
    start: str | None = None,
    run_dir: str | None = None,
    include_cleanup: bool = False,
    notebooks: list[Path] | None = None,
    kernel_name: str | None = None,
    stop: str | None = None,
) -> tuple[RunDir, Failure | None]:
    """Execute the notebooks; return the run directory and the first failure, if any."""
    import papermill as pm

    params: dict[str, Any] = profiles.parameters(profile)
    run = run_dir_for(profile, run_dir)
    params["run_dir"] = str(run.path)
    available = notebooks if notebooks is not None else course_notebooks(include_cleanup=include_cleanup)
    chosen = select(available, start, stop)
    if not start:  # a fresh run: a new summary, the state (endpoints, keys' paths) is kept
        run.summary_path.unlink(missing_ok=True)
        run.update_summary(profile=profile, started=now())
    overall = tqdm(chosen, desc=f"course ({profile})", unit="notebook", position=0)
    for notebook in overall:
        overall.set_postfix_str(notebook.stem)
        output = run.path / notebook.name
        began = time.perf_counter()
        declared = pm.inspect_notebook(str(notebook))  # pass only what the notebook has: no warnings
        try:
            pm.execute_notebook(
                str(notebook),
                str(output),
                parameters={k: v for k, v in params.items() if k in declared},
                cwd=str(notebook.parent),
                kernel_name=kernel_name,
                kernel_manager_class=ipc_kernel_manager(),
                progress_bar={"desc": notebook.stem, "leave": False, "position": 1},
            )
        except Exception as error:  # papermill's execution error, or a kernel that died
            ename = getattr(error, "ename", type(error).__name__)
            evalue = getattr(error, "evalue", str(error))
            cell, code = _source_cell(error, notebook)
            failure = Failure(notebook.stem, cell, f"{ename}: {evalue}".strip(), output, code)
            run.record_stage(notebook.stem, time.perf_counter() - began, False, cell=failure.cell, error=failure.error)
            overall.close()
            return run, failure
    overall.close()
    run.update_summary(finished=now())
    return run, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phi3course course", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=profiles.DEFAULT_PROFILE, help="local (default), smoke or azureml")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="azureml only: rehearse every Azure cell against a local stand-in of the workspace (runs/azureml-dryrun)",
    )
    parser.add_argument("--from", dest="start", help="start from this notebook (e.g. 02_fine_tune or 02)")
    parser.add_argument("--to", dest="stop", help="stop after this notebook (e.g. 02 for a short session)")
    parser.add_argument("--run-dir", help="where executed notebooks and state go (default runs/<profile>)")
    parser.add_argument("--cleanup", action="store_true", help="also run 99_cleanup at the end")
    parser.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's own)")
    args = parser.parse_args(argv)
    if args.dry_run:
        if args.profile != "azureml":
            print(
                f"--dry-run rehearses the azureml profile; the {args.profile!r} profile has no Azure cells.",
                file=sys.stderr,
            )
            return 2
        args.profile = "azureml-dryrun"
    try:
        profiles.parameters(args.profile)
    except profiles.ProfileError as error:
        print(error, file=sys.stderr)
        return 2
    run, failure = run_course(
        args.profile, args.start, args.run_dir, args.cleanup, kernel_name=args.kernel, stop=args.stop
    )
    if failure:
        print(
            f"\n✗ {failure}\n  fix it, then resume with: make course PROFILE={args.profile} FROM={failure.notebook}",
            file=sys.stderr,
        )
        return 1
    print(f"\n✓ course ({args.profile}) done — {run.summary_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
