"""Whether the browser test can run: Chromium found, or one line saying what is missing and how to get it.

On a learner's machine a missing browser skips tests/test_browser.py (one line, before any notebook runs); in CI
it fails, so the browser test can never silently stop running there.
"""

from __future__ import annotations

import os
import shutil

import pytest

MISSING = (
    "Chromium is not installed: the browser test needs it (`sudo apt-get install chromium` on Debian/Ubuntu, "
    "or COURSE_CHROMIUM=/path/to/chrome)"
)


def browser_required() -> bool:
    """In CI (``CI=true``, which CI runners set) or when asked (``COURSE_REQUIRE_BROWSER=1``, as .ci/run does), a
    missing browser fails the test: there it must never stop running unnoticed. On a learner's machine it skips."""
    return any(os.environ.get(name, "").lower() in {"1", "true", "yes"} for name in ("CI", "COURSE_REQUIRE_BROWSER"))


def chromium(importing: bool = False) -> str | None:
    """The browser: ``COURSE_CHROMIUM`` or a Chromium on PATH (Playwright's own download is not used).

    Missing on a learner's machine: the whole module is skipped, one line. Missing in CI: each browser test fails
    (``importing``: None now, so that the failure is the tests', not a collection error that stops every test).
    """
    for name in filter(None, [os.environ.get("COURSE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]):
        if found := shutil.which(name):
            return found
    if not browser_required():
        pytest.skip(f"{MISSING}; skipped.", allow_module_level=True)
    if importing:
        return None
    pytest.fail(f"{MISSING}; in CI it is required (.ci/run installs it).", pytrace=False)


@pytest.mark.parametrize(
    ("environment", "outcome"), [({}, "skip"), ({"CI": "true"}, "fail"), ({"COURSE_REQUIRE_BROWSER": "1"}, "fail")]
)
def test_a_missing_browser_is_a_skip_for_a_learner_and_a_failure_in_ci(monkeypatch, environment, outcome) -> None:
    for name in ("CI", "COURSE_REQUIRE_BROWSER", "COURSE_CHROMIUM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", "/nonexistent")
    try:
        chromium()
    except BaseException as raised:  # pytest's skip and fail are BaseExceptions; a skip here must not skip this test
        outcome_seen, message = type(raised), str(raised)
    else:
        outcome_seen, message = None, ""
    assert outcome_seen is (pytest.skip.Exception if outcome == "skip" else pytest.fail.Exception)
    assert "Chromium is not installed" in message and "apt-get install chromium" in message
    assert "\n" not in message  # one line: what is missing and how to get it
