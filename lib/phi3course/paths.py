"""Where the course keeps things: the repository, the profiles, the run directories and the cache."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def course_root() -> Path:
    """The folder that holds ``notebooks/`` and ``pyproject.toml``.

    ``COURSE_ROOT`` wins; otherwise the package's own checkout (editable install), otherwise the
    nearest parent of the working directory that has ``notebooks/profiles``.
    """
    if env := os.environ.get("COURSE_ROOT"):
        return Path(env).expanduser().resolve()
    candidate = PACKAGE_DIR.parents[1]
    if (candidate / "notebooks" / "profiles").is_dir():
        return candidate
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks" / "profiles").is_dir():
            return folder
    raise FileNotFoundError(
        "Cannot find the course folder (one with notebooks/profiles). Run from inside the course "
        "checkout or set COURSE_ROOT to it."
    )


def notebooks_dir() -> Path:
    return course_root() / "notebooks"


def profiles_dir() -> Path:
    return notebooks_dir() / "profiles"


def runs_dir() -> Path:
    return course_root() / "runs"


def cache_dir() -> Path:
    """Models and tokenizers converted once and reused by every run (``COURSE_CACHE`` overrides)."""
    if env := os.environ.get("COURSE_CACHE"):
        path = Path(env).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        path = base / "phi3course"
    path.mkdir(parents=True, exist_ok=True)
    return path


def course_notebooks(folder: Path | None = None, include_cleanup: bool = False) -> list[Path]:
    """The numbered notebooks in order; ``99_*`` (cleanup) only when asked."""
    found = sorted((folder or notebooks_dir()).glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in found if include_cleanup or not nb.name.startswith("99_")]
