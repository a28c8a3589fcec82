"""Profiles: named sets of notebook parameters kept as papermill parameter files.

``notebooks/profiles/<name>.yaml`` is the one place a profile's values live. The notebooks'
``parameters`` cells hold the ``local`` values (a test keeps them equal), papermill injects a
profile with ``-f``, and under test ``COURSE_PROFILE=smoke`` makes :func:`resolve` swap the
defaults for the smoke values, since nbval cannot inject parameters.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import yaml

from .paths import profiles_dir

PROFILE_ENV = "COURSE_PROFILE"
DEFAULT_PROFILE = "local"


class ProfileError(ValueError):
    """A profile name or a profile file that cannot be used."""


def available() -> list[str]:
    """Names of the profiles that have a parameter file."""
    return sorted(path.stem for path in profiles_dir().glob("*.yaml"))


@cache
def _load(name: str) -> dict[str, Any]:
    path = profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(f"Unknown profile {name!r}: there is no {path}. Choose one of {', '.join(available())}.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of parameter names to values.")
    if data.get("profile") != name:
        raise ProfileError(f"{path}: its 'profile' value must be {name!r}, found {data.get('profile')!r}.")
    return data


def parameters(name: str) -> dict[str, Any]:
    """The parameters of profile ``name`` (a fresh copy)."""
    return dict(_load(name))


def parameter_names() -> set[str]:
    """Every parameter any profile sets, and ``run_dir``: the names :func:`resolve` looks for in a notebook.

    ``run_dir`` is no profile's business (it defaults to ``runs/<profile>``), so no profile overrides it.
    """
    names: set[str] = {"run_dir"}
    for name in available():
        names.update(_load(name))
    return names


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
