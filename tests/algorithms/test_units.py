"""Pure unit tests: Range parsing, external declarations (param models, argv templates), JSON spill."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from algorithms import external, process
from algorithms.downloads import RangeNotSatisfiable, parse_range, wants_zstd


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 100, None),
    ("bytes=0-9", 100, (0, 9)),
    ("bytes=90-", 100, (90, 99)),
    ("bytes=-10", 100, (90, 99)),
    ("bytes=-1000", 100, (0, 99)),
    ("bytes=50-5000", 100, (50, 99)),
    ("bytes=0-1,5-6", 100, None),   # multi-range: answered with the whole file
    ("items=0-1", 100, None),
    ("bytes=5-2", 100, None),       # invalid (last before first): ignored, the whole file (RFC 9110)
    ("bytes=0-" + "9" * 5000, 100, (0, 99)),  # a number of any length, never a ValueError (a 500)
    ("bytes=-" + "9" * 5000, 100, (0, 99)),
    ("bytes=" + "0" * 5000 + "7-9", 100, (7, 9)),
])
def test_parse_range(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0", "bytes=" + "9" * 5000 + "-"])
def test_unsatisfiable_range_is_416(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


@pytest.mark.parametrize(("accept", "expected"), [
    ("gzip, zstd", True), ("zstd;q=0.5", True), ("zstd;q=0", False), ("gzip, br", False), ("", False),
])
def test_wants_zstd(rf, accept, expected):
    assert wants_zstd(rf.get("/", HTTP_ACCEPT_ENCODING=accept)) is expected


def test_declared_params_become_a_strict_model_with_bounds_defaults_and_enums():
    model = external.params_model("x.y", {
        "n": {"type": "integer", "minimum": 1, "maximum": 5, "default": 2},
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "values": {"type": "array", "items": {"type": "number"}, "max_length": 3, "default": []},
    })

    assert model.model_validate({"mode": "fast"}).model_dump() == {"n": 2, "mode": "fast", "values": []}
    for bad in ({"mode": "medium"}, {"mode": "fast", "n": 9}, {"mode": "fast", "other": 1},
                {"mode": "fast", "values": [1, 2, 3, 4]}, {}):
        with pytest.raises(ValidationError):
            model.model_validate(bad)


def test_argv_template_fills_whole_arguments_in_one_pass(settings):
    spec = process.ProgramSpec(name="t", argv=["bin/tool", "--name={name}", "{n}", "{here}/data", "{unknown}"],
                               base_dir=Path("/opt/decl"))

    argv = process._argv(spec, {"name": "a b; rm -rf / {n}", "n": 3})

    assert argv == ["/opt/decl/bin/tool", "--name=a b; rm -rf / {n}", "3", "/opt/decl/data", "{unknown}"]


def test_a_broken_declaration_file_is_skipped_not_fatal(tmp_path, settings, caplog):
    broken = tmp_path / "broken.toml"
    broken.write_text("[[algorithm]]\nname = 'x.broken'\nargv = [\n")
    settings.CONVEYOR = {**settings.CONVEYOR, "EXTERNAL_ALGORITHMS": [str(broken)]}

    external.load()

    assert "could not be loaded" in caplog.text


def test_a_runs_scratch_directory_exists_only_once_used_and_is_removed_after():
    import tempfile
    import uuid

    from algorithms.context import Scratch

    prefix = f"conveyor-test-{uuid.uuid4().hex}-"
    unused = Scratch(prefix=prefix)
    assert not list(Path(tempfile.gettempdir()).glob(f"{prefix}*"))  # a task that never asks makes none
    unused.remove()

    used = Scratch(prefix=prefix)
    path = used.path
    assert path.is_dir() and used.path == path  # made once, on first use
    (path / "work").mkdir()
    used.remove()
    assert not path.exists()
