"""The MLproject file and the entry points' parsers declare the same parameters: names, defaults
and types, and every parameter reaches its script's command line."""

import argparse
import importlib

import pytest
import yaml

from entrypoints.common import AUTO, number, whole_number
from tests.conftest import REPO

MLPROJECT = yaml.safe_load((REPO / "MLproject").read_text())
ENTRY_POINTS = sorted(MLPROJECT["entry_points"])


def actions(name: str) -> dict[str, argparse.Action]:
    parser = importlib.import_module(f"entrypoints.{name}").parser()
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def test_every_entry_point_has_a_module_of_its_own():
    assert ENTRY_POINTS == ["analyze", "compare", "predictions", "study", "sweep", "train"]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_mlproject_and_parser_declare_the_same_parameters(name):
    declared = MLPROJECT["entry_points"][name]["parameters"]
    parsed = actions(name)
    assert sorted(declared) == sorted(parsed)
    for param, spec in declared.items():
        action = parsed[param]
        if "default" not in spec:
            assert action.required, f"{name}.{param} has no MLproject default but is optional in the parser"
            continue
        if spec["type"] == "float":
            assert action.type in (number, whole_number), f"{name}.{param}: MLproject float, parser {action.type}"
            assert float(spec["default"]) == float(action.default), f"{name}.{param} defaults differ"
        else:
            assert spec["type"] == "string", f"{name}.{param}: types differ"
            assert str(spec["default"]) == str(action.default), f"{name}.{param} defaults differ"
            # `mlflow run` logs an empty default as the literal '': optional settings say auto, all or none
            assert spec["default"] != "", f"{name}.{param} has an empty default"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_parameter_reaches_the_command_line(name):
    entry = MLPROJECT["entry_points"][name]
    assert entry["command"].startswith(f"python -m entrypoints.{name} ")
    for param in entry["parameters"]:
        assert f"--{param} {{{param}}}" in entry["command"], f"{name}: --{param} is not passed to the script"


@pytest.mark.parametrize("text,value", [("8", 8), ("8.0", 8), ("-1", -1)])
def test_whole_numbers_accept_what_mlflow_passes_for_a_float_parameter(text, value):
    assert whole_number(text) == value


@pytest.mark.parametrize("text", ["8.5", "abc", "inf"])
def test_other_numbers_are_refused_by_value(text):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        whole_number(text)


@pytest.mark.parametrize("word,parsed", [("auto", ""), ("", ""), ("/data/cifar10", "/data/cifar10")])
def test_the_words_of_an_unset_optional_setting_parse_to_nothing(word, parsed):
    assert AUTO(word) == parsed


def test_every_default_in_the_readme_tables_is_the_mlprojects():
    """A README parameter table row `| `name` | default | meaning |` under `## `entry`` must give
    the default MLproject gives that entry point's parameter (one default per parameter, everywhere)."""
    import re

    import yaml

    from tests.conftest import REPO

    spec = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    text = (REPO / "README.md").read_text()
    checked = 0
    for section in re.finditer(r"^## `(\w+)`.*?(?=^## )", text, re.S | re.M):
        entry = section.group(1)
        for row in re.finditer(r"^\| (`[^|]+`) \| ([^|]+) \|", section.group(0), re.M):
            for name in re.findall(r"`(\w+)`", row.group(1)):
                declared = spec[entry]["parameters"].get(name)
                assert declared is not None, f"README documents {entry} -P {name}, which MLproject lacks"
                assert row.group(2).strip().strip("`") == str(declared.get("default")), f"{entry} -P {name}"
                checked += 1
    assert checked >= 35  # the train and analyze tables
