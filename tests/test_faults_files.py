"""Fault injection on schema and program JSON files: strict keys, strict JSON, bounded input, safe writes.

Every bad file is refused with ``SchemaValidationError`` (``ProgramValidationError`` for
programs) naming the file and the rule: an unknown key at any level (with the closest allowed
key), a missing key without a documented default, a repeated key, NaN or Infinity, bytes that
are not UTF-8, nesting deeper than ``MAX_JSON_DEPTH`` and input larger than ``MAX_JSON_BYTES``.
NaN is never written, and writes create missing folders. The ``schema`` command prints one line
and exits with status 2 for each of them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from canvas_fixtures import tiny_schema
from hypothesis import given
from hypothesis import strategies as st

import canvas_engineering._json_source as json_source
from canvas_engineering import (
    CanvasLayout,
    CanvasProgram,
    CanvasSchema,
    CanvasTopology,
    Clock,
    Connection,
    ConnectionProgram,
    ProgramValidationError,
    RegionProgram,
    RegionSpec,
    SchemaValidationError,
)
from canvas_engineering._json_source import FILE_KEYS, MAX_JSON_BYTES, MAX_JSON_DEPTH
from canvas_engineering.cli.commands import main
from canvas_engineering.typed.presets import robot_manipulation_schema

Edit = Callable[[dict], None]


def schema_dict() -> dict:
    layout = CanvasLayout(
        T=4, H=2, W=2, d_model=8, t_current=2,
        regions={"a": RegionSpec((0, 4, 0, 1, 0, 2), period=1), "b": RegionSpec((0, 4, 1, 2, 0, 2), loss_weight=2.0)},
    )
    topology = CanvasTopology([Connection("a", "b", weight=0.5), Connection("b", "a", t_src=0, t_dst=-1)])
    return CanvasSchema(layout, topology, {"run": 1}).to_dict()


def program() -> CanvasProgram:
    schema = CanvasSchema.from_dict(schema_dict())
    return CanvasProgram(
        schema,
        {"a": RegionProgram(family="observation", clock=Clock("periodic", period=2)), "b": "action"},
        [ConnectionProgram(write_mode="gate"), None],
        metadata={"author": "test"},
    )


def _rename(obj: dict, old: str, new: str) -> None:
    obj[new] = obj.pop(old)


def _write(tmp_path: Path, data: object, name: str = "file.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _schema_refuses(path: Path, pattern: str) -> str:
    with pytest.raises(SchemaValidationError, match=pattern) as info:
        CanvasSchema.from_json(path)
    message = str(info.value)
    assert message.startswith(f"schema file {str(path)!r}: ")
    return message


def _program_refuses(path: Path, pattern: str) -> str:
    with pytest.raises(ProgramValidationError, match=pattern) as info:
        CanvasProgram.from_json(path)
    message = str(info.value)
    assert message.startswith(f"program file {str(path)!r}: ")
    return message


# -- unknown keys, at every level, with a suggestion ---------------------------------------------------

SCHEMA_TYPOS: list[tuple[str, Edit, str, str]] = [
    # (label, edit, unknown key path, suggestion)
    ("root", lambda d: _rename(d, "topology", "topolgy"), "topolgy", "topology"),
    ("root", lambda d: _rename(d, "metadata", "metdata"), "metdata", "metadata"),
    ("root", lambda d: _rename(d, "version", "verison"), "verison", "version"),
    ("layout", lambda d: _rename(d["layout"], "t_current", "t_curent"), "layout.t_curent", "t_current"),
    ("layout", lambda d: _rename(d["layout"], "d_model", "d_modle"), "layout.d_modle", "d_model"),
    ("region", lambda d: _rename(d["layout"]["regions"]["b"], "loss_weight", "loss_wieght"),
     "layout.regions.b.loss_wieght", "loss_weight"),
    ("region", lambda d: _rename(d["layout"]["regions"]["a"], "bounds", "bonds"), "layout.regions.a.bonds", "bounds"),
    ("topology", lambda d: _rename(d["topology"], "connections", "conections"), "topology.conections", "connections"),
    ("connection", lambda d: _rename(d["topology"]["connections"][0], "weight", "wieght"),
     "topology.connections[0].wieght", "weight"),
    ("connection", lambda d: _rename(d["topology"]["connections"][1], "temporal_fill", "temporal_fil"),
     "topology.connections[1].temporal_fil", "temporal_fill"),
]


@pytest.mark.parametrize(("label", "edit", "key", "suggestion"), SCHEMA_TYPOS)
def test_a_misspelled_schema_key_is_refused_with_a_suggestion(
    tmp_path: Path, label: str, edit: Edit, key: str, suggestion: str
) -> None:
    # the reported behaviour: the misspelled key was ignored and a default used in its place
    data = schema_dict()
    edit(data)
    message = _schema_refuses(_write(tmp_path, data), rf"unknown key {re.escape(repr(key))} ")
    assert f"(did you mean {suggestion!r}?)" in message
    assert suggestion in message.split("keys allowed in ")[1]


def test_an_unknown_key_without_a_close_match_lists_the_allowed_keys(tmp_path: Path) -> None:
    data = schema_dict()
    data["layout"]["regions"]["a"]["colour"] = "red"
    message = _schema_refuses(_write(tmp_path, data), r"unknown key 'layout\.regions\.a\.colour'; keys allowed in "
                              r"'layout\.regions\.a': bounds, period, is_output, loss_weight")
    assert "did you mean" not in message


LEVELS: dict[str, Callable[[dict], dict]] = {
    "schema": lambda d: d,
    "schema.layout": lambda d: d["layout"],
    "schema.region": lambda d: d["layout"]["regions"]["a"],
    "schema.topology": lambda d: d["topology"],
    "schema.connection": lambda d: d["topology"]["connections"][1],
}
PREFIX = {"schema": "", "schema.layout": "layout.", "schema.region": "layout.regions.a.",
          "schema.topology": "topology.", "schema.connection": "topology.connections[1]."}


@given(level=st.sampled_from(sorted(LEVELS)), name=st.text(min_size=1, max_size=12))
def test_any_unknown_key_at_any_level_is_refused_naming_it(level: str, name: str) -> None:
    if name in FILE_KEYS[level].allowed:
        return
    data = schema_dict()
    LEVELS[level](data)[name] = 1
    with pytest.raises(SchemaValidationError) as info:
        CanvasSchema.from_json(json.dumps(data))
    assert str(info.value).startswith(f"schema JSON: unknown key {PREFIX[level] + name!r}")


PROGRAM_TYPOS: list[tuple[Edit, str, str]] = [
    (lambda d: _rename(d, "acyclic", "acylic"), "acylic", "acyclic"),
    (lambda d: _rename(d, "regions", "region"), "region", "regions"),
    (lambda d: _rename(d["regions"]["a"], "family", "famly"), "regions.a.famly", "family"),
    (lambda d: _rename(d["regions"]["a"]["clock"], "period", "perid"), "regions.a.clock.perid", "period"),
    (lambda d: _rename(d["connections"][0], "write_mode", "write_mod"), "connections[0].write_mod", "write_mode"),
]


@pytest.mark.parametrize(("edit", "key", "suggestion"), PROGRAM_TYPOS)
def test_a_misspelled_program_key_is_refused_with_a_suggestion(
    tmp_path: Path, edit: Edit, key: str, suggestion: str
) -> None:
    data = program().to_dict()
    edit(data)
    message = _program_refuses(_write(tmp_path, data), rf"unknown key {re.escape(repr(key))} ")
    assert f"(did you mean {suggestion!r}?)" in message


def test_program_keys_in_a_connection_mapping_and_in_its_schema_are_checked(tmp_path: Path) -> None:
    data = program().to_dict()
    data["connections"] = {"1": {"operater": "gated"}}
    _program_refuses(_write(tmp_path, data), r"unknown key 'connections\.1\.operater' \(did you mean 'operator'\?\)")
    data = program().to_dict()
    _rename(data["schema"]["layout"], "t_current", "t_curent")
    message = _program_refuses(_write(tmp_path, data), r"key 'schema': unknown key 'layout\.t_curent'")
    assert "(did you mean 't_current'?)" in message


def test_every_key_our_writers_write_is_allowed_and_every_field_has_a_key() -> None:
    # the key sets live in one place (FILE_KEYS); they must match the classes they build
    def names(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    assert set(FILE_KEYS["schema.region"].allowed) == names(RegionSpec)
    assert set(FILE_KEYS["schema.connection"].allowed) == names(Connection)
    assert set(FILE_KEYS["schema.layout"].allowed) == names(CanvasLayout)
    assert set(FILE_KEYS["program.region"].allowed) == names(RegionProgram)
    assert set(FILE_KEYS["program.clock"].allowed) == names(Clock)
    assert set(FILE_KEYS["program.connection"].allowed) == names(ConnectionProgram)
    written = program().to_dict()
    assert set(written) == set(FILE_KEYS["program"].allowed)
    assert set(written["schema"]) == set(FILE_KEYS["schema"].allowed)
    assert set(written["schema"]["layout"]) == set(FILE_KEYS["schema.layout"].allowed)
    assert set(written["schema"]["topology"]) == set(FILE_KEYS["schema.topology"].allowed)
    assert set(written["regions"]["a"]) == set(FILE_KEYS["program.region"].allowed)
    assert set(written["regions"]["a"]["clock"]) == set(FILE_KEYS["program.clock"].allowed)


# -- missing keys and documented defaults ---------------------------------------------------------------


def test_a_missing_topology_is_an_error_not_a_default(tmp_path: Path) -> None:
    data = schema_dict()
    del data["topology"]
    _schema_refuses(_write(tmp_path, data), r"missing key 'topology'$")


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d["layout"].pop("T"), "layout.T"),
        (lambda d: d["layout"]["regions"]["a"].pop("bounds"), "layout.regions.a.bounds"),
        (lambda d: d["topology"].pop("connections"), "topology.connections"),
        (lambda d: d["topology"]["connections"][0].pop("dst"), "topology.connections[0].dst"),
    ],
)
def test_a_missing_key_without_a_default_is_named(tmp_path: Path, edit: Edit, key: str) -> None:
    data = schema_dict()
    edit(data)
    _schema_refuses(_write(tmp_path, data), rf"missing key {re.escape(repr(key))}")


def test_documented_defaults_still_fill_optional_keys(tmp_path: Path) -> None:
    minimal = {
        "layout": {"T": 2, "H": 1, "W": 2, "d_model": 4, "regions": {"a": {"bounds": [0, 2, 0, 1, 0, 2]}}},
        "topology": {"connections": [{"src": "a", "dst": "a"}]},
    }
    schema = CanvasSchema.from_json(_write(tmp_path, minimal))
    assert schema.layout.t_current == 0 and schema.metadata == {}
    assert schema.layout.regions["a"] == RegionSpec((0, 2, 0, 1, 0, 2))
    assert schema.topology.connections == (Connection("a", "a"),)
    loaded = CanvasProgram.from_json(_write(tmp_path, {"schema": minimal}, "program.json"))
    assert loaded.regions["a"] == RegionProgram() and loaded.acyclic is False
    again = CanvasProgram.from_dict({"schema": minimal, "regions": {"a": {"clock": {"kind": "boundary"}}}})
    assert again.regions["a"].clock == Clock("boundary")


def test_files_our_writers_write_load_back(tmp_path: Path) -> None:
    robot = robot_manipulation_schema()
    assert CanvasSchema.from_json(robot.to_json(tmp_path / "robot.json")) == robot
    assert CanvasSchema.from_json(tmp_path / "robot.json") == robot
    made = program()
    made.to_json(tmp_path / "program.json")
    assert CanvasProgram.from_json(tmp_path / "program.json") == made
    assert CanvasSchema.from_json(tiny_schema().to_json()) == tiny_schema()


# -- duplicate keys -------------------------------------------------------------------------------------


def test_a_duplicated_region_is_refused_not_the_last_kept(tmp_path: Path) -> None:
    text = json.dumps(schema_dict()).replace('"b": {"bounds"', '"a": {"bounds"', 1)
    assert text.count('"a": {"bounds"') == 2
    path = tmp_path / "dup.json"
    path.write_text(text, encoding="utf-8")
    _schema_refuses(path, r"duplicate key 'a' in the object with keys 'a' \(each key may appear once\)")


@pytest.mark.parametrize(
    "text",
    [
        '{"version": 1, "version": 1, "layout": {}}',
        '{"layout": {"T": 2, "T": 3}}',
        '{"metadata": {"k": 1, "k": 2}}',
        '[{"x": 1, "x": 1}]',
    ],
)
def test_a_duplicate_key_anywhere_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "dup.json"
    path.write_text(text, encoding="utf-8")
    _schema_refuses(path, r"duplicate key '(version|T|k|x)'")
    with pytest.raises(ProgramValidationError, match=r"^program JSON: duplicate key"):
        CanvasProgram.from_json(text)


# -- non-finite numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("where", ["metadata", "weight"])
def test_nan_and_infinity_tokens_are_refused(tmp_path: Path, token: str, where: str) -> None:
    data = schema_dict()
    if where == "metadata":
        data["metadata"]["score"] = "TOKEN"
    else:
        data["topology"]["connections"][0]["weight"] = "TOKEN"
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(data).replace('"TOKEN"', token), encoding="utf-8")
    _schema_refuses(path, rf"non-finite number {re.escape(token)} \(JSON numbers must be finite")
    program_data = program().to_dict()
    program_data["metadata"]["score"] = "TOKEN"
    path.write_text(json.dumps(program_data).replace('"TOKEN"', token), encoding="utf-8")
    _program_refuses(path, rf"non-finite number {re.escape(token)}")


def test_a_number_too_large_for_a_float_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps(schema_dict()).replace('"run": 1', '"run": 1e999'), encoding="utf-8")
    _schema_refuses(path, r"number 1e999 is out of range for a 64-bit float")


def test_nan_is_never_written(tmp_path: Path) -> None:
    layout = CanvasSchema.from_dict(schema_dict()).layout
    with pytest.raises(SchemaValidationError, match=r"CanvasSchema\.metadata is not JSON-serialisable: key 'x\[1\]' "
                       r"is nan; JSON has no NaN or Infinity"):
        CanvasSchema(layout, metadata={"x": [1.0, math.nan]})
    with pytest.raises(SchemaValidationError, match=r"key 'deep\.er' is inf"):
        CanvasSchema(layout, metadata={"deep": {"er": math.inf}})
    made = dataclasses.replace(program(), metadata={"loss": math.nan})
    target = tmp_path / "out" / "program.json"
    with pytest.raises(ProgramValidationError, match=rf"program: cannot write file {re.escape(repr(str(target)))}: "
                       r"key 'metadata\.loss' is nan; JSON has no NaN"):
        made.to_json(target)
    with pytest.raises(ProgramValidationError, match=r"program: cannot write JSON text: key 'metadata\.loss' is nan"):
        made.to_json()
    assert not target.exists()


# -- undecodable, too deep, too large -------------------------------------------------------------------


def test_bytes_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(schema_dict()).replace('"run": 1', '"run": "caf\u00e9"').encode("latin-1"))
    _schema_refuses(path, r"not UTF-8 text \(byte 0xe9 at offset \d+: invalid continuation byte\); JSON files must "
                          r"be UTF-8")
    path.write_bytes(json.dumps(schema_dict()).encode("utf-16"))
    _schema_refuses(path, r"not UTF-8 text \(byte 0xff at offset 0")
    _program_refuses(path, r"not UTF-8 text")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(schema_dict()).encode("utf-8"))
    assert CanvasSchema.from_json(path) == CanvasSchema.from_dict(schema_dict())


def _nested(depth: int) -> dict:
    value: object = 0
    for _ in range(depth - 1):
        value = [value]
    return {"deep": value}


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 200_000])
def test_nesting_deeper_than_the_limit_is_refused(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.json"
    data = schema_dict()
    text = json.dumps(data)[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}"
    path.write_text(text, encoding="utf-8")
    _schema_refuses(path, rf"nested more than {MAX_JSON_DEPTH} levels of objects and lists \(MAX_JSON_DEPTH\)")
    with pytest.raises(ProgramValidationError, match=r"^program JSON: nested more than"):
        CanvasProgram.from_json(text)


def test_nesting_at_the_limit_loads_and_deeper_metadata_is_not_written(tmp_path: Path) -> None:
    data = schema_dict()
    data["metadata"] = _nested(MAX_JSON_DEPTH - 2)  # root object + metadata object + the lists
    assert CanvasSchema.from_json(_write(tmp_path, data)).metadata == data["metadata"]
    with pytest.raises(SchemaValidationError, match=r"nested more than 100 levels"):
        CanvasSchema(CanvasSchema.from_dict(schema_dict()).layout, metadata=_nested(MAX_JSON_DEPTH + 5))


def test_a_file_larger_than_the_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as fh:
        fh.truncate(MAX_JSON_BYTES + 1)  # sparse: costs no disk
    _schema_refuses(path, rf"larger than {MAX_JSON_BYTES} bytes \(MAX_JSON_BYTES\)")


def test_text_larger_than_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_source, "MAX_JSON_BYTES", 100)
    text = json.dumps(schema_dict())
    with pytest.raises(SchemaValidationError, match=rf"^schema JSON: {len(text)} characters; the limit is 100"):
        CanvasSchema.from_json(text)


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        (123, r"schema source must be JSON text or a file path, got int"),
        ({"layout": {}}, r"schema source must be JSON text or a file path, got dict"),
        ("bad\0name.json", r"cannot read: embedded null byte"),
        ("x" * 5000, r"cannot read: File name too long"),
    ],
)
def test_a_source_that_is_neither_text_nor_a_readable_path_is_refused(source: object, pattern: str) -> None:
    with pytest.raises(SchemaValidationError, match=pattern):
        CanvasSchema.from_json(source)  # type: ignore[arg-type]


def test_a_folder_is_refused(tmp_path: Path) -> None:
    _schema_refuses(tmp_path, r"cannot read: Is a directory")


# -- writing into missing folders -----------------------------------------------------------------------


def test_to_json_creates_missing_folders_and_a_failure_names_the_target(tmp_path: Path) -> None:
    schema = CanvasSchema.from_dict(schema_dict())
    target = tmp_path / "new" / "deeper" / "schema.json"
    schema.to_json(target)
    assert CanvasSchema.from_json(target) == schema
    program().to_json(tmp_path / "other" / "program.json")
    assert CanvasProgram.from_json(tmp_path / "other" / "program.json") == program()
    (tmp_path / "file").write_text("x")
    blocked = tmp_path / "file" / "schema.json"
    with pytest.raises(NotADirectoryError) as info:
        schema.to_json(blocked)
    assert info.value.filename == str(blocked) and ".tmp-" not in str(info.value)
    assert sorted(p.name for p in (tmp_path / "new" / "deeper").iterdir()) == ["schema.json"]


# -- the schema command ---------------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}

    def add(name: str, content: bytes) -> None:
        files[name] = tmp_path / f"{name}.json"
        files[name].write_bytes(content)

    data = schema_dict()
    _rename(data["layout"], "t_current", "t_curent")
    add("unknown_key", json.dumps(data).encode())
    add("duplicate", b'{"layout": {"T": 1, "T": 2}}')
    add("nan", json.dumps(schema_dict()).replace('"run": 1', '"run": NaN').encode())
    add("latin1", '{"metadata": "caf\u00e9"}'.encode("latin-1"))
    add("deep", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    add("empty", b"")
    add("random", bytes(range(256)) * 4)
    add("missing_topology", json.dumps({k: v for k, v in schema_dict().items() if k != "topology"}).encode())
    add("not_an_object", b"[1, 2]")
    add("bad_value", json.dumps(schema_dict()).replace('"T": 4', '"T": "four"').encode())
    add("bad_grid", json.dumps(schema_dict()).replace('"T": 4', '"T": 0').encode())
    (tmp_path / "folder.json").mkdir()
    files["folder"] = tmp_path / "folder.json"
    files["absent"] = tmp_path / "absent.json"
    return files


def test_the_schema_command_prints_one_line_and_exits_2_for_every_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, path in _bad_files(tmp_path).items():
        assert main(["schema", str(path)]) == 2, name
        out, err = capsys.readouterr()
        assert out == "", name
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: schema file "), (name, err)
        assert repr(str(path)) in lines[0], name


def test_the_schema_command_exits_2_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "typo.json"
    data = schema_dict()
    _rename(data, "topology", "topolgy")
    path.write_text(json.dumps(data), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "canvas_engineering", "schema", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"error: schema file {str(path)!r}: unknown key 'topolgy' (did you mean 'topology'?); keys allowed in "
        "the top level: layout, topology, version, metadata"
    ]
