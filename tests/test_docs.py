"""The course's documents: links and images resolve, every notebook parameter is explained, every measured figure
lives in the generated docs/measurements.md, and the product speaks of itself, not of how it was made."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from phi3course.paths import course_notebooks, course_root

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
    pictures = {p.name for p in (ROOT / "images").iterdir() if p.suffix != ".json"}  # a .json: a screenshot's record
    unused = pictures - shown - {"README.md"}
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


# --- the measured figures: one generated page ------------------------------------------------------------------
def test_measurements_page_is_generated_from_the_records() -> None:
    """docs/measurements.md is what `make measurements` writes from docs/measurements/*.json, byte for byte."""
    from benchmarks import measurements

    expected = measurements.render(measurements.load_records())
    assert (ROOT / "docs" / "measurements.md").read_text() == expected, (
        "docs/measurements.md is stale: run `make measurements`"
    )


def test_measurements_check_fails_on_a_stale_page(tmp_path: Path) -> None:
    from benchmarks import measurements

    records, page = ROOT / "docs" / "measurements", tmp_path / "measurements.md"
    argv = ["--records", str(records), "--page", str(page)]
    assert measurements.main([*argv, "render", "--check"]) == 1  # no page yet
    assert measurements.main([*argv, "render"]) == 0
    assert measurements.main([*argv, "render", "--check"]) == 0
    page.write_text(page.read_text().replace("9 min 41 s", "9 min 40 s"))
    assert measurements.main([*argv, "render", "--check"]) == 1


def test_measurements_add_stamps_a_run_with_its_cpu_class(tmp_path: Path) -> None:
    """A run's summary.json goes in as it is, with the CPU class, date, command and conditions beside it."""
    from benchmarks import measurements

    summary = {
        "profile": "local",
        "stages": {"00_setup": {"seconds": 4.0, "ok": True}},
        "train": {"seconds": 100.0, "steps": 75, "tokens_per_second": 210.0, "precision": "fp32"},
        "eval": {"base": {"exact_match": 0.0, "general": 0.868}, "tuned": {"exact_match": 0.95, "general": 0.85}},
    }
    run = tmp_path / "summary.json"
    run.write_text(json.dumps(summary))
    records, page = tmp_path / "records", tmp_path / "page.md"
    argv = ["--records", str(records), "--page", str(page), "add", str(run), "--cpu-class", "native-bf16"]
    assert measurements.main([*argv, "--date", "2030-01-02", "--conditions", "idle", "--install-seconds", "99"]) == 0
    (written,) = records.glob("*.json")
    assert written.name == "2030-01-02-course-local-native-bf16.json"
    record = json.loads(written.read_text())
    assert {k: v for k, v in record.items() if k != "measurement"} == summary
    assert record["measurement"] | {"kind": "course"} == {
        "kind": "course",
        "cpu_class": "native-bf16",
        "date": "2030-01-02",
        "command": "make course",
        "what": "make course (`local` profile)",
        "conditions": "idle",
        "install_seconds": 99.0,
    }
    text = page.read_text()
    assert "| 1 min 39 s |" in text and "210 tokens/s fp32" in text and "0.98 ×" in text
    assert measurements.detect_cpu_class({"avx2", "avx512_bf16"}) == "native-bf16"
    assert measurements.detect_cpu_class({"avx2", "fma"}) == "avx2-only"
    with pytest.raises(ValueError, match="cpu_class"):
        measurements.check_record("x", {"measurement": {**record["measurement"], "cpu_class": "fast"}})


def test_measurements_add_writes_the_prefix_once_when_given_a_whole_record_name(tmp_path: Path) -> None:
    """--name is the word after date, kind and CPU class; a whole record's name given there is not prefixed again."""
    from benchmarks import measurements

    run = tmp_path / "forgetting.json"
    run.write_text(json.dumps([{"variant": "base model", "facts": 0.0, "general": 0.87}]))
    records, page = tmp_path / "records", tmp_path / "page.md"
    argv = ["--records", str(records), "--page", str(page), "add", str(run), "--cpu-class", "avx2-only"]
    for name in ("seeds", "2030-01-02-variants-avx2-only-whole.json"):
        assert measurements.main([*argv, "--date", "2030-01-02", "--name", name]) == 0
    assert sorted(path.name for path in records.glob("*.json")) == [
        "2030-01-02-variants-avx2-only-seeds.json",
        "2030-01-02-variants-avx2-only-whole.json",
    ]


def test_the_hub_sizing_takes_02_from_a_run_that_asked_the_base_model_everything(tmp_path: Path) -> None:
    """A learner's first run asks the base model every answer: a course record with answers read from the answer
    cache is listed, and says so, but the hub's expected times come from the latest run without."""
    from benchmarks import measurements

    records, page = tmp_path / "records", tmp_path / "page.md"
    records.mkdir()
    sizing = next((ROOT / "docs" / "measurements").glob("*-sizing-avx2-only-hub.json"))
    (records / "2030-01-01-sizing-avx2-only-hub.json").write_text(sizing.read_text())
    argv = ["--records", str(records), "--page", str(page), "add", "--cpu-class", "avx2-only", "--conditions", "idle"]
    for day, seconds, kept in (("2030-01-02", 300.0, []), ("2030-01-03", 200.0, ["--answers-kept", "the replay"])):
        run = tmp_path / f"{day}.json"
        run.write_text(json.dumps({"profile": "local", "stages": {"02_fine_tune": {"seconds": seconds, "ok": True}}}))
        assert measurements.main([*argv, str(run), "--date", day, *kept]) == 0
    text = page.read_text()
    assert "from its 5 min with 2 cores to itself ([2030-01-02]" in text
    assert "The base model's answers read from the answer cache: the replay." in text


def test_the_hub_sizing_takes_the_newest_run_of_a_day_by_its_finishing_time(tmp_path: Path) -> None:
    """Records of one day sort by their names; the run that finished last gives the expected times."""
    from benchmarks import measurements

    records, page = tmp_path / "records", tmp_path / "page.md"
    records.mkdir()
    sizing = next((ROOT / "docs" / "measurements").glob("*-sizing-avx2-only-hub.json"))
    (records / "2030-01-01-sizing-avx2-only-hub.json").write_text(sizing.read_text())
    argv = ["--records", str(records), "--page", str(page), "add", "--cpu-class", "avx2-only", "--conditions", "idle"]
    for name, seconds, finished in (
        ("b-earlier", 300.0, "2030-01-02T08:00:00+00:00"),
        ("a-later", 240.0, "2030-01-02T13:00:00+00:00"),
    ):
        run = tmp_path / f"{name}.json"
        summary = {"profile": "local", "finished": finished, "stages": {"02_fine_tune": {"seconds": seconds}}}
        run.write_text(json.dumps(summary))
        assert measurements.main([*argv, str(run), "--date", "2030-01-02", "--name", name]) == 0
    assert "from its 4 min with 2 cores to itself ([2030-01-02]" in page.read_text()


# --- the product speaks of itself only -------------------------------------------------------------------------
# How the course was built (rounds of work, sessions, issues, commits, design sections, machines lent or not) is
# no part of it. Prose only: markdown, comments and docstrings, never code ("round(" is Python's).
PROCESS_WORDS = re.compile(
    r"\brounds?\b(?![-\s]?trips?\b)(?!\()"
    r"|\b(?:this|that|last|earlier|previous|next|later|one|a|each|every|the same|a second)\s+sessions?\b(?!\s*[=(])"
    r"|\bsessions? (?:of work|notes?)\b"
    r"|\bissues?\s+#?\d+"
    r"|§\s*\d|\bCOURSE_DESIGN\b|\bof the design\b"
    r"|\bcommit(?:s|ted)?\s+(?:[0-9a-f]{7,40}|at|on)\b|\bas of commit\b"
    r"|(?<![\w#/.:-])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b(?![-.]\w)"
    r"|\blent\b|\bwhere (?:the course|it) (?:is|was) built\b|\bhelper agents?\b",
    re.I,
)
# A workshop's session is the product's own word; so are Agent Framework's and requests' sessions.
ALLOWED_SESSION = re.compile(r"\b(?:a|the|one|each|every) (?:\d+-minute |workshop )?session\b(?! (?:of work|notes?))")
# Files others are still mending: the cleanup of each is pending; empty this list as they are fixed.
PENDING_PROCESS_WORDS: set[str] = set()


def prose_of_python(source: str) -> str:
    """The comments and docstrings of Python source (a notebook cell's too; lines of IPython magic are dropped)."""
    import ast
    import io
    import tokenize

    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    source = "\n".join(lines)
    parts: list[str] = []
    try:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        parts += [t.string for t in tokens if t.type == tokenize.COMMENT]
        tree = ast.parse(source)
    except (SyntaxError, tokenize.TokenError):
        return "\n".join(re.findall(r"#.*$", source, re.M))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                parts.append(docstring)
    return "\n".join(parts)


def product_prose() -> dict[str, str]:
    """Every text the product speaks in: docs, notebooks (markdown and code comments), lib, benchmarks, flows."""
    texts: dict[str, str] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "docs").rglob("*.json"))]:
        texts[str(path.relative_to(ROOT))] = path.read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        texts[str(path.relative_to(ROOT))] = "\n".join(
            c.source if c.cell_type == "markdown" else prose_of_python(c.source) for c in cells
        )
    for folder in ("notebooks/profiles", "notebooks/solutions", "examples", "flows"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and ".promptflow" not in path.parts and "__pycache__" not in path.parts:
                text = path.read_text(errors="replace")
                texts[str(path.relative_to(ROOT))] = prose_of_python(text) if path.suffix == ".py" else text
    for folder in ("lib/phi3course", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            texts[str(path.relative_to(ROOT))] = prose_of_python(path.read_text())
    return texts


def process_words(text: str) -> list[str]:
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in PROCESS_WORDS.finditer(line):
            if not ALLOWED_SESSION.fullmatch(match.group(0)):
                hits.append(f"{number}: {match.group(0)!r} in {line.strip()[:100]!r}")
    return hits


def test_the_process_word_scan_finds_diary_words_and_spares_the_product_s_own() -> None:
    diary = (
        "This round's figures; the earlier round measured it. As of commit 4ee6c22 (issue 10, §6 of the design)\n"
        "no GPU was lent again; the last session ran it; not measured where the course is built; see COURSE_DESIGN"
    )
    assert len(process_words(diary)) == 11
    product = (
        "round(x, 2) is rounded; the loader's round trip and a round-trip test; a 90-minute session; the agent keeps\n"
        "the history in a session; each session's messages; requests.Session(); colour #1f77b4; sha256 abc; 2 × rank"
    )
    assert process_words(product) == []


def test_the_product_speaks_of_itself_only() -> None:
    found = {name: hits for name, text in product_prose().items() if (hits := process_words(text))}
    pending = set(found) & PENDING_PROCESS_WORDS
    assert set(found) - pending == set(), {name: found[name] for name in set(found) - pending}
    assert pending == PENDING_PROCESS_WORDS, f"clean now, take them off: {sorted(PENDING_PROCESS_WORDS - pending)}"


# --- every measured figure once, in docs/measurements.md ------------------------------------------------------
FIGURE = re.compile(
    r"\d[\d,.]*\s*(?:non-padding\s+)?tokens/s"
    r"|\d+\s*min\s+\d+\s*s\b|(?<![\w.])\d+(?:\.\d+)?\s?s\b"
    r"|(?<![=≥≤<>]\s)(?<![=≥≤<>~])(?<![\d.])\d+(?:\.\d+)?\s?[×x](?![\w\d])(?!\s*(?:rank|\d|the\s+rank))"
    r"|\d[\d,.]*\s*GFLOP/s"
    r"|\d[\d.]*\s*(?:requests|req)/s"
)
# Notebooks the lead is still mending: their figures move to links into docs/measurements.md.
PENDING_FIGURES: set[str] = set()


def figures_in(markdown: str) -> list[str]:
    text = FENCE.sub("", markdown)
    return [f"{m.group(0)!r} in {line.strip()[:100]!r}" for line in text.splitlines() for m in FIGURE.finditer(line)]


def test_the_figure_scan_finds_measured_figures_and_spares_rules_and_goals() -> None:
    measured = "225 tokens/s, 9 min 41 s, 0.98 × the base, 6.0× faster, 6.0x, 168 GFLOP/s, 0.54 requests/s, `local` 3 s"
    assert len(figures_in(measured)) == 8
    rules = "alpha = 2 × rank; ≥ 0.9 × base; 12 facts × 2; batch 4 × 2048; 3 epochs; 0x10; 15 ms; 0600; (5 min)"
    assert figures_in(rules) == []


def test_every_measured_figure_lives_in_the_measurements_page_only() -> None:
    """README, the workshop guide and the notebooks link to docs/measurements.md instead of copying its numbers."""
    documents = [p for p in DOCUMENTS if p.name != "measurements.md"] + sorted((ROOT / "notebooks").glob("*.ipynb"))
    found = {}
    for path in dict.fromkeys(documents):
        name = str(path.relative_to(ROOT))
        if hits := figures_in(markdown_of(path)):
            found[name] = hits
    pending = set(found) & PENDING_FIGURES
    assert set(found) - pending == set(), {name: found[name] for name in set(found) - pending}
    assert pending == PENDING_FIGURES, f"clean now, take them off PENDING_FIGURES: {sorted(PENDING_FIGURES - pending)}"


def test_a_variants_record_with_test_at_checks_shows_each_check_beside_the_test() -> None:
    """``--test-at-checks`` rows render as a table of checks, the kept one marked; rows without checks add none."""
    check = {"step": 12, "facts": 0.5, "general_vs_base": 0.897, "test_facts": 0.6, "test_general_vs_base": 0.95}
    record = {
        "measurement": {
            "kind": "variants",
            "what": "w",
            "cpu_class": "avx2-only",
            "date": "2026-01-01",
            "command": "c",
            "conditions": "idle",
        },
        "rows": [
            {"variant": "base model", "facts": 0.0, "general": 0.8},
            {
                "variant": "seed-7",
                "facts": 0.6,
                "general": 0.7,
                "best_step": 12,
                "checks": [{"step": 0, "facts": 0.0, "general_vs_base": 1.0}, check],
            },
        ],
    }
    from benchmarks import measurements

    lines = measurements.variants_section([("r.json", record)])
    assert "| seed-7 | 0 | 0 % | 1.000 × |  |  |  |" in lines
    # three digits: a slice at 0.897 × shows that it missed the 0.9 × target
    assert "|  | 12 | 50 % | 0.897 × | 60 % | 0.950 × | kept |" in lines
    assert not any("drift" in line for line in lines)  # checks measured without the drift: no drift columns
    record["rows"][1]["checks"][0] |= {"validation_drift": 0.0, "test_drift": 0.0}
    record["rows"][1]["checks"][1] |= {"validation_drift": 0.0812, "test_drift": 0.1451}
    lines = measurements.variants_section([("r.json", record)])
    assert "|  | 12 | 50 % | 0.897 × | 60 % | 0.950 × | 0.081 | 0.145 | kept |" in lines
    assert any(line.startswith("Each validation check") and "Drift:" in line for line in lines)
    record["rows"][1].pop("checks")
    assert not any("| step |" in line for line in measurements.variants_section([("r.json", record)]))
