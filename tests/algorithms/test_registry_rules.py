"""Registering: the first algorithm registered under a name keeps it (a plugin or an operator's declaration
cannot take a built-in's, whatever the load order), the same function registered again is not a
duplicate, names and versions follow one rule (``registry.NAME``, also remote schemes'; ``VERSION``), and
one bad entry of a declaration file costs that entry only."""
from __future__ import annotations

import importlib
import logging
import sys

import pytest

from algorithms import external, registry
from algorithms.remote import discovery

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """What a test registers goes with it."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))


def shown(client, name):
    response = client.get(f"/api/v1/algorithms/{name}/")
    assert response.status_code == 200, response.content
    return response.json()


def test_a_second_algorithm_under_a_taken_name_is_refused_and_logged_naming_both(alice, api, caplog):
    client = api(alice)
    before = shown(client, "ml.train_classifier")

    @registry.algorithm("ml.train_classifier", version="0.1", queue="gpu")
    def mine(ctx, params):
        """my unrelated thing"""
        return {"hijacked": True}

    assert shown(client, "ml.train_classifier") == before
    assert registry.get("ml.train_classifier").fn is not mine
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("'ml.train_classifier'" in m and f"{__name__}.test_a_second" in m
               and "algorithms.builtin.ml.train_classifier" in m for m in refusals), refusals


def test_the_same_function_registered_again_is_not_a_duplicate(caplog):
    def fn(ctx, params):
        return None

    assert registry.register(registry.Algorithm(name="t.same", fn=fn)) is True
    assert registry.register(registry.Algorithm(name="t.same", fn=fn, version="2")) is True

    assert registry.get("t.same").version == "2"
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]


PLUGIN = '''
from algorithms.registry import algorithm

@algorithm("t.plugin", version="{version}")
def run(ctx, params):
    return None
'''


def test_a_module_imported_again_replaces_its_own_algorithms(tmp_path, monkeypatch, caplog):
    (tmp_path / "t_conveyor_plugin.py").write_text(PLUGIN.format(version="1"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "t_conveyor_plugin", raising=False)
    module = importlib.import_module("t_conveyor_plugin")
    (tmp_path / "t_conveyor_plugin.py").write_text(PLUGIN.format(version="2"))

    importlib.reload(module)

    assert registry.get("t.plugin").version == "2"
    assert registry.get("t.plugin").fn is module.run
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]
    sys.modules.pop("t_conveyor_plugin", None)


@pytest.mark.parametrize("name", ["team/a b", "", " x", "-x", ".x", "a b", "x/y", "é", "a\n", "a" * 201, 7])
def test_an_invalid_name_is_refused_at_registration(alice, api, name):
    with pytest.raises(registry.InvalidAlgorithm, match="invalid algorithm name"):
        registry.algorithm(name)(lambda ctx, params: None)

    assert name not in [a["name"] for a in api(alice).get("/api/v1/algorithms/").json()]


@pytest.mark.parametrize("version", ["", "not a version", " 1.0", "1.0\n", "v" * 51, 1])
def test_an_invalid_version_is_refused_at_registration(version):
    with pytest.raises(registry.InvalidAlgorithm, match="invalid version"):
        registry.algorithm("t.versioned", version=version)(lambda ctx, params: None)

    assert "t.versioned" not in registry._registry


def test_a_valid_name_and_version_are_listed_and_shown(alice, api):
    registry.algorithm("Team_1.a-b.c", version="2024.01-rc1+" + "x" * 38)(lambda ctx, params: None)

    client = api(alice)
    assert "Team_1.a-b.c" in [a["name"] for a in client.get("/api/v1/algorithms/").json()]
    assert shown(client, "Team_1.a-b.c")["version"].startswith("2024.01-rc1+")


def test_every_listed_algorithm_can_be_shown_by_its_name(alice, api):
    client = api(alice)

    for item in client.get("/api/v1/algorithms/").json():
        assert registry.NAME.match(item["name"]) and registry.VERSION.match(item["version"]), item
        assert shown(client, item["name"])["name"] == item["name"]


def test_remote_schemes_and_local_algorithms_share_the_name_rule():
    assert discovery.NAME is registry.NAME
    assert discovery.check_scheme({"name": "team/a b", "version": "1", "description": "", "params_schema": {}},
                                  taken=set()) == "invalid scheme name 'team/a b'"
    for version in ("", "1 0", "v" * 51):  # a task stores its algorithm's version in 50 characters
        assert discovery.check_scheme({"name": "team.a", "version": version, "description": "", "params_schema": {}},
                                      taken=set()) == f"invalid version {version!r}: 1 to 50 characters, no whitespace"


DECLARATIONS = '''
[[algorithm]]
name = "team.first"
argv = ["/bin/true"]

[[algorithm]]
name = "team.second"
argv = ["/bin/true"]
[algorithm.params.x]
type = "float"

[[algorithm]]
name = "team.third"
argv = ["/bin/true"]

[[algorithm]]
name = "demo.hello"
argv = ["/bin/true"]

[[algorithm]]
name = "team/bad name"
argv = ["/bin/true"]

[[algorithm]]
name = "team.no_argv"

[[algorithm]]
name = "team.first"
argv = ["/bin/false"]

[[algorithm]]
name = "team.fourth"
argv = ["/bin/true"]
version = "1 beta"

[[algorithm]]
name = "team.fifth"
argv = ["/bin/true"]

[[algorithm]]
name = "team.sixth"
argv = ["/bin/true"]
progress_timeout = "30s"
'''


def test_a_declaration_files_bad_entries_are_logged_and_skipped_and_its_good_ones_registered(
        alice, api, tmp_path, caplog):
    path = tmp_path / "ops.toml"
    path.write_text(DECLARATIONS)
    client = api(alice)
    hello = shown(client, "demo.hello")

    names = external.register_file(path)

    assert names == ["team.first", "team.third", "team.fifth"]
    listed = {a["name"]: a for a in client.get("/api/v1/algorithms/").json()}
    assert {"team.first", "team.third", "team.fifth"} <= set(listed)
    assert not {"team.second", "team/bad name", "team.no_argv", "team.fourth", "team.sixth"} & set(listed)
    assert listed["team.first"]["backend"] == "external"
    assert shown(client, "demo.hello") == hello  # a built-in keeps its name
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    for says in [f"{path}: [[algorithm]] #2 'team.second' skipped: ValueError: unknown param type 'float'",
                 f"algorithm 'demo.hello' from the declarations in {path} refused: the name is already taken by "
                 "algorithms.builtin.demo.hello",
                 f"{path}: [[algorithm]] #5 'team/bad name' skipped: InvalidAlgorithm: invalid algorithm name",
                 f"{path}: [[algorithm]] #6 'team.no_argv' skipped: KeyError: 'argv'",
                 f"{path}: [[algorithm]] #7 'team.first' skipped: the name is declared earlier in the same file",
                 f"{path}: [[algorithm]] #8 'team.fourth' skipped: InvalidAlgorithm: algorithm 'team.fourth': "
                 "invalid version '1 beta'",
                 f"{path}: [[algorithm]] #10 'team.sixth' skipped: ValueError: progress_timeout must be a number of "
                 "seconds above 0, not '30s'"]:
        assert says in errors, errors


def test_a_declaration_file_loaded_again_is_not_a_duplicate_of_itself(tmp_path, caplog):
    path = tmp_path / "ops.toml"
    path.write_text('[[algorithm]]\nname = "team.again"\nargv = ["/bin/true"]\n')

    assert external.register_file(path) == ["team.again"]
    assert external.register_file(path) == ["team.again"]
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]


def test_a_name_declared_by_two_files_stays_with_the_first(tmp_path, caplog):
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text('[[algorithm]]\nname = "team.shared"\nargv = ["/bin/true"]\n')
    second.write_text('[[algorithm]]\nname = "team.shared"\nargv = ["/bin/false"]\n')

    assert external.register_file(first) == ["team.shared"]
    assert external.register_file(second) == []

    assert registry.get("team.shared").fn.args[0].argv == ["/bin/true"]
    assert any(str(first) in r.getMessage() and str(second) in r.getMessage() for r in caplog.records)


def test_a_plugin_that_reuses_a_built_in_name_loads_its_other_algorithms(tmp_path, monkeypatch, caplog):
    """``registry.load()`` with a plugin (entry point) that also defines ``demo.hello``: the built-in
    keeps it, the plugin's other algorithm is registered, the refusal is logged."""
    (tmp_path / "t_conveyor_rival.py").write_text(
        "from algorithms.registry import algorithm\n\n"
        "@algorithm('demo.hello')\ndef rival(ctx, params):\n    return None\n\n"
        "@algorithm('t.rival_other')\ndef other(ctx, params):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "t_conveyor_rival", raising=False)

    class EntryPoint:
        name = "rival"

        def load(self):
            return importlib.import_module("t_conveyor_rival")

    monkeypatch.setattr(registry, "entry_points", lambda group: [EntryPoint()])
    registry.load()

    assert registry.get("demo.hello").fn.__module__ == "algorithms.builtin.demo"
    assert "t.rival_other" in registry._registry
    assert any("'demo.hello' from t_conveyor_rival.rival refused" in r.getMessage() for r in caplog.records)
    sys.modules.pop("t_conveyor_rival", None)

