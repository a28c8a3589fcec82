"""The run directory: what one course run has made, carried from notebook to notebook.

``state.json`` holds what later notebooks need (data paths, MLflow URIs, the endpoint and *where*
its key is kept); ``summary.json`` holds what happened (each notebook's seconds, the data, the training,
the evaluations, the endpoint, the chat). Secrets live in separate files with 0600 permissions and never
enter either JSON file.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .files import atomic_write_text, read_json, write_json

SUMMARY_KEYS = ("profile", "model", "started", "finished", "stages", "data", "train", "eval", "endpoint", "chat")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SECRET_WORDS = re.compile(r"(key|secret|token|password)", re.IGNORECASE)


def now() -> str:
    """The current time as an ISO 8601 string in UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class RunDir:
    """One run's folder: ``runs/<profile>/`` unless told otherwise."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    # state -----------------------------------------------------------------------------------
    def _fix(self, path: Path, what: str) -> str:
        """What to do about a damaged JSON file of this run (the message of :class:`DamagedFileError`)."""
        return (
            f"It records {what}. Fix it in an editor, or move it aside (mv {path} {path}.damaged) and run the "
            f"notebooks again from 00_setup with the same profile and run_dir ({self.path})"
        )

    @property
    def state(self) -> dict[str, Any]:
        fix = self._fix(self.state_path, "what later notebooks need (data paths, the model, the endpoint)")
        return read_json(self.state_path, default={}, expect=dict, fix=fix)

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default)

    def require(self, key: str, made_by: str) -> Any:
        """A state value a notebook needs, or an error that names the notebook that makes it."""
        value = self.state.get(key)
        if value is None:
            raise KeyError(f"{self.state_path} has no {key!r} yet: run {made_by} first (same profile and run_dir).")
        return value

    def remember(self, **values: Any) -> dict[str, Any]:
        """Add values to ``state.json``; refuses anything that looks like a secret."""
        for key, value in values.items():
            if _SECRET_WORDS.search(key) and not key.endswith(("_path", "_file", "_connection")):
                raise ValueError(
                    f"state.json must not hold secrets: store {key!r} with RunDir.write_secret() and "
                    f"remember its path as '{key}_path' instead."
                )
            if isinstance(value, Path):
                values[key] = str(value)
        state = self.state
        state.update(values)
        write_json(self.state_path, state)
        return state

    # summary ---------------------------------------------------------------------------------
    @property
    def summary(self) -> dict[str, Any]:
        fix = self._fix(self.summary_path, "what each notebook did (times, data, training, evaluations)")
        data = read_json(self.summary_path, default={}, expect=dict, fix=fix)
        for key in SUMMARY_KEYS:
            data.setdefault(key, {} if key == "stages" else None)
        return data

    def update_summary(self, **sections: Any) -> None:
        """Set top-level keys; dictionaries are merged into what is there."""
        summary = self.summary
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(summary.get(key), dict):
                summary[key] = {**summary[key], **value}
            else:
                summary[key] = value
        write_json(self.summary_path, summary)
        share_with_group(self.summary_path)

    def record_stage(self, name: str, seconds: float, ok: bool, **extra: Any) -> None:
        entry = {"seconds": round(seconds, 2), "ok": ok, **extra}
        self.update_summary(stages={name: entry}, finished=now())

    # secrets ---------------------------------------------------------------------------------
    def secret_path(self, name: str) -> Path:
        if not _SECRET_NAME.match(name):
            raise ValueError(f"secret name {name!r}: use letters, digits, '.', '_' or '-' only.")
        return self.path / "secrets" / name

    def write_secret(self, name: str, value: str) -> Path:
        """Store a secret readable by its owner only (0600) and return its path."""
        folder = self.path / "secrets"
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
        return atomic_write_text(self.secret_path(name), value, mode=0o600)

    def read_secret(self, name: str) -> str:
        path = self.secret_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"No secret {name!r} in {path.parent}: the notebook that makes it has not run.")
        return path.read_text(encoding="utf-8")

    def new_secret(self, name: str, nbytes: int = 32) -> Path:
        """Make a random URL-safe secret, store it, and return its path (never the value)."""
        return self.write_secret(name, secrets.token_urlsafe(nbytes))


def share_with_group(path: Path) -> None:
    """Make ``path`` readable by the group named in ``COURSE_SHARE_GROUP`` (chgrp, 0640), for ``classroom collect``.

    Only ``summary.json`` is shared this way (it holds no secrets); without the variable it stays 0600. A group
    that does not exist, or that the learner is not in, leaves the file private and warns how to fix it.
    """
    group = os.environ.get("COURSE_SHARE_GROUP", "").strip()
    if not group:
        return
    try:
        import grp

        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
        os.chmod(path, 0o640)
    except (ImportError, KeyError, OSError) as error:
        import warnings

        reason = "no such group" if isinstance(error, KeyError) else str(error)
        warnings.warn(
            f"COURSE_SHARE_GROUP={group!r}: {path} stays readable by you only ({reason}). Set it to a group you "
            "are in (see 'id -Gn'), the one your educator's account is in, or unset it.",
            stacklevel=2,
        )


def mask(secret: str, shown: int = 4) -> str:
    """A secret as a learner may see it: the first few characters and its length."""
    if len(secret) <= shown:
        return "*" * len(secret)
    return f"{secret[:shown]}…({len(secret)} chars)"
