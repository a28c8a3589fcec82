"""Library modules generated from notebook cells (the d2l pattern): the notebook is the source.

A notebook's code cells tagged ``export`` are copied, in order, into the generated block of a module in this
package, between two marker lines; the rest of the module (its docstring, anything after the block) is kept.
The learner reads and edits the cells; the Azure ML job, the benchmarks and the tests import the copy.
``python -m phi3course.tools.export`` regenerates every copy; ``--check`` only says which ones differ (a test runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXPORT_TAG = "export"
# module of this package -> the notebook whose export cells it holds
GENERATED = {"recipe": "02_fine_tune.ipynb", "agents": "05_agent_framework.ipynb"}
BEGIN = "# --- generated from notebooks/"
END = "# --- end of generated code ---"


def module_path(name: str) -> Path:
    """The file of generated module ``name`` (a module of the ``phi3course`` package)."""
    return Path(__file__).parents[1] / f"{name}.py"


def exported_code(notebook: str | Path) -> str:
    """The source of ``notebook``'s ``export`` cells, in order, as module code."""
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    blocks = [c.source.strip("\n") for c in cells if c.cell_type == "code" and EXPORT_TAG in c.metadata.get("tags", [])]
    if not blocks:
        raise ValueError(f"{notebook} has no code cell tagged {EXPORT_TAG!r}")
    return "\n\n\n".join(blocks) + "\n"


def with_code(module_text: str, code: str) -> str:
    """``module_text`` with its generated block replaced by ``code``."""
    if BEGIN not in module_text or END not in module_text:
        raise ValueError(f"the module has no generated block ({BEGIN!r} … {END!r})")
    head, rest = module_text.split(BEGIN, 1)
    marker_line, _ = rest.split("\n", 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}{marker_line}\n{code}\n\n{END}{tail}"  # two blank lines: ruff format's spacing


def regenerated(name: str, notebook: str | Path | None = None) -> str:
    """Module ``name``'s text as the export cells of its notebook (or of ``notebook``) make it."""
    from ..paths import notebooks_dir

    source = notebook or notebooks_dir() / GENERATED[name]
    return with_code(module_path(name).read_text(encoding="utf-8"), exported_code(source))


def stale() -> list[str]:
    """The generated modules that differ from their notebooks' export cells."""
    return [name for name in GENERATED if regenerated(name) != module_path(name).read_text(encoding="utf-8")]


def export() -> list[str]:
    """Rewrite every generated module from its notebook; returns the names that changed."""
    changed = stale()
    for name in changed:
        module_path(name).write_text(regenerated(name), encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phi3course.tools.export", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which modules differ from their notebooks")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale()
        for name in differ:
            fix = "run python -m phi3course.tools.export"
            print(f"lib/phi3course/{name}.py differs from notebooks/{GENERATED[name]}: {fix}")
        return 1 if differ else 0
    changed = export()
    for name in GENERATED:
        print(f"lib/phi3course/{name}.py", "regenerated" if name in changed else "already matches its notebook")
    return 0


if __name__ == "__main__":
    sys.exit(main())
