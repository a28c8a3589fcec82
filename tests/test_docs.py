"""The course's documents: every relative link and image resolves, every notebook parameter is explained."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from phi3course.paths import course_root
from phi3course.runner import course_notebooks

ROOT = course_root()
NOTEBOOKS = course_notebooks(include_cleanup=True)
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *NOTEBOOKS]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
MARKDOWN_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""<(?:img|a|source)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def markdown_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = nbformat.read(path, as_version=4).cells
        return "\n\n".join(c.source for c in cells if c.cell_type == "markdown")
    return path.read_text()


def links(markdown: str) -> list[str]:
    """Link and image targets outside code blocks and inline code."""
    text = INLINE_CODE.sub("", FENCE.sub("", markdown))
    return MARKDOWN_LINK.findall(text) + HTML_LINK.findall(text)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for target in links(markdown_of(path)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: — not checked offline
            continue
        file_part, _, fragment = target.partition("#")
        file_part = file_part.split("?")[0]
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{target}: points outside the course folder")
        elif not resolved.exists():
            problems.append(f"{target}: no such file {resolved.relative_to(root.resolve())}")
        elif fragment and resolved.suffix == ".md":
            anchors = {anchor(h) for h in HEADING.findall(FENCE.sub("", resolved.read_text()))}
            if fragment not in anchors:
                problems.append(f"{target}: no heading #{fragment} in {resolved.name}")
    return problems


@pytest.mark.parametrize("path", DOCUMENTS, ids=[p.name for p in DOCUMENTS])
def test_every_relative_link_and_image_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_the_link_check_finds_broken_links_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.svg").write_text("<svg/>")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# The Azure path\n![ok](images/a.svg) [ok](#the-azure-path) [web](https://example.com)\n"
        "![gone](images/b.png) [bad anchor](#nowhere) <img src='images/c.png'> [out](../../etc/passwd)\n"
        "```\n[in code](missing.md)\n```\n`[inline](missing.md)`\n"
    )
    assert broken_links(doc, root=tmp_path) == [
        "images/b.png: no such file images/b.png",
        "#nowhere: no heading #nowhere in doc.md",
        "../../etc/passwd: points outside the course folder",
        "images/c.png: no such file images/c.png",
    ]


def test_readme_and_notebooks_show_the_pictures_in_images() -> None:
    shown = {Path(t).name for path in DOCUMENTS for t in links(markdown_of(path)) if "images/" in t}
    assert {"architecture.svg", "chat_box.png"} <= shown
    unused = {p.name for p in (ROOT / "images").iterdir()} - shown - {"README.md"}
    assert not unused, f"images nothing shows: {sorted(unused)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_papermill_help_explains_every_parameter(path: Path) -> None:
    """What ``papermill --help-notebook`` prints for each parameter includes the comment beside it."""
    shown = subprocess.run(
        [sys.executable, "-m", "papermill", "--help-notebook", str(path)], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    entries = re.split(r"\n  (?=\w+: )", shown.stdout.split("Parameters inferred", 1)[1])[1:]
    helps = {entry.split(":", 1)[0]: " ".join(entry.split()) for entry in entries}
    declared = pm.inspect_notebook(str(path))
    assert set(helps) == set(declared)
    for name, info in declared.items():
        assert info["help"].strip(), f"{path.name}: {name!r} has no comment"
        assert " ".join(info["help"].split()) in helps[name], f"{path.name}: {name!r} shows {helps[name]!r}"
        assert "Unknown type" not in helps[name], f"{path.name}: annotate {name!r} (name: type = value)"
