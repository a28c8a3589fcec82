"""The import guard: a process started by the stand-in imports only the standard library and what its
environment's conda pip list installs (with what those require), as on Azure ML. An import the environment would
not satisfy fails here too, naming the package and the fix."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..azure import pip_requirements
from ..files import atomic_write_text, read_json, write_json

GUARD_SOURCE = r'''
"""Rehearsal import guard: only the standard library and the environment's distributions import."""
import importlib.util
import json
import os
import sys


def _install():
    path = os.environ.get("REHEARSAL_IMPORT_GUARD")
    if not path:
        return
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    owners, allowed = config["owners"], set(config["allowed"])
    drop = set(config.get("drop_paths", []))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") not in drop]

    def owner(fullname):
        parts = fullname.split(".")
        for size in range(len(parts), 0, -1):
            found = owners.get(".".join(parts[:size]))
            if found:
                return found
        return None

    def blocked(fullname):
        found = owner(fullname)
        return found if found and found not in allowed else None

    def message(fullname, dist):
        return (
            f"No module named {fullname!r} in this environment: {config['environment']} does not install "
            f"{dist!r}, so on Azure ML this import fails. Fix: {config['fix']} "
            "(rehearsal import guard)"
        )

    parents = set(config.get("allowed_parents", []))

    class Guard:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            dist = blocked(fullname)
            if not dist:
                return None
            if fullname in parents:
                # A package of a distribution the environment lacks, holding one it has (azure.monitor.opentelemetry
                # holds the exporter): there it is a namespace package, so its own __init__ never runs.
                import importlib.machinery

                found = importlib.machinery.PathFinder.find_spec(fullname, path)
                if found is not None and found.submodule_search_locations:
                    spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
                    spec.submodule_search_locations = list(found.submodule_search_locations)
                    return spec
            raise ModuleNotFoundError(message(fullname, dist), name=fullname)

    original = importlib.util.find_spec

    def find_spec(name, package=None):  # a probe for an optional package sees it absent, as on Azure
        absolute = importlib.util.resolve_name(name, package) if name.startswith(".") else name
        if blocked(absolute) and absolute not in parents:
            return None
        return original(name, package)

    importlib.util.find_spec = find_spec
    sys.meta_path.insert(0, Guard())


_install()
'''


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def module_owners() -> dict[str, str]:
    """Importable module or package → the installed distribution that provides it."""
    import importlib.metadata as metadata

    owners: dict[str, str] = {}
    for dist in metadata.distributions():
        name = normalise(dist.metadata["Name"] or "")
        for file in dist.files or []:
            parts = file.parts
            if not parts or ".." in parts or parts[0].endswith((".dist-info", ".egg-info", ".data")):
                continue
            if file.name == "__init__.py":
                module = ".".join(parts[:-1])
            elif len(parts) == 1 and file.suffix in {".py", ".so", ".pyd"}:
                module = file.name.split(".")[0]
            else:
                continue
            if module:
                owners.setdefault(module, name)
    return owners


def allowed_distributions(pip: list[str]) -> set[str]:
    """The distributions ``pip`` names and everything they require (markers evaluated here), transitively."""
    import importlib.metadata as metadata

    from packaging.requirements import InvalidRequirement, Requirement

    allowed: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = []
    for line in pip:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        todo.append((requirement.name, frozenset(requirement.extras)))
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (normalise(name), extras) in seen:
            continue
        seen.add((normalise(name), extras))
        allowed.add(normalise(name))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # listed but not installed here (e.g. azureml-mlflow): allowed, nothing to walk
        for spec in requires:
            requirement = Requirement(spec)
            if requirement.marker is not None:
                contexts = [{"extra": extra} for extra in extras] or [{"extra": ""}]
                if not any(requirement.marker.evaluate(context) for context in contexts):
                    continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return allowed


def editable_paths() -> list[str]:
    """Folders that editable installs add to sys.path (the course's own lib): not part of any environment."""
    import site

    paths = []
    for folder in {*site.getsitepackages(), site.getusersitepackages()}:
        for pth in Path(folder).glob("__editable__*.pth"):
            for line in pth.read_text(encoding="utf-8").splitlines():
                if line and not line.startswith(("import ", "#")):
                    paths.append(os.path.abspath(line.strip()))
    return paths


def cached_owners(root: Path) -> dict[str, str]:
    """:func:`module_owners`, kept in ``<root>/guard/owners.json`` (reading every distribution's file list is slow)."""
    cached = root / "guard" / "owners.json"
    if cached.is_file():
        return read_json(cached)
    owners = module_owners()
    write_json(cached, owners)
    return owners


def guard_env(
    root: Path, owners: dict[str, str], folder: Path, environment: Any, what: str, fix: str
) -> dict[str, str]:
    """Environment variables that put ``environment``'s import guard on a process; writes its config into
    ``folder`` and the guard itself (a ``sitecustomize``) into ``<root>/guard``."""
    pip = pip_requirements(environment)
    guard_dir = root / "guard"
    guard_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(guard_dir / "sitecustomize.py", GUARD_SOURCE)
    allowed = allowed_distributions(pip)
    parents = {
        ".".join(module.split(".")[:size])
        for module, dist in owners.items()
        if dist in allowed
        for size in range(1, module.count(".") + 1)
    }
    config = {
        "allowed_parents": sorted(parents),
        "environment": what if getattr(environment, "_is_anonymous", True) else f"{what} ({environment.name})",
        "allowed": sorted(allowed),
        "owners": owners,
        "fix": fix,
        "drop_paths": editable_paths(),
    }
    write_json(folder / "import-guard.json", config)
    return {"REHEARSAL_IMPORT_GUARD": str(folder / "import-guard.json"), "_GUARD_DIR": str(guard_dir)}


def with_guard(env: dict[str, str], guard: dict[str, str], pythonpath: str | None) -> dict[str, str]:
    guard = dict(guard)
    guard_dir = guard.pop("_GUARD_DIR")
    env.update(guard)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [guard_dir, pythonpath]))
    return env
