from __future__ import annotations

import json

import pytest

from phi3course import data


def test_same_seed_same_files_byte_for_byte(tmp_path) -> None:
    first = data.prepare("synthetic", tmp_path / "a", seed=7, subjects=4)
    second = data.prepare("synthetic", tmp_path / "b", seed=7, subjects=4)
    other = data.prepare("synthetic", tmp_path / "c", seed=8, subjects=4)
    for split in ("train", "test"):
        assert first.files[split].read_bytes() == second.files[split].read_bytes()
        assert first.files[split].read_bytes() != other.files[split].read_bytes()


def test_test_split_holds_only_phrasings_never_trained_on() -> None:
    train, test = data.synthetic(seed=3, subjects=5)
    trained = {(row["fact"].split("/")[1], row["phrasing"]) for row in train}
    tested = {(row["fact"].split("/")[1], row["phrasing"]) for row in test}
    assert trained.isdisjoint(tested)
    train_questions = {row["messages"][0]["content"] for row in train}
    assert all(row["messages"][0]["content"] not in train_questions for row in test)


def test_every_tested_fact_is_taught_and_answers_contain_the_value() -> None:
    train, test = data.synthetic(seed=3, subjects=5)
    assert {row["fact"] for row in test} == {row["fact"] for row in train}
    for row in train + test:
        assert row["answer"] in row["messages"][1]["content"]
    assert len(train) == 5 * 5 * 7 and len(test) == 5 * 5 * 3


def test_facts_are_distinct_within_a_kind() -> None:
    facts = data.make_facts(seed=1, subjects=len(data.UNITS))
    for kind in data.TEMPLATES:
        values = [f.value for f in facts if f.kind == kind]
        assert len(set(values)) == len(values), kind


@pytest.mark.parametrize("subjects", [0, len(data.UNITS) + 1])
def test_subjects_out_of_range_is_refused(subjects: int) -> None:
    with pytest.raises(data.DataError, match="subjects must be between"):
        data.synthetic(subjects=subjects)


def test_unknown_source_names_the_choices(tmp_path) -> None:
    with pytest.raises(data.DataError, match="synthetic, wikitext, ultrachat"):
        data.prepare("wiki", tmp_path)


def test_hub_sources_offline_say_what_to_use_instead(tmp_path) -> None:
    with pytest.raises(data.DataError, match="data_source='synthetic'"):
        data.prepare("wikitext", tmp_path)
    assert not (tmp_path / "train.jsonl").exists()


def write(tmp_path, text: str):
    path = tmp_path / "rows.jsonl"
    path.write_text(text)
    return path


def test_read_jsonl_round_trip(tmp_path) -> None:
    rows = [data.chat_row("q?", "a.", answer="a"), data.chat_row("q2?", "b.", answer="b")]
    assert data.read_jsonl(data.write_jsonl(tmp_path / "r.jsonl", rows), field="messages") == rows


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"text": "ok"}\n{"text": "broken"\n', r"rows.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n\n[1, 2]\n', r"rows.jsonl:3: expected a JSON object"),
        ('{"text": "ok"}\n{"prompt": "x"}\n', r"rows.jsonl:2: the row has no 'messages' or 'text' field"),
        ('{"messages": []}\n', r"rows.jsonl:1: 'messages' must be a non-empty list"),
        ('{"messages": [{"role": "user"}]}\n', r"rows.jsonl:1: messages\[0\] must be an object with a string"),
        ('{"messages": [{"role": "robot", "content": "x"}]}\n', r"rows.jsonl:1: messages\[0\] has role 'robot'"),
        ('{"text": 3}\n', r"rows.jsonl:1: 'text' must be a string"),
        ("", r"rows.jsonl: the file is empty"),
        ("\n\n", r"rows.jsonl: the file is empty"),
    ],
)
def test_read_jsonl_names_file_line_and_expectation(tmp_path, text: str, expected: str) -> None:
    with pytest.raises(data.DataError, match=expected):
        data.read_jsonl(write(tmp_path, text))


def test_read_jsonl_with_a_field_requires_it(tmp_path) -> None:
    with pytest.raises(data.DataError, match=r"rows.jsonl:1: the row has no 'messages' field \(it has \['text'\]\)"):
        data.read_jsonl(write(tmp_path, json.dumps({"text": "x"}) + "\n"), field="messages")


def test_read_jsonl_missing_file_says_which_notebook_makes_it(tmp_path) -> None:
    with pytest.raises(data.DataError, match=r"no such file\. Run notebook 01_data"):
        data.read_jsonl(tmp_path / "train.jsonl")


def test_prepared_record_writes_paths_and_counts(tmp_path) -> None:
    from phi3course.rundir import RunDir

    run = RunDir(tmp_path / "run")
    prepared = data.prepare("synthetic", run.path / "data", subjects=2)
    prepared.record(run)
    assert run.get("train_path") == str(prepared.train_path) and run.get("data_field") == "messages"
    assert run.summary["data"] == {"source": "synthetic", "train_rows": 70, "test_rows": 30}
