"""Keep the committed notebooks clean: no outputs, counts or run metadata, except reference outputs.

Cells marked ``# NBVAL_CHECK_OUTPUT`` keep their outputs: nbval compares a fresh run against them.
Those outputs come from a smoke run (``refresh``), and the marked cells print the same in every profile.

    python -m phi3course.tools.notebooks check            # what is not clean (the tests run this)
    python -m phi3course.tools.notebooks clean            # make it clean
    python -m phi3course.tools.notebooks refresh runs/nbval   # take reference outputs from executed notebooks
    python -m phi3course.tools.notebooks unchecked DEST   # copies without reference outputs (another profile's nbval)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import nbformat

from ..paths import notebooks_dir

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
KEPT_CELL_METADATA = ("tags",)


def is_checked(cell: Any) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def clean(nb: Any) -> Any:
    """The notebook as it should be committed (a new object; ``nb`` is left alone)."""
    nb = nbformat.from_dict(copy.deepcopy(dict(nb)))
    nb.metadata = nbformat.from_dict(
        {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        }
    )
    cells = []
    for cell in nb.cells:
        if cell.metadata.get("tags") == ["injected-parameters"]:
            continue  # papermill's cell, in an executed copy
        cell.metadata = nbformat.from_dict({k: v for k, v in cell.metadata.items() if k in KEPT_CELL_METADATA})
        if cell.cell_type == "code":
            # nbval skips reference outputs of a cell that never ran, so checked cells keep a count of 1.
            count = 1 if is_checked(cell) and cell.outputs else None
            cell.execution_count = count
            if not is_checked(cell):
                cell.outputs = []
            for output in cell.outputs:
                if output.get("output_type") == "execute_result":
                    output["execution_count"] = count
        cells.append(cell)
    nb.cells = cells
    return nb


def problems(path: Path) -> list[str]:
    """Why ``path`` is not clean, one line per cell; empty when it is."""
    nb = nbformat.read(path, as_version=4)
    found = []
    if len([c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]) != 1:
        found.append(f"{path.name}: needs exactly one cell tagged 'parameters'")
    for index, (cell, want) in enumerate(zip(nb.cells, clean(nb).cells, strict=True)):
        if cell != want:
            found.append(f"{path.name}: cell {index} has outputs, execution counts or metadata to clean")
    if nb.metadata != clean(nb).metadata:
        found.append(f"{path.name}: notebook metadata to clean")
    return found


def refresh(executed_dir: Path, folder: Path | None = None) -> list[Path]:
    """Copy the outputs of checked cells from executed notebooks (matched by cell id), then clean."""
    changed = []
    for path in sorted((folder or notebooks_dir()).glob("[0-9][0-9]_*.ipynb")):
        executed_path = executed_dir / path.name
        nb = nbformat.read(path, as_version=4)
        if executed_path.is_file():
            executed = {c.get("id"): c for c in nbformat.read(executed_path, as_version=4).cells}
            for cell in nb.cells:
                if is_checked(cell) and cell.get("id") in executed:
                    cell.outputs = executed[cell.id].outputs
        nbformat.write(clean(nb), path)
        changed.append(path)
    return changed


def unchecked(dest: Path, folder: Path | None = None) -> list[Path]:
    """Copies of the notebooks with no reference outputs and no check marks, for nbval under another profile.

    The reference outputs come from the smoke profile; a profile whose cells rightly print something else
    (the Azure dry run's rehearsal banner, its example settings) still runs every cell under nbval this way.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted((folder or notebooks_dir()).glob("[0-9][0-9]_*.ipynb")):
        nb = clean(nbformat.read(path, as_version=4))
        for cell in nb.cells:
            if is_checked(cell):
                cell.source = cell.source.replace(CHECK_MARK, "# (reference output checked under the smoke profile)", 1)
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, dest / path.name)
        written.append(dest / path.name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phi3course.tools.notebooks", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "clean", "refresh", "unchecked"])
    parser.add_argument(
        "executed_dir", nargs="?", type=Path, help="refresh: folder of executed notebooks; unchecked: where to write"
    )
    args = parser.parse_args(argv)
    paths = sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb"))
    if args.command == "check":
        found = [line for path in paths for line in problems(path)]
        print("\n".join(found) or f"{len(paths)} notebooks are clean")
        return 1 if found else 0
    if args.command == "unchecked":
        if not args.executed_dir:
            parser.error("unchecked needs a folder to write the copies to")
        print(f"wrote {len(unchecked(args.executed_dir))} notebooks without reference outputs to {args.executed_dir}")
        return 0
    if args.command == "refresh":
        if not args.executed_dir:
            parser.error("refresh needs the folder of executed notebooks, e.g. runs/nbval")
        refresh(args.executed_dir)
    else:
        for path in paths:
            nbformat.write(clean(nbformat.read(path, as_version=4)), path)
    print(f"cleaned {len(paths)} notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
