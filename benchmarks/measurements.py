"""The course's measured figures: one generated page, ``docs/measurements.md``, from committed records.

    python -m benchmarks.measurements render [--check]
    python -m benchmarks.measurements add runs/bench.json [--cpu-class auto] [--command "make bench"] ...

A record is a JSON file in ``docs/measurements/``, in the format the course itself writes, with one more key,
``measurement``, that says where the figures come from: the CPU class (``native-bf16``: the CPU lists
``avx512_bf16`` or ``amx_bf16`` and trains in bf16; ``avx2-only``: it does not, and trains in fp32), the date,
the command that produced them, the conditions (idle or shared machine, fresh clone or not) and the recipe.
What a record does not know it says it does not know. Five kinds:

- ``course``: a run's ``runs/<profile>/summary.json`` (``make course``), with the install's seconds when the
  run was a fresh clone;
- ``bench``: ``runs/bench.json`` (``make bench``);
- ``variants``: the rows of ``<run>/forgetting.json`` (``python -m benchmarks.forgetting``) under ``rows``, or
  any table of trainings that differ in one setting (the own-facts phrasings);
- ``figures``: single figures no course file holds (memory, disk, a GPU check), one row each;
- ``sizing``: each learner's peak memory and CPU seconds in a real hub run (``tests/test_hub.py`` writes it with
  ``HUB_SIZING_RECORD``); with the newest ``local`` course record of the same CPU class it gives the table of
  learners × VM size × expected wall time of 02.
- ``exercises``: each "Try it" exercise's wall time (its exercise cell and its check cell, solutions in place),
  ``exercises`` a list of ``{"id", "title", "tier", "seconds"}``, as papermill timed the cells.

``render`` writes the page from the records; ``render --check`` fails when the page is stale (a test runs
it). ``add`` copies a new run's file into ``docs/measurements/`` with its ``measurement`` block, then renders.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "docs" / "measurements"
PAGE = ROOT / "docs" / "measurements.md"
CPU_CLASSES = ("native-bf16", "avx2-only", "gpu", "unknown")
KINDS = ("course", "bench", "variants", "figures", "sizing", "exercises")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
NOTEBOOKS = ("00_setup", "01_data", "02_fine_tune", "03_deploy", "04_prompt_flow_chat", "05_agent_framework")


# --- reading records --------------------------------------------------------------------------------------------
def kind_of(data: Any) -> str:
    """Which course file ``data`` is: a summary.json, a bench.json, a forgetting.json (or its rows), figures."""
    if isinstance(data, list) or "rows" in data:
        return "variants"
    if isinstance(data.get("exercises"), list):  # a summary.json's "exercises" is a dict of passes
        return "exercises"
    if "stages" in data:
        return "course"
    if "machine" in data or ("train" in data and "endpoint" in data):
        return "bench"
    if "figures" in data:
        return "figures"
    if "learners" in data:
        return "sizing"
    raise ValueError("not a summary.json, bench.json, forgetting.json, figures, sizing or exercises record")


def check_record(name: str, record: dict[str, Any]) -> None:
    """A record names its kind, CPU class, date, command and conditions; raises ValueError otherwise."""
    meta = record.get("measurement")
    if not isinstance(meta, dict):
        raise ValueError(f"{name}: no 'measurement' block")
    for key in ("kind", "cpu_class", "date", "command", "what", "conditions"):
        if not meta.get(key):
            raise ValueError(f"{name}: measurement.{key} is missing (write 'unknown' where it is not known)")
    if meta["kind"] not in KINDS:
        raise ValueError(f"{name}: kind {meta['kind']!r} is not one of {KINDS}")
    if meta["cpu_class"] not in CPU_CLASSES:
        raise ValueError(f"{name}: cpu_class {meta['cpu_class']!r} is not one of {CPU_CLASSES}")
    if meta["date"] != "unknown" and not re.fullmatch(r"\d{4}-\d\d-\d\d", meta["date"]):
        raise ValueError(f"{name}: date {meta['date']!r} is not YYYY-MM-DD or 'unknown'")


def load_records(folder: Path = RECORDS) -> list[tuple[str, dict[str, Any]]]:
    """Every record in ``folder``, checked, in name order (names start with the date)."""
    records = []
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        check_record(path.name, record)
        records.append((path.name, record))
    return records


# --- formatting -------------------------------------------------------------------------------------------------
def duration(seconds: float | None) -> str:
    """``469`` → ``7 min 49 s``; under a minute ``42 s``; None → an empty cell."""
    if seconds is None:
        return ""
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:g} s" if seconds < 10 and seconds != whole else f"{whole} s"
    minutes, rest = divmod(whole, 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def percent(share: float | None) -> str:
    return "" if share is None else f"{share * 100:.1f} %".replace(".0 %", " %")


def number(value: Any, unit: str = "") -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        value = f"{value:,.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, int):
        value = f"{value:,}"
    return f"{value} {unit}".strip() if unit else str(value)


def times(ratio: float | None, digits: int = 2) -> str:
    return "" if ratio is None else f"{ratio:.{digits}f} ×"


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def source(name: str, meta: dict[str, Any]) -> str:
    """The record's link, class and date: what every row of the page carries."""
    return f"[{meta['date']}](measurements/{name}) · {meta['cpu_class']}"


def notes(records: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per record: what was measured, by which command, under which conditions, with which recipe."""
    lines = []
    for name, record in records:
        meta = record["measurement"]
        text = f"- [{name}](measurements/{name}) ({meta['cpu_class']}, {meta['date']}): {meta['what']}. "
        text += f"Command: `{meta['command']}`. Conditions: {meta['conditions']}."
        if meta.get("recipe"):
            text += f" Recipe: {meta['recipe']}."
        if meta.get("answers_kept"):
            text += f" The base model's answers read from the answer cache: {meta['answers_kept']}."
        for note in meta.get("notes", []):
            text += f" {note}"
        lines.append(text.rstrip())
    return [*lines, ""]


# --- sections ---------------------------------------------------------------------------------------------------
def eval_share(summary: dict[str, Any], *path: str) -> float | None:
    value: Any = summary.get("eval") or {}
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) else None


def held_out(summary: dict[str, Any], model: str) -> float | None:
    return eval_share(summary, model, "exact_match")


def general_ratio(summary: dict[str, Any]) -> float | None:
    ratio = summary["measurement"].get("general_vs_base")
    base, tuned = eval_share(summary, "base", "general"), eval_share(summary, "tuned", "general")
    if ratio is None and base and tuned is not None:
        ratio = tuned / base
    return ratio


def course_section(records: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not records:
        return []
    out = ["## `make course`: the whole run, and each notebook", ""]
    out += [
        "Seconds each notebook's cells took (`stages` in `summary.json`); the whole run adds a few seconds per",
        "notebook to start its kernel. *Install* is `make setup` on a fresh clone; a blank cell was not recorded.",
        "",
    ]
    rows = []
    for name, record in records:
        meta, stages = record["measurement"], record.get("stages", {})
        notebooks = meta.get("notebooks_seconds")
        install = meta.get("install_seconds")
        total = install + notebooks if install is not None and notebooks is not None else None
        rows.append(
            [
                source(name, meta),
                f"`{record.get('profile', '?')}`",
                duration(install),
                duration(notebooks),
                duration(total),
                *(duration(stages.get(nb, {}).get("seconds")) for nb in NOTEBOOKS),
            ]
        )
    header = ["record", "profile", "install", "notebooks", "in all", *(nb[:2] for nb in NOTEBOOKS)]
    out += table(header, rows)
    out += ["What the runs learned (held-out facts, the general-knowledge probe, perplexity of the right answers):", ""]
    rows = []
    for name, record in records:
        meta, train = record["measurement"], record.get("train") or {}
        ppl = (eval_share(record, "base", "perplexity"), eval_share(record, "tuned", "perplexity"))
        base_general = eval_share(record, "base", "general")
        rows.append(
            [
                source(name, meta),
                " ".join(
                    filter(
                        None,
                        [
                            f"{number(train.get('steps'))} steps" if train.get("steps") else "",
                            duration(train.get("seconds")),
                            number(train.get("tokens_per_second"), "tokens/s"),
                            train.get("precision", ""),
                        ],
                    )
                ),
                " → ".join(percent(x) for x in (held_out(record, "base"), held_out(record, "tuned")) if x is not None),
                percent(eval_share(record, "flow", "tuned")),
                percent(eval_share(record, "agent_framework")),
                " → ".join(filter(None, (percent(base_general), percent(eval_share(record, "tuned", "general"))))),
                times(general_ratio(record)),
                " → ".join(number(x) for x in ppl if x is not None),
            ]
        )
    header = ["record", "training in 02", "held-out, base → tuned", "via flow (04)", "via Agent Framework (05)"]
    out += table([*header, "general probe, base → tuned", "general × base", "perplexity"], rows)
    return out + notes(records)


def bench_section(records: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not records:
        return []
    out = ["## `make bench`", "", "### Training: the course's recipe against the original tutorial's", ""]
    out += [
        "Non-padding tokens per second over the timed optimizer steps; efficiency = achieved training FLOP/s ÷ the",
        "matmul FLOP/s measured in the same run, in the precision the recipe trains in (the estimate is in",
        "`benchmarks/bench.py`).",
        "",
    ]
    rows = []
    for name, record in records:
        train, machine = record.get("train"), record.get("machine") or {}
        if not train:
            continue
        rates = machine.get("matmul_gflops_by_precision") or {}
        matmul = ", ".join(f"{k} {number(v)}" for k, v in rates.items() if isinstance(v, int | float))
        rows.append(
            [
                source(name, record["measurement"]),
                train.get("precision", ""),
                number(train.get("tokens_per_second")),
                number(train.get("achieved_gflops")),
                number(train.get("efficiency")),
                matmul or number(train.get("matmul_gflops")),
                number(train.get("seed_recipe_tokens_per_second")),
                times(train.get("vs_seed_recipe")),
            ]
        )
    header = ["record", "precision", "tokens/s", "GFLOP/s", "efficiency", "matmul GFLOP/s", "tutorial tokens/s"]
    out += table([*header, "ours ÷ tutorial"], rows)
    rows = []
    for name, record in records:
        ep = record.get("endpoint")
        if not ep:
            continue
        rows.append(
            [
                source(name, record["measurement"]),
                f"{ep.get('model', '')}, {ep.get('max_new_tokens', '')} new tokens",
                number(ep.get("rps_1")),
                number(ep.get("p50_ms_1"), "ms"),
                number(ep.get("rps_8")),
                number(ep.get("p50_ms_8"), "ms"),
                times(ep.get("throughput_8_vs_1")),
                number(ep.get("server_rss_gib"), "GiB"),
            ]
        )
    if rows:
        out += ["### The local endpoint under load (1 and 8 clients)", ""]
        header = ["record", "model", "requests/s, 1 client", "p50", "requests/s, 8 clients", "p50", "8 ÷ 1"]
        out += table([*header, "server memory"], rows)
    rows = []
    for name, record in records:
        fl = record.get("flow")
        if not fl or "skipped" in fl:
            continue
        ratio = fl.get("overhead_ratio")
        af_ratio = fl.get("agent_framework_overhead_ratio")
        rows.append(
            [
                source(name, record["measurement"]),
                fl.get("model", ""),
                number(fl.get("calls")),
                number(fl.get("direct_p50_ms"), "ms"),
                f"{number(fl.get('overhead_ms'), 'ms')} ({percent(ratio)})" if ratio is not None else "",
                f"{number(fl.get('agent_framework_overhead_ms'), 'ms')} ({percent(af_ratio)})"
                if af_ratio is not None
                else "",
            ]
        )
    if rows:
        out += ["### What the flow adds over a direct endpoint call (p50)", ""]
        header = ["record", "model", "calls", "direct p50", "`pf flow serve` adds", "Agent Framework (05) adds"]
        out += table(header, rows)
    return out + notes(records)


def variants_section(records: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not records:
        return []
    out = ["## Trainings that differ in one setting", ""]
    out += [
        "Each row trains once with `train.train` (the Azure ML job's function, the same `LoraConfig` and `SFTConfig`",
        "as 02) and is scored as 02 scores: held-out facts answered right, and the general-knowledge probe as a",
        "share of the base model's score. A seed moves both by several questions: one held-out question is",
        "1.7 % of 60, one probe question 0.02 × of the base score.",
        "",
    ]
    for name, record in records:
        meta = record["measurement"]
        rows_in = record["rows"]
        out += [f"### {meta['what'][0].upper()}{meta['what'][1:]}", "", f"{source(name, meta)}.", ""]
        kinds = ("train_rows", "steps", "best_step", "train_seconds")
        extra = [k for k in kinds if any(r.get(k) is not None for r in rows_in)]
        rows = []
        for row in rows_in:
            changes = row.get("changes") or {}
            rows.append(
                [
                    row["variant"],
                    ", ".join(f"{k}={v}" for k, v in changes.items()) or "",
                    number(row.get("seed")),
                    percent(row.get("facts")) if row.get("facts") is not None else row.get("facts_text", ""),
                    percent(row.get("general")),
                    times(row.get("general_vs_base")),
                    *(duration(row.get(k)) if k == "train_seconds" else number(row.get(k)) for k in extra),
                    row.get("note", ""),
                ]
            )
        header = ["variant", "changed", "seed", "held-out facts", "general", "general × base"]
        labels = {
            "train_rows": "training rows",
            "steps": "steps",
            "best_step": "kept step (model selection)",
            "train_seconds": "training time",
        }
        out += table([*header, *(labels[k] for k in extra), "note"], rows)
        out += checks_table(rows_in)
    return out + notes(records)


def checks_table(rows_in: list[dict[str, Any]]) -> list[str]:
    """The validation checks of each variant beside the test asked at the same steps (``--test-at-checks``)."""
    checks = [check for row in rows_in for check in row.get("checks") or []]
    drift = any("test_drift" in check for check in checks)  # records measured before the drift have none
    rows = [
        [
            row["variant"] if i == 0 else "",
            check["step"],
            percent(check["facts"]),
            times(check["general_vs_base"], 3),  # three digits: 0.897 × misses the 0.9 × target, "0.90 ×" hid it
            percent(check.get("test_facts")),  # "" where the test was not asked
            times(check.get("test_general_vs_base"), 3),
            *([drift_text(check.get("validation_drift")), drift_text(check.get("test_drift"))] if drift else []),
            "kept" if check["step"] == row.get("best_step") else "",
        ]
        for row in rows_in
        for i, check in enumerate(row.get("checks") or [])
    ]
    if not rows:
        return []
    header = ["variant", "step", "validation facts", "validation general × base", "test facts", "test general × base"]
    intro = "Each validation check beside the test asked at the same step (measured only; training never reads it):"
    if drift:
        header += ["validation drift", "test drift"]
        intro = intro.removesuffix(":") + (
            ". Drift: how much less likely the model finds the base model's own answers to the probe's questions than"
            " the base model did (the mean rise in their loss per token; 0 = answers as the base model does), on the"
            " validation slice and on the test probe:"
        )
    return ["", intro, "", *table([*header, "selection"], rows)]


def drift_text(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def figures_section(records: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not records:
        return []
    out = ["## Other figures", ""]
    rows = []
    for name, record in records:
        for row in record["figures"]:
            rows.append([source(name, record["measurement"]), row["what"], row["value"], row.get("note", "")])
    out += table(["record", "what", "figure", "note"], rows)
    return out + notes(records)


# What a learner's server is given on one machine (hub/course_hub.py's HUB_MEM_LIMIT and HUB_CPU_LIMIT defaults)
# and on Kubernetes (hub/kubernetes/z2jh-values.yaml's guarantees): the `local` profile's measured peak, rounded up.
LEARNER_GIB, LEARNER_CORES = 4, 2
SYSTEM_GIB = 2  # the hub, its proxy and the operating system
# cores, GiB: general-purpose sizes (4 GiB a core) and memory-optimized ones (8 GiB a core), as clouds offer them
VM_SIZES = [(4, 16), (8, 32), (16, 64), (32, 128), (64, 256), (8, 64), (16, 128), (32, 256)]
CLASS_SIZES = [2, 4, 8, 16, 32]


def expected_02_seconds(seconds_02: float, learners: int, cores: int) -> float:
    """02 with ``learners`` running it at once on ``cores``: 02 is CPU-bound, and was measured with 2 cores to
    itself, so it takes as long until the learners need more cores than there are, then longer in proportion."""
    return seconds_02 * max(1.0, learners * LEARNER_CORES / cores)


def sizing_section(records: list[tuple[str, dict[str, Any]]], courses: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not records:
        return []
    out = ["## Sizing a class", ""]
    rows = []
    for name, record in records:
        for learner in record["learners"]:
            rows.append(
                [
                    source(name, record["measurement"]),
                    learner["learner"],
                    number(learner["peak_rss_mib"], "MiB"),
                    number(learner["cpu_seconds"], "CPU s"),
                    duration(record.get("wall_seconds")),
                ]
            )
    out += [
        "Each learner's own processes (server, kernel, the run) in a real two-learner hub run of 00 and 01:",
        "",
        *table(["record", "learner", "peak memory", "CPU time", "wall time, both at once"], rows),
    ]
    name, record = records[-1]
    cpu_class = record["measurement"]["cpu_class"]
    local = [
        (n, r)
        for n, r in courses
        if r.get("profile") == "local" and r["measurement"]["cpu_class"] == cpu_class
        and (r.get("stages") or {}).get("02_fine_tune", {}).get("seconds")
        and not r["measurement"].get("answers_kept")  # a learner's first run asks the base model everything
    ]  # fmt: skip
    if not local:
        return [*out, f"No `local` course record of the {cpu_class} class yet: no table of expected times.", ""]
    # the newest run: records of one day sort by name, so the run's own finishing time decides where it has one
    course_name, course = max(local, key=lambda item: (item[1]["measurement"]["date"], item[1].get("finished") or ""))
    seconds_02 = float(course["stages"]["02_fine_tune"]["seconds"])
    measured_gib = max(learner["peak_rss_mib"] for learner in record["learners"]) / 1024
    out += [
        f"Expected wall time of 02 (`local` profile) when every learner runs it at once, from its "
        f"{duration(seconds_02)} with 2 cores to itself ([{course['measurement']['date']}](measurements/{course_name}),"
        f" {cpu_class}): each learner is given {LEARNER_GIB} GiB and {LEARNER_CORES} cores (the `local` profile's "
        f"peak, rounded up; with the smoke model a learner's processes peaked at {measured_gib:.1f} GiB above), "
        f"{SYSTEM_GIB} GiB go to the hub and the system; past the cores, time grows in proportion; a dash: the memory "
        "does not hold them.",
        "",
    ]
    rows = []
    for cores, gib in VM_SIZES:
        holds = (gib - SYSTEM_GIB) // LEARNER_GIB
        cells = [
            duration(expected_02_seconds(seconds_02, learners, cores)) if learners <= holds else "—"
            for learners in CLASS_SIZES
        ]
        rows.append([f"{cores} cores, {gib} GiB", holds, *cells])
    out += table(["VM", "learners it holds", *(f"{n} learners" for n in CLASS_SIZES)], rows)
    return out + notes(records)


def exercises_section(records: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not records:
        return []
    out = ["## The exercises: how long each takes to run", ""]
    out += [
        'Wall time of each "Try it" exercise with its reference solution in place: the exercise cell and its',
        "check cell, as papermill timed them, in a run of the solved notebooks. The time a learner needs to read,",
        "predict and write comes on top; an exercise that trains (02.1, 02.2) is mostly machine time.",
        "",
    ]
    rows = []
    for name, record in records:
        for row in record["exercises"]:
            rows.append(
                [
                    source(name, record["measurement"]),
                    f"`{record.get('profile', '?')}`",
                    f"{row['id']} {row.get('title', '')}".strip(),
                    row.get("tier", ""),
                    duration(row.get("seconds")),
                    row.get("note", ""),
                ]
            )
    out += table(["record", "profile", "exercise", "tier", "wall time", "note"], rows)
    return out + notes(records)


def render(records: list[tuple[str, dict[str, Any]]]) -> str:
    """The whole page, from the records alone (no clock, no machine: the same records give the same page)."""
    by_kind: dict[str, list[tuple[str, dict[str, Any]]]] = {kind: [] for kind in KINDS}
    for name, record in records:
        by_kind[record["measurement"]["kind"]].append((name, record))
    lines = [
        "# Measurements",
        "",
        "<!-- Generated by `python -m benchmarks.measurements render` (`make measurements`) from the records in",
        "docs/measurements/. Do not edit by hand: add a record and render again. -->",
        "",
        "Every figure the course quotes, each with the machine class it was measured on, the date and the command.",
        "There are two CPU classes, and a figure from one does not stand for the other:",
        "",
        "- **native-bf16**: the CPU computes bf16 matmuls (`lscpu` lists `avx512_bf16` or `amx_bf16`); training",
        "  runs in bf16 where 02's short probe measures it faster than fp32.",
        "- **avx2-only**: it does not (most laptops); torch would only emulate bf16, so training runs in fp32.",
        "",
        "00_setup's machine table names the class of the machine it runs on. The machines here had 2 CPU cores.",
        "Where a record does not know a condition (an idle machine, a fresh clone), it says so. To add a run:",
        "`python -m benchmarks.measurements add runs/<profile>/summary.json` (or `runs/bench.json`, or a",
        "`forgetting.json`), then commit the new record and this page.",
        "",
        "A record's recipe is the one of its day: \"the local profile's\" in a record dated before 2026-12-05 means",
        "LoRA on every attention and MLP projection of the upper layers; since then the recipe adapts the MLP",
        "projections only (the records of 2026-12-05 name which one they trained).",
        "",
    ]
    lines += course_section(by_kind["course"])
    lines += bench_section(by_kind["bench"])
    lines += variants_section(by_kind["variants"])
    lines += figures_section(by_kind["figures"])
    lines += sizing_section(by_kind["sizing"], by_kind["course"])
    lines += exercises_section(by_kind["exercises"])
    return "\n".join(lines).rstrip("\n") + "\n"


# --- adding a record --------------------------------------------------------------------------------------------
def detect_cpu_class(flags: set[str] | None = None) -> str:
    """``native-bf16`` or ``avx2-only`` from the CPU flags Linux lists (as ``lscpu`` shows them)."""
    if flags is None:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            raise SystemExit("no /proc/cpuinfo here: pass --cpu-class native-bf16 or avx2-only") from None
        flags = set(next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), "").split())
    if flags & set(NATIVE_BF16_FLAGS):
        return "native-bf16"
    return "avx2-only" if "avx2" in flags else "unknown"


def make_record(data: Any, *, cpu_class: str, command: str, what: str, conditions: str, day: str, **extra: Any) -> dict:
    """``data`` as the course wrote it, with its ``measurement`` block (a forgetting.json list goes under rows)."""
    kind = kind_of(data)
    body = {"rows": data} if isinstance(data, list) else {k: v for k, v in data.items() if k != "measurement"}
    meta = {"kind": kind, "cpu_class": cpu_class, "date": day, "command": command, "what": what}
    meta |= {"conditions": conditions, **{k: v for k, v in extra.items() if v is not None}}
    return {"measurement": meta, **body}


def add(args: argparse.Namespace) -> Path:
    data = json.loads(Path(args.file).read_text(encoding="utf-8"))
    kind = kind_of(data)
    cpu_class = detect_cpu_class() if args.cpu_class == "auto" else args.cpu_class
    defaults = {
        "course": ("make course", f"make course (`{data.get('profile', '?')}` profile)" if kind == "course" else ""),
        "bench": ("make bench", "make bench"),
        "variants": ("python -m benchmarks.forgetting", "trainings that differ in one setting"),
        "figures": ("unknown", "figures"),
        "exercises": ("python -m phi3course.exercises solve, then the solved notebooks", "the exercises' wall time"),
    }[kind]
    record = make_record(
        data,
        cpu_class=cpu_class,
        command=args.command or defaults[0],
        what=args.what or defaults[1],
        conditions=args.conditions,
        day=args.date,
        install_seconds=args.install_seconds,
        notebooks_seconds=args.notebooks_seconds,
        recipe=args.recipe,
        answers_kept=args.answers_kept or None,
    )
    check_record("new record", record)
    label = data.get("profile", "") if kind in ("course", "exercises") else ""
    prefix = "-".join(filter(None, [args.date, kind, label, cpu_class]))
    name = (args.name or "").removesuffix(".json")
    name = name.removeprefix(f"{prefix}-")  # a whole record name given: its prefix is written once, not twice
    stem = "-".join(filter(None, [prefix, name]))
    target = Path(args.records) / f"{stem}.json"
    if target.exists():
        raise SystemExit(f"{target} exists: give the record a --name")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.measurements", description=__doc__.splitlines()[0])
    parser.add_argument("--records", default=str(RECORDS), help="the records' folder (default: docs/measurements)")
    parser.add_argument("--page", default=str(PAGE), help="the page to write (default: docs/measurements.md)")
    commands = parser.add_subparsers(dest="action", required=True)
    show = commands.add_parser("render", help="write the page from the records")
    show.add_argument("--check", action="store_true", help="write nothing; exit 1 when the page is stale")
    new = commands.add_parser("add", help="copy a run's summary.json, bench.json or forgetting.json in as a record")
    new.add_argument("file", help="runs/<profile>/summary.json, runs/bench.json or <run>/forgetting.json")
    new.add_argument("--cpu-class", default="auto", choices=("auto", *CPU_CLASSES), help="auto: from /proc/cpuinfo")
    new.add_argument("--command", help="what produced the file (default: make course / make bench / the benchmark)")
    new.add_argument("--what", help="one line: what was measured")
    new.add_argument("--conditions", default="unknown", help="idle or shared machine, fresh clone or not, ...")
    new.add_argument("--recipe", help="the training recipe, where it differs from the profile's")
    new.add_argument("--install-seconds", type=float, help="make setup's seconds, for a fresh clone")
    new.add_argument("--notebooks-seconds", type=float, help="the whole make course's seconds, kernel starts included")
    new.add_argument(
        "--answers-kept", help="a course run: the base-model answers read from the answer cache (unset: all asked)"
    )
    new.add_argument("--date", default=date.today().isoformat(), help="YYYY-MM-DD (default: today)")
    new.add_argument(
        "--name", help="a word that tells this record from another of the same day and kind (after date, kind, class)"
    )
    args = parser.parse_args(argv)
    page = Path(args.page)
    if args.action == "add":
        print(f"added {add(args)}")
    text = render(load_records(Path(args.records)))
    if args.action == "render" and args.check:
        if not page.exists() or page.read_text(encoding="utf-8") != text:
            print(f"{page} is stale: run `make measurements`", file=sys.stderr)
            return 1
        return 0
    page.write_text(text, encoding="utf-8")
    print(f"written {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
