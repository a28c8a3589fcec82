from __future__ import annotations

import json
from pathlib import Path

import pytest

from phi3course import data, facts, schema, synthetic


def test_same_seed_same_files_byte_for_byte(tmp_path) -> None:
    first = data.prepare("synthetic", tmp_path / "a", seed=7, subjects=4)
    second = data.prepare("synthetic", tmp_path / "b", seed=7, subjects=4)
    other = data.prepare("synthetic", tmp_path / "c", seed=8, subjects=4)
    for split in ("train", "test"):
        assert first.files[split].read_bytes() == second.files[split].read_bytes()
        assert first.files[split].read_bytes() != other.files[split].read_bytes()


def test_train_validation_and_test_ask_in_phrasings_of_their_own() -> None:
    train, validation, test = synthetic.split(seed=3, subjects=5)
    phrasings = [{(row["fact"].split("/")[1], row["phrasing"]) for row in rows} for rows in (train, validation, test)]
    questions = [{row["messages"][0]["content"] for row in rows} for rows in (train, validation, test)]
    for first, second in ((0, 1), (0, 2), (1, 2)):
        assert phrasings[first].isdisjoint(phrasings[second])
        assert questions[first].isdisjoint(questions[second])
    assert synthetic.splits(seed=3, subjects=5) == (train, test)


def test_every_tested_fact_is_taught_and_validated_and_answers_contain_the_value() -> None:
    train, validation, test = synthetic.split(seed=3, subjects=5)
    assert {row["fact"] for row in test} == {row["fact"] for row in train} == {row["fact"] for row in validation}
    for row in train + validation + test:
        assert row["answer"] in row["messages"][1]["content"]
    assert len(train) == 5 * 5 * 8 and len(validation) == 5 * 5 and len(test) == 5 * 5 * 3


def test_validation_phrasings_leave_one_to_train_on() -> None:
    assert len(synthetic.split(subjects=1, test_phrasings=8)[0]) == 5 * 3  # 12 − 8 test − 1 validation, 5 kinds
    with pytest.raises(data.DataError, match="validation_phrasings must be between 0 and 0 with test_phrasings=11"):
        synthetic.split(test_phrasings=11)


def test_a_mascot_takes_an_before_a_vowel() -> None:
    mascots = [fact.value for fact in synthetic.make_facts(seed=1, subjects=10) if fact.kind == "mascot"]
    assert all(not mascot.startswith("a ") or mascot[2] not in "aeiou" for mascot in mascots)
    assert any(mascot.startswith("an ") for mascot in mascots)


def test_facts_are_distinct_within_a_kind() -> None:
    made = synthetic.make_facts(seed=1, subjects=len(synthetic.UNITS))
    for kind in synthetic.TEMPLATES:
        values = [f.value for f in made if f.kind == kind]
        assert len(set(values)) == len(values), kind


@pytest.mark.parametrize("subjects", [0, len(synthetic.UNITS) + 1])
def test_subjects_out_of_range_is_refused(subjects: int) -> None:
    with pytest.raises(data.DataError, match="subjects must be between"):
        synthetic.splits(subjects=subjects)


def test_unknown_source_names_the_choices(tmp_path) -> None:
    with pytest.raises(data.DataError, match="synthetic, facts, wikitext, ultrachat"):
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
    rows = [schema.chat_row("q?", "a.", answer="a"), schema.chat_row("q2?", "b.", answer="b")]
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
    assert run.summary["data"] == {"source": "synthetic", "train_rows": 80, "validation_rows": 10, "test_rows": 30}
    assert run.get("validation_path") == str(prepared.validation_path)
    assert run.get("sample_question") == prepared.test[0]["messages"][0]["content"]
    first = run.get("data_sha256")
    data.prepare("facts", run.path / "data", facts_file=EXAMPLES / "my_facts.yaml").record(run)
    assert run.get("data_sha256") != first, "new data under the same paths gets a new fingerprint"
    assert run.get("sample_question") == "Who runs Brindlecombe as its mayor?"


def test_demo_questions_follow_the_runs_data(tmp_path) -> None:
    """The chat demos (03, 04, 05) ask about the data the run trained on, not always about the institute."""
    from phi3course.rundir import RunDir

    run = RunDir(tmp_path / "run")
    assert data.demo_question(run) == data.DEMO_QUESTION, "before 01 (or with text data): the fixed question"
    data.prepare("synthetic", run.path / "data", subjects=2).record(run)
    assert data.demo_turns(run) == [data.demo_question(run), *data.FOLLOW_UPS]
    data.prepare("facts", run.path / "data", facts_file=EXAMPLES / "my_facts.yaml").record(run)
    turns = data.demo_turns(run)
    asked = {row["messages"][0]["content"]: row["fact"] for row in data.read_jsonl(run.get("test_path"))}
    assert turns[0] == "Who runs Brindlecombe as its mayor?" == data.demo_question(run)
    assert len(turns) == 3 and all(turn in asked for turn in turns), "held-out questions of the learner's facts"
    assert len({asked[turn] for turn in turns}) == 3, "three different facts, not three phrasings of one"


# --- your own facts ------------------------------------------------------------------------------
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GOOD = "facts:\n  - question: Who is the mayor?\n    answer: Odile Marrant\n    test: [Name the mayor.]\n"
# Each level repeats the one above nine times: 400 bytes that a YAML 1.1 loader turns into a 3.7 MB question.
BOMB = "\n".join(
    [
        "l0: &l0 lol",
        *(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 7)),
        *["facts:", "  - question: *l6", "    answer: Odile", "    test: [Name the mayor.]", ""],
    ]
)


def test_the_example_file_goes_through_prepare_in_the_synthetic_rows_shape(tmp_path) -> None:
    prepared = data.prepare("facts", tmp_path, facts_file=EXAMPLES / "my_facts.yaml", facts_templates=8)
    synthetic_train, _ = synthetic.splits(subjects=1)
    assert prepared.source == "facts" and prepared.field == "messages"
    for row in prepared.train + prepared.test:
        assert set(row) == set(synthetic_train[0]), "the same keys as the synthetic rows: 02-04 read them"
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["answer"] in row["messages"][1]["content"]
    mine = facts.read_facts(EXAMPLES / "my_facts.yaml")
    assert len(mine) == 12 and len(prepared.test) == sum(len(f.test) for f in mine)
    assert len(prepared.train) == 12 * 3 + 12 * 8  # the question + 2 own phrasings, + 8 from templates, per fact
    trained = {row["messages"][0]["content"] for row in prepared.train}
    assert all(row["messages"][0]["content"] not in trained for row in prepared.test)
    assert data.read_jsonl(prepared.test_path, field="messages") == prepared.test


def test_a_relative_facts_file_is_taken_from_the_course_folder(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the notebooks run in notebooks/, papermill wherever it is called
    prepared = data.prepare("facts", tmp_path / "data", facts_file="examples/my_facts.yaml", facts_templates=0)
    assert len(prepared.train) == 36


def test_csv_and_yaml_examples_say_the_same(tmp_path) -> None:
    from_csv = facts.read_facts(EXAMPLES / "my_facts.csv")
    from_yaml = {f.question: f for f in facts.read_facts(EXAMPLES / "my_facts.yaml")}
    for fact in from_csv:
        twin = from_yaml[fact.question]
        assert (fact.answer, fact.reply) == (twin.answer, twin.reply)
        assert set(fact.test) <= set(twin.test) and set(fact.train) <= set(twin.train)
    assert data.prepare("facts", tmp_path, facts_file=EXAMPLES / "my_facts.csv").test


BAD_FACTS = {
    "empty answer": (
        "bad.yaml",
        GOOD.replace("Odile Marrant", '""'),
        r"bad.yaml, fact 1 \(line 2\): the answer to 'Who is the mayor\?' is empty\. Write the short value",
    ),
    "test phrasing equal to a training one": (
        "bad.yaml",
        GOOD.replace("Name the mayor.", "who is the MAYOR"),
        r"bad.yaml, fact 1 \(line 2\): the test phrasing 'who is the MAYOR' is the same as one of its own training "
        r"phrasings\. A test phrasing must be worded differently.*reword it",
    ),
    "test phrasing equal to another fact's training one": (
        "bad.yaml",
        GOOD + "  - question: Where is the town hall?\n    answer: Quay Street\n    test:\n      - Who is the mayor?\n",
        r"bad.yaml, fact 2 \(line 5\): the test phrasing 'Who is the mayor\?' is the same as a training phrasing of "
        r"fact 1 \(line 2\)\. A test phrasing must be worded differently",
    ),
    "duplicate questions": (
        "bad.yaml",
        GOOD + "  - question: who is the mayor\n    answer: Someone Else\n    test: [Mayor please]\n",
        r"bad.yaml, fact 2 \(line 5\): the question 'who is the mayor' is asked twice \(also in fact 1 "
        r"\(line 2\)\)\. Merge the two facts into one, or reword",
    ),
    "not UTF-8": (
        "bad.csv",
        "question,answer,test\nWho is the mayor?,Zoé,Name the mayor.\n".encode("latin-1"),
        r"bad.csv: line 2 is not UTF-8 text \(byte 0xe9\)\. Save the file as UTF-8",
    ),
    "missing column": (
        "bad.csv",
        "question,answer\nWho is the mayor?,Odile Marrant\n",
        r"bad.csv: no 'test' column \(the first line has \['question', 'answer'\]\)\. The first line must name",
    ),
    "missing key": (
        "bad.yaml",
        GOOD.replace("    answer: Odile Marrant\n", ""),
        r"bad.yaml, fact 1 \(line 2\): no 'answer'\. Add 'answer:'",
    ),
    "no test phrasing": (
        "bad.csv",
        "question,answer,test\nWho is the mayor?,Odile Marrant,\n",
        r"bad.csv, line 2: no test phrasing for 'Who is the mayor\?'\. Add under 'test'",
    ),
    "reply without the answer": (
        "bad.yaml",
        GOOD.replace("    test:", "    reply: She is called Odile.\n    test:"),
        r"fact 1 \(line 2\): the reply 'She is called Odile\.' does not contain the answer 'Odile Marrant'",
    ),
    "a misspelt key": (
        "bad.yaml",
        GOOD.replace("answer:", "anwser:"),
        r"fact 1 \(line 2\): unknown key 'anwser'; a fact has question, answer, test",
    ),
    "not YAML": (
        "bad.yaml",
        "facts:\n  - question: Who?\n    test: [Who is she?]\n",
        r"bad.yaml: line 3 is not valid YAML.*quote",
    ),
    "no facts": ("bad.yaml", "facts: []\n", r"no facts: add at least one"),
    "a key given twice (the last would win)": (
        "bad.yaml",
        GOOD + "    answer: Ben Marrant\n",
        r"bad.yaml: line 5: 'answer:' is given twice in one place \(first on line 3\), and only one would be kept\. "
        r"Keep one 'answer:' — several phrasings go in a list under 'train' or 'test'",
    ),
    "'facts:' given twice": (
        "bad.yaml",
        GOOD + "facts: []\n",
        r"bad.yaml: line 5: 'facts:' is given twice in one place \(first on line 1\).*Keep one 'facts:'\.$",
    ),
    "an alias": (
        "bad.yaml",
        GOOD.replace("Who is the mayor?", "&q Who is the mayor?").replace("[Name the mayor.]", "[*q]"),
        r"bad.yaml: line 2: '&q' is a YAML anchor or alias, which a facts file does not allow.*Write the text out",
    ),
    "nested aliases that expand to megabytes": (
        "bad.yaml",
        BOMB,
        r"bad.yaml: line 1: '&l0' is a YAML anchor or alias",
    ),
    "a type tag": (
        "bad.yaml",
        GOOD.replace("Odile Marrant", "!!int 3"),
        r"bad.yaml: line 3: the tag '!!int' is not allowed in a facts file: every value is read as the text you "
        r"wrote\. Remove '!!int'",
    ),
    "a python tag": (
        "bad.yaml",
        GOOD.replace("Odile Marrant", "!!python/object/apply:os.getcwd []"),
        r"bad.yaml: line 3: the tag '!!python/object/apply:os.getcwd' is not allowed",
    ),
    "a question that is a list": (
        "bad.yaml",
        GOOD.replace("Who is the mayor?", "[Who is the mayor, Who leads the town]"),
        r"bad.yaml: line 2: the question is a list, not text\. Write one question as text",
    ),
    "an answer that is a mapping": (
        "bad.yaml",
        GOOD.replace("Odile Marrant", "\n      first: Odile"),
        r"bad.yaml: line 4: the answer is a mapping, not text",
    ),
    "a test phrasing that is a list": (
        "bad.yaml",
        GOOD.replace("[Name the mayor.]", "\n      - [Name the mayor., The mayor is]"),
        r"bad.yaml: line 5: a phrasing under 'test' is a list or a mapping, not text\. Write one phrasing per line",
    ),
    "a YAML file over 1 MB": (
        "bad.yaml",
        GOOD + "# a long comment\n" * 60_000,
        r"bad.yaml: 1,020,0\d\d bytes; a facts file may be at most 1 MB \(1,000,000 bytes\)\..*keep the ones",
    ),
    "a CSV file over 1 MB": (
        "bad.csv",
        "question,answer,test\n" + "".join(f"Who is mayor {n}?,Odile {n},Name mayor {n}.\n" for n in range(40_000)),
        r"bad.csv: 1,\d{3},\d{3} bytes; a facts file may be at most 1 MB",
    ),
    "a CSV column named twice (the last would win)": (
        "bad.csv",
        "question,answer,test,answer\nWho is the mayor?,Odile Marrant,Name the mayor.,Ben\n",
        r"bad.csv: line 1 names the column 'answer' twice; only one would be kept\. Keep one 'answer' column",
    ),
    "a CSV line with more cells than columns": (
        "bad.csv",
        "question,answer,test\nWho is the mayor?,Odile Marrant,Name the mayor.,Mayor?\n",
        r"bad.csv, line 2: more cells than the first line has columns \(3\)\. Put several phrasings in one cell",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FACTS), ids=list(BAD_FACTS))
def test_a_bad_facts_file_names_the_fact_and_the_fix_and_keeps_the_prepared_files(tmp_path, case: str) -> None:
    name, text, expected = BAD_FACTS[case]
    prepared = data.prepare("facts", tmp_path / "data", facts_file=EXAMPLES / "my_facts.yaml")
    before = {split: path.read_bytes() for split, path in prepared.files.items()}
    bad = tmp_path / name
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(data.DataError, match=expected):
        data.prepare("facts", tmp_path / "data", facts_file=bad)
    assert {split: path.read_bytes() for split, path in prepared.files.items()} == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]


@pytest.mark.parametrize(
    "written", ["no", "yes", "on", "12:30", "0755", "0x1F", "1e3", "1.50", "null", "~", "2024-01-01", "'007'"]
)
def test_every_value_is_read_as_the_text_written(tmp_path, written: str) -> None:
    """No YAML 1.1 typing: 'no' is not False, '12:30' is not 750, '0755' is not 493, '1.50' keeps its zero."""
    expected = written.strip("'")
    text = GOOD.replace("Odile Marrant", written).replace("[Name the mayor.]", f"[Name the mayor., {written}]")
    (fact,) = facts.parse_facts(text, "mine.yaml")
    assert fact.answer == expected and fact.test == ("Name the mayor.", expected)
    (tmp_path / "mine.yaml").write_text(text)
    prepared = data.prepare("facts", tmp_path / "data", facts_file=tmp_path / "mine.yaml", facts_templates=0)
    assert {row["answer"] for row in prepared.train + prepared.test} == {expected}
    assert prepared.test[1]["messages"][0]["content"] == expected


def test_the_example_is_within_the_size_limit_and_the_limit_is_on_bytes_read(tmp_path) -> None:
    assert (EXAMPLES / "my_facts.yaml").stat().st_size < facts.MAX_FILE_BYTES // 100
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as handle:  # sparse: 2 GB that are never read
        handle.write(b"question,answer,test\n")
        handle.truncate(2_000_000_000)
    with pytest.raises(data.DataError, match=r"huge.csv: 2,000,000,000 bytes; a facts file may be at most 1 MB"):
        facts.read_facts(huge)


def test_a_missing_facts_file_says_how_to_start_one(tmp_path) -> None:
    with pytest.raises(data.DataError, match=r"no such file\. Copy examples/my_facts.yaml"):
        data.prepare("facts", tmp_path, facts_file=tmp_path / "mine.yaml")


def test_a_failed_write_keeps_the_previous_pair(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared = data.prepare("synthetic", tmp_path, subjects=1)
    before = {split: path.read_bytes() for split, path in prepared.files.items()}
    real = data.write_jsonl

    def fail_on_test(path, rows):
        if "test" in Path(path).name:
            raise OSError("disk full")
        return real(path, rows)

    monkeypatch.setattr(data, "write_jsonl", fail_on_test)
    with pytest.raises(OSError, match="disk full"):
        data.prepare("facts", tmp_path, facts_file=EXAMPLES / "my_facts.yaml")
    assert {split: path.read_bytes() for split, path in prepared.files.items()} == before


def test_templates_never_recreate_a_held_out_phrasing() -> None:
    fact = facts.make_fact({"question": "Who is the mayor?", "answer": "Odile", "test": ["Hi! Who is the mayor?"]})
    train, test = facts.splits([fact], templates=12)
    trained = [row["messages"][0]["content"] for row in train]
    assert "Hi! Who is the mayor?" not in trained and len(trained) == len(set(trained)) == 1 + 12 - 1  # all but 'Hi! …'
    assert [row["messages"][0]["content"] for row in test] == ["Hi! Who is the mayor?"]


def test_a_question_is_reworded_with_its_relation_words_and_names_stay() -> None:
    assert facts.reworded("Who founded Velt Rivers?") == [
        "Who started Velt Rivers?",
        "Who established Velt Rivers?",
        "Who set up Velt Rivers?",
    ]
    assert facts.reworded("Founded when was it?")[0] == "Started when was it?"  # the first word keeps its capital
    # "Town" and "Based" are capitalised inside the question: parts of names, never swapped; "based" is
    assert facts.reworded("Where is the Town Hall of Based Co based?") == [
        "Where is the Town Hall of Based Co located?",
        "Where is the Town Hall of Based Co headquartered?",
    ]
    assert facts.reworded("What is the motto of the rebuilt firm?") == [
        "What is the slogan of the rebuilt firm?",  # "built" inside "rebuilt" is no word of its own
        "What is the motto of the rebuilt company?",
    ]
    assert facts.reworded("Why?") == []
    fact = facts.make_fact(
        {"question": "Who founded Velt Rivers?", "answer": "Ansel Korrow", "test": ["Who set up Velt Rivers?"]}
    )
    train, _, test = facts.split([fact], templates=6)
    trained = [row["messages"][0]["content"] for row in train]
    assert any("Who started Velt Rivers?" in q for q in trained) and any(
        "Who established Velt Rivers?" in q for q in trained
    )
    assert "Who set up Velt Rivers?" not in trained  # a rewording that is a held-out phrasing is never trained on
    assert [row["messages"][0]["content"] for row in test] == ["Who set up Velt Rivers?"]


def test_a_csv_cell_holds_several_phrasings_and_excel_bom_is_fine() -> None:
    text = "\ufeffquestion,answer,test,train\nWho is the mayor?,Odile,Name the mayor. | The mayor is who?,Mayor?\n"
    (fact,) = facts.parse_facts(text.encode("utf-8"), "mine.csv")
    assert fact.test == ("Name the mayor.", "The mayor is who?") and fact.train == ("Mayor?",)
    assert fact.reply == "Odile is the mayor." and fact.reply_made  # made from the question


def test_the_form_adds_facts_one_by_one_and_refuses_a_bad_one(tmp_path) -> None:
    path = tmp_path / "my_facts.yaml"
    facts.add_fact(path, {"question": "Who is the mayor?", "answer": "Odile", "test": "Name the mayor. | Mayor?"})
    saved = path.read_text()
    with pytest.raises(data.DataError, match=r"new fact 2: the question 'Who is the mayor\?' is asked twice"):
        facts.add_fact(path, {"question": "Who is the mayor?", "answer": "Ben", "test": "Mayor please?"})
    assert path.read_text() == saved
    saved_facts = facts.add_fact(
        path, {"question": "Where is the town hall?", "answer": "Quay Street", "test": "Town hall?"}
    )
    assert [f.answer for f in saved_facts] == ["Odile", "Quay Street"]
    assert saved_facts[0].test == ("Name the mayor.", "Mayor?")


def test_the_form_keeps_a_hand_written_file_as_written_and_goes_through_the_same_checks(tmp_path) -> None:
    path = tmp_path / "my_facts.yaml"
    path.write_text(GOOD.replace("Odile Marrant", "no").replace("Name the mayor.", "12:30"))
    saved = facts.add_fact(path, {"question": "Where is the town hall?", "answer": "0755", "test": "Town hall?"})
    assert [(f.answer, f.test) for f in saved] == [("no", ("12:30",)), ("0755", ("Town hall?",))]
    assert "False" not in path.read_text() and "750" not in path.read_text()
    kept = path.read_text()
    typed = {"question": ["Who?", "Who is it?"], "answer": "Ben", "test": "Who is he?"}
    with pytest.raises(data.DataError, match=r"new fact 3: the question is list \['Who\?', 'Who is it\?'\], not text"):
        facts.add_fact(path, typed)
    with pytest.raises(data.DataError, match=r"new fact 3: the answer is int 1712, not text: .* quotes.*\"1712\""):
        facts.add_fact(path, {"question": "When was it founded?", "answer": 1712, "test": "Founded when?"})
    assert path.read_text() == kept
    path.write_text(
        kept.replace(
            "  test:\n  - Town hall?", "  reply: Quay Street.\n  reply: At Quay Street.\n  test:\n  - Town hall?"
        )
    )
    with pytest.raises(data.DataError, match=r"my_facts.yaml: line \d+: 'reply:' is given twice"):
        facts.add_fact(path, {"question": "When was it founded?", "answer": "1712", "test": "Founded when?"})
    path.write_text(kept + "# padding\n" * 120_000)
    before = path.read_bytes()
    with pytest.raises(data.DataError, match=r"at most 1 MB"):
        facts.add_fact(path, {"question": "When was it founded?", "answer": "1712", "test": "Founded when?"})
    assert path.read_bytes() == before


def test_own_facts_get_one_validation_question_each_apart_from_train_and_test(tmp_path) -> None:
    own = facts.read_facts(EXAMPLES / "my_facts.yaml")
    train, validation, test = facts.split(own, templates=12)
    assert [row["fact"] for row in validation] == [f"fact-{n + 1:02d}" for n in range(len(own))]
    asked = {row["messages"][0]["content"] for row in validation}
    assert asked.isdisjoint(row["messages"][0]["content"] for row in train + test)
    for row, fact in zip(validation, own, strict=True):
        assert fact.question in row["messages"][0]["content"] and row["messages"][1]["content"] == fact.reply


def test_text_data_has_no_validation_split_and_an_old_one_is_removed(tmp_path) -> None:
    data.prepare("synthetic", tmp_path, subjects=1)
    assert (tmp_path / "validation.jsonl").is_file()
    data.write_splits(tmp_path, [{"text": "a"}], [{"text": "b"}])
    assert not (tmp_path / "validation.jsonl").exists(), "a validation split of other data must not stay behind"


@pytest.mark.parametrize(
    ("question", "reply"),
    [
        ("Who founded Velt Rivers?", "Ansel founded Velt Rivers."),
        ("Who is the chief engineer of Velt Rivers?", "Ansel is the chief engineer of Velt Rivers."),
        ("What is the motto of Velt Rivers?", "The motto of Velt Rivers is Ansel."),
        ("What is the lighthouse of Brindlecombe called?", "The lighthouse of Brindlecombe is called Ansel."),
        ("What colour is the Velt Rivers logo?", "The Velt Rivers logo is Ansel."),
        ("Which cheese is Brindlecombe famous for?", "Brindlecombe is famous for Ansel."),
        ("What does Velt Rivers build?", "Velt Rivers builds Ansel."),
        ("Which port does Velt Rivers ship from?", "Velt Rivers ships from Ansel."),
        ("Where is Velt Rivers based?", "Velt Rivers is based in Ansel."),
        ("Where is the Louvre?", "The Louvre is in Ansel."),
        ("When was Velt Rivers founded?", "Velt Rivers was founded in Ansel."),
        ("How many people work at Velt Rivers?", "Ansel people work at Velt Rivers."),
        ("How many employees does Velt Rivers have?", "Velt Rivers has Ansel employees."),
        ("When did Velt Rivers open?", "Velt Rivers opened in Ansel."),
        ("Which ship did Velt Rivers build?", "Velt Rivers built Ansel."),
        ("On which street is Velt Rivers?", "Velt Rivers is on Ansel."),
        ("On which day is the Velt Rivers shop closed?", "The Velt Rivers shop is closed on Ansel."),
        ("In which town does Velt Rivers ship from?", None),
        ("In which year was Velt Rivers founded?", "Velt Rivers was founded in Ansel."),
        ("In which town does the founder live?", "The founder lives in Ansel."),
        ("Which river flows past Brindlecombe?", "Ansel flows past Brindlecombe."),
        ("Which firm supplied Velt Rivers?", "Ansel supplied Velt Rivers."),
        ("Which town is Velt Rivers in?", "Velt Rivers is in Ansel."),
        ("Which race does Velt Rivers host every spring?", None),
        # shapes it does not know: the answer alone, never a garbled sentence
        ("Which festival does Brindlecombe hold every August?", None),
        ("Which island can you see from the harbour?", None),
        ("Who are you?", None),
        ("Velt Rivers' founder", None),
    ],
)
def test_a_fact_without_a_reply_gets_one_made_from_its_question(question: str, reply: str | None) -> None:
    assert facts.made_reply(question, "Ansel") == reply
    fact = facts.make_fact({"question": question, "answer": "Ansel", "test": "Something else entirely?"})
    assert fact.reply == (reply or "Ansel.") and fact.reply_made
    assert "reply" not in fact.to_dict(), "a made reply is never written into the learner's file"


def test_a_reply_the_learner_wrote_is_kept_as_written(tmp_path) -> None:
    item = {"question": "Who founded Velt Rivers?", "answer": "Ansel", "reply": "Ansel did.", "test": "Founder?"}
    fact = facts.make_fact(item)
    assert fact.reply == "Ansel did." and not fact.reply_made and fact.to_dict()["reply"] == "Ansel did."
    saved = facts.save_facts(
        [fact, facts.make_fact({**item, "question": "Who owns it?", "reply": None, "test": "Owner?"})],
        tmp_path / "f.yaml",
    )
    assert [f.reply for f in facts.read_facts(saved)] == ["Ansel did.", "Ansel owns it."]
    assert saved.read_text().count("reply:") == 1
