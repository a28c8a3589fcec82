"""Code snapshots: the course's modules a piece of code imports, copied into a folder of their own.

An Azure ML job and an online deployment upload a code folder. Each gets only what its entry module imports
from ``phi3course`` (read from the source, imports inside functions included), so the upload holds nothing the
code never runs. The same import graph shows the package's layering: :func:`cycles` lists any import cycle.
"""

from __future__ import annotations

import ast
import filecmp
import shutil
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "phi3course"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_files(folder: Path = PACKAGE_DIR, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` (whose folder is ``folder``), by dotted name; a package is its ``__init__.py``."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        if "__pycache__" in parts or not all(part.isidentifier() for part in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package, *parts))] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """What ``tree`` imports anywhere (module level, functions, classes; not under ``if TYPE_CHECKING``), as
    (dotted source, names taken from it): ``import a.b`` is ("a.b", []), ``from .x import f`` is ("<pkg>.x", ["f"])."""
    found: list[tuple[str, list[str]]] = []
    here = module if is_package else module.rpartition(".")[0]
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.append((source, [alias.name for alias in node.names]))
        todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph(folder: Path = PACKAGE_DIR, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports: ``from . import x`` imports module ``x``; ``from .x import f``
    imports module ``x``. Imports of other packages (the standard library, third parties) are left out."""
    files = module_files(folder, package)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for source, names in _imports(tree, module, path.name == "__init__.py"):
            submodules = [f"{source}.{name}" for name in names if f"{source}.{name}" in files]
            targets.update(submodules)
            if source in files and len(submodules) < len(names or [None]):
                targets.add(source)  # a name defined in the module (or package) itself
        graph[module] = targets - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``, each as the modules around it (empty when the layering is one-way)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def closure(entries: Iterable[str], graph: dict[str, set[str]] | None = None) -> set[str]:
    """``entries`` and every module of the package they import, directly or through others."""
    graph = import_graph() if graph is None else graph
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        if module not in graph:
            raise KeyError(f"{module} is not a module of {PACKAGE}")
        seen.add(module)
        todo.extend(graph[module])
    return seen


def sync(dest: Path, sources: dict[str, Path]) -> Path:
    """Make folder ``dest`` hold exactly ``sources`` (relative name → file) and nothing else. A file already equal to
    its source is left alone, so a server running from ``dest`` keeps its files while the folder is laid out again."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for relative, source in sources.items():
        target = dest / relative
        if not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for path in sorted(dest.rglob("*"), reverse=True):  # what the folder held before and no longer should
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.relative_to(dest).as_posix() not in sources:
            path.unlink()
    return dest


def copy_package(entries: Iterable[str], dest: Path, folder: Path = PACKAGE_DIR, package: str = PACKAGE) -> Path:
    """Folder ``dest`` holding the package's modules that ``entries`` import, laid out as in the package
    (``dest/phi3course/…``, with the ``__init__.py`` of every package on the way), and nothing else."""
    files = module_files(folder, package)
    wanted = closure(entries, import_graph(folder, package))
    for module in list(wanted):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = module.split(".")
        wanted.update(".".join(parts[:size]) for size in range(1, len(parts)))
    return sync(dest, {files[m].relative_to(folder.parent).as_posix(): files[m] for m in sorted(wanted)})


def copy_flat(entry: str, dest: Path, folder: Path = PACKAGE_DIR, package: str = PACKAGE) -> Path:
    """Folder ``dest`` holding module ``entry`` and the package's modules it imports side by side, as top-level
    files (a scoring script and its siblings), and nothing else. Each module it imports must import nothing of the
    package itself."""
    files = module_files(folder, package)
    graph = import_graph(folder, package)
    wanted = closure([entry], graph) - {entry}
    nested = {module: sorted(graph[module]) for module in wanted if graph[module]}
    if nested:
        raise ValueError(f"{entry} travels with flat copies of {sorted(wanted)}, but these import more: {nested}")
    chosen = {files[m].name: files[m] for m in sorted({entry, *wanted})}
    if len(chosen) != len(wanted) + 1:
        raise ValueError(f"{entry} and the modules it imports share a file name: {sorted({entry, *wanted})}")
    return sync(dest, chosen)


def files(folder: Path) -> list[str]:
    """The files under ``folder`` (relative, sorted; Python's ``__pycache__`` left out): what an upload of it holds."""
    folder = Path(folder)
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
