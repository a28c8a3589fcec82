"""Profiles: named sets of notebook parameters.

Each setting has one default, written once: in the ``parameters`` cell of the notebook that uses it
(a setting several notebooks share, such as ``target``, has the same default in each; :func:`defaults`
refuses two). Those defaults are the ``local`` profile. A profile file ``notebooks/profiles/<name>.yaml`` names only
what differs from the profile it ``extends`` (``local`` unless it says otherwise). Papermill injects a profile's
values, and under test ``COURSE_PROFILE=smoke`` makes :func:`resolve` swap the defaults for the smoke values,
since nbval cannot inject parameters.
"""

from __future__ import annotations

import ast
import os
from functools import cache
from typing import Any

import yaml

from .paths import notebooks_dir, profiles_dir

PROFILE_ENV = "COURSE_PROFILE"
DEFAULT_PROFILE = "local"
PARAMETERS_TAG = "parameters"
# Keys of a profile file that are not notebook parameters.
EXTENDS = "extends"


class ProfileError(ValueError):
    """A profile name or a profile file that cannot be used."""


def available() -> list[str]:
    """Names of the profiles that have a parameter file."""
    return sorted(path.stem for path in profiles_dir().glob("*.yaml"))


def parameters_cell(notebook: os.PathLike[str] | str) -> dict[str, Any]:
    """The parameters a notebook's ``parameters`` cell declares, with their default values.

    The cell holds one ``name: type = literal  # what it does`` line per parameter (what papermill reads too).
    """
    import nbformat

    cells = [c for c in nbformat.read(notebook, as_version=4).cells if PARAMETERS_TAG in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ProfileError(f"{notebook}: needs exactly one cell tagged {PARAMETERS_TAG!r}, found {len(cells)}.")
    values: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if not isinstance(target, ast.Name) or node.value is None:
            raise ProfileError(f"{notebook}: the parameters cell holds only 'name: type = value' lines.")
        try:
            values[target.id] = ast.literal_eval(node.value)
        except ValueError:
            raise ProfileError(f"{notebook}: parameter {target.id!r} must be a literal value.") from None
    return values


@cache
def defaults() -> dict[str, Any]:
    """Every notebook parameter's default, from the notebooks' ``parameters`` cells (``run_dir`` left out:
    it defaults to ``runs/<profile>`` and no profile sets it)."""
    found: dict[str, Any] = {}
    where: dict[str, str] = {}
    for notebook in sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb")):
        for name, value in parameters_cell(notebook).items():
            if name == "run_dir":
                continue
            if name in found and found[name] != value:
                raise ProfileError(
                    f"{notebook.name}: {name} = {value!r}, but {where[name]} says {found[name]!r}: a setting has one "
                    "default; make them equal."
                )
            found.setdefault(name, value)
            where.setdefault(name, notebook.name)
    return found


@cache
def _deltas(name: str) -> dict[str, Any]:
    path = profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(f"Unknown profile {name!r}: there is no {path}. Choose one of {', '.join(available())}.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of parameter names to values.")
    if data.get("profile") != name:
        raise ProfileError(f"{path}: its 'profile' value must be {name!r}, found {data.get('profile')!r}.")
    unknown = sorted(set(data) - set(defaults()) - {EXTENDS})
    if unknown:
        raise ProfileError(f"{path}: {', '.join(unknown)} is no notebook's parameter (a typo?).")
    return data


@cache
def _load(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name in seen:
        raise ProfileError(f"profile {name!r} extends itself through {' -> '.join(seen)}.")
    own = dict(_deltas(name))
    parent = own.pop(EXTENDS, None if name == DEFAULT_PROFILE else DEFAULT_PROFILE)
    base = defaults() if parent is None else _load(parent, (*seen, name))
    return {**base, **own}


def parameters(name: str) -> dict[str, Any]:
    """The parameters of profile ``name``: the defaults, with what the profile (and those it extends) changes."""
    return dict(_load(name))


def changes(name: str) -> dict[str, Any]:
    """What profile ``name`` changes from the defaults (``profile`` left out)."""
    base = defaults()
    return {k: v for k, v in parameters(name).items() if k != "profile" and base.get(k) != v}


def parameter_names() -> set[str]:
    """Every notebook parameter, and ``run_dir``: the names :func:`resolve` looks for in a notebook."""
    return {"run_dir", *defaults()}


def resolve(values: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Apply the ``COURSE_PROFILE`` override to a notebook's parameter values.

    Returns the values in effect and, when the override changed anything, the profile that did.
    Only names the notebook already has are replaced, so a notebook never gains variables.
    """
    wanted = os.environ.get(PROFILE_ENV, "").strip()
    if not wanted or wanted == values.get("profile"):
        return dict(values), None
    override = parameters(wanted)
    resolved = dict(values)
    for key in values:
        if key in override:
            resolved[key] = override[key]
    resolved["profile"] = wanted
    return resolved, wanted
