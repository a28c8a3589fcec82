"""The package's layering, read from the source: no import cycle, and the learner's first call never loads the
Azure stand-in."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from phi3course import snapshot


def test_the_package_has_no_import_cycle() -> None:
    graph = snapshot.import_graph()
    assert "phi3course.course" in graph and "phi3course.rehearsal" in graph
    assert snapshot.cycles(graph) == [], "import cycles (each a group of modules that import each other)"


def part(module: str) -> str:
    """Who a module is for: tools (educators, maintainers), rehearsal (the stand-in), serving (the scoring folder),
    or the learner's library (everything else, which the notebooks and the Azure ML job import)."""
    for name in ("tools", "rehearsal", "serving"):
        if module == f"phi3course.{name}" or module.startswith(f"phi3course.{name}."):
            return name
    return "library"


# Which parts each part may import: no arrow back up. The library reaches the stand-in only through mlclient (the
# gate that picks Azure ML or the stand-in) and the scoring script only through endpoint (which lays out its folder).
ALLOWED = {
    "tools": {"tools", "library", "rehearsal"},
    "rehearsal": {"rehearsal", "library"},
    "serving": {"serving", "library"},
    "library": {"library"},
}
GATES = {("phi3course.mlclient", "rehearsal"), ("phi3course.endpoint", "serving")}


def test_no_part_imports_one_above_it() -> None:
    graph = snapshot.import_graph()
    wrong = [
        f"{module} -> {imported}"
        for module, imports in graph.items()
        for imported in imports
        if part(imported) not in ALLOWED[part(module)] and (module, part(imported)) not in GATES
    ]
    assert wrong == []


def test_every_import_of_the_package_names_a_module_it_has() -> None:
    """A module moved or renamed leaves no import behind that only fails when its function runs."""
    import ast

    files = snapshot.module_files()
    packages = {name.rsplit(".", 1)[0] for name in files} | {snapshot.PACKAGE}
    dangling = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for source, names in snapshot._imports(tree, module, path.name == "__init__.py"):
            if source != snapshot.PACKAGE and not source.startswith(snapshot.PACKAGE + "."):
                continue  # the standard library, third parties
            if source not in files and source not in packages:
                dangling.append(f"{module}: {source}")
            elif source in packages and source not in files:  # a namespace without __init__: names are modules
                dangling += [f"{module}: {source}.{name}" for name in names if f"{source}.{name}" not in files]
    assert dangling == []


def test_the_scoring_folder_imports_nothing_but_hardware_from_the_library() -> None:
    graph = snapshot.import_graph()
    served = snapshot.closure(["phi3course.serving.score"], graph)
    assert {m for m in served if part(m) == "library"} <= {"phi3course.hardware"}


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_the_graph_sees_every_form_of_import_and_finds_a_cycle_through_a_function(tmp_path) -> None:
    folder = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from . import b\nfrom .c import thing\nimport os\n",
            "b.py": "def late():\n    import pkg.sub.d\n",
            "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\nthing = 1\n",
            "sub/__init__.py": "from .d import value\n",
            "sub/d.py": "value = 1\ndef back():\n    from .. import a\n",
        },
    )
    graph = snapshot.import_graph(folder, "pkg")
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b", "pkg.c"},
        "pkg.b": {"pkg.sub.d"},  # inside a function
        "pkg.c": set(),  # only for the type checker
        "pkg.sub": {"pkg.sub.d"},
        "pkg.sub.d": {"pkg.a"},  # two levels up, inside a function
    }
    assert snapshot.cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.d"]]
    assert snapshot.closure(["pkg.c"], graph) == {"pkg.c"}


def test_course_start_does_not_load_the_stand_in(tmp_path) -> None:
    """A dry run's first call records what a rehearsal cannot check without importing the stand-in."""
    script = f"""
        import json, sys
        from phi3course import course, profiles
        namespace = dict(profiles.parameters("azureml-dryrun-smoke"), run_dir={str(tmp_path / "run")!r})
        stage = course.start("00_setup", namespace)
        loaded = sorted(m for m in sys.modules if m.startswith("phi3course.rehearsal"))
        print(json.dumps({{"loaded": loaded, "note": stage.run.summary.get("rehearsal")}}))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=True, timeout=120
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == []
    assert seen["note"]["rehearsal"] is True and any("quota" in line for line in seen["note"]["cannot_check"])
