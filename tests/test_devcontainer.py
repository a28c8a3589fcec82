"""The dev container (.devcontainer/devcontainer.json, e.g. a GitHub Codespace): valid for the Dev Container spec,
sized for a 2-core machine, on the course's Python, and installing the course from its one dependency list."""

from __future__ import annotations

import json
import re
import tomllib

import jsonschema
import pytest

from phi3course.paths import course_root

ROOT = course_root()
CONFIG = ROOT / ".devcontainer" / "devcontainer.json"

# The part of the Dev Container spec's schema (devcontainers/spec, schemas/devContainer.base.schema.json) that the
# course's file uses: its keys, with their types and patterns as the spec gives them; any other key is refused.
COMMAND = {"type": ["string", "array", "object"]}
SCHEMA = {
    "type": "object",
    "required": ["name", "image", "postCreateCommand"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "image": {"type": "string"},
        "hostRequirements": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "cpus": {"type": "integer", "minimum": 1},
                "memory": {"type": "string", "pattern": r"^\d+([tgmk]b)?$"},
                "storage": {"type": "string", "pattern": r"^\d+([tgmk]b)?$"},
            },
        },
        "onCreateCommand": COMMAND,
        "updateContentCommand": COMMAND,
        "postCreateCommand": COMMAND,
        "postStartCommand": COMMAND,
        "forwardPorts": {
            "type": "array",
            "items": {
                "oneOf": [
                    {"type": "integer", "minimum": 0, "maximum": 65535},
                    {"type": "string", "pattern": r"^([a-z0-9-]+):(\d{1,5})$"},
                ]
            },
        },
        "portsAttributes": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "onAutoForward": {
                        "enum": ["notify", "openBrowser", "openBrowserOnce", "openPreview", "silent", "ignore"]
                    },
                },
            },
        },
        "customizations": {"type": "object"},
        "containerEnv": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def config() -> dict:
    return json.loads(CONFIG.read_text(encoding="utf-8"))  # plain JSON: no comments, so any tool reads it


def commands(settings: dict) -> list[str]:
    found = []
    for key in ("onCreateCommand", "updateContentCommand", "postCreateCommand", "postStartCommand"):
        value = settings.get(key)
        parts = value.values() if isinstance(value, dict) else [value] if value else []
        found += [part if isinstance(part, str) else " ".join(part) for part in parts]
    return found


def test_the_dev_container_follows_the_spec() -> None:
    jsonschema.validate(config(), SCHEMA)


def test_the_schema_check_refuses_what_the_spec_refuses() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config(), "hostRequirements": {"cpus": 2, "memory": "8 GB"}}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config(), "postCreatCommand": "make setup"}, SCHEMA)


def test_it_installs_the_course_from_its_one_dependency_list_on_its_python() -> None:
    settings = config()
    assert commands(settings) == ["make setup"], "the Makefile installs from pyproject.toml; no second list here"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = re.search(r"==\s*(\d+\.\d+)|>=\s*(\d+\.\d+)", project["requires-python"])
    assert wanted is not None
    python = re.search(r"python:(?:\d+-)?(\d+\.\d+)-", settings["image"])
    assert python is not None, f"the image's tag names its Python: {settings['image']}"
    assert python.group(1) == (wanted.group(1) or wanted.group(2))


def test_it_is_sized_for_a_two_core_codespace() -> None:
    needs = config()["hostRequirements"]
    assert needs["cpus"] == 2  # what the course needs, and the smallest Codespace
    assert int(needs["memory"].removesuffix("gb")) >= 4 and needs["memory"].endswith("gb")
    assert 8888 in config()["forwardPorts"]  # make lab's port
