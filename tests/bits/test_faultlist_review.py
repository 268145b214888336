"""Review fixes in saf_ref.bits.faultlist: a per-record kind that cannot be hashed, the JSON version,
records that are not an iterable of records, JSON nested too deeply.

Each test failed before its fix: ``FaultList.from_arrays(kind=[["flip"]])`` raised Python's bare
``TypeError: unhashable type: 'list'``; ``from_json`` took ``"version": true`` and ``"version": 1.0`` for
version 1 (``True == 1.0 == 1`` in Python); ``FaultList("abc")`` read the characters as records;
``from_json`` and ``load`` let json's ``RecursionError`` through.
"""

from __future__ import annotations

import json

import pytest

from saf_ref.bits.faultlist import FaultList


def test_from_arrays_unhashable_kind_is_templated():
    with pytest.raises(ValueError, match=r"^FaultList.from_arrays: kind must be one of \('flip', 'stuck0', "
                                         r"'stuck1'\), got \['flip'\]$"):
        FaultList.from_arrays([1, 2], [0, 0], kind=["flip", ["flip"]], format_name="raw8")
    fl = FaultList.from_arrays([1, 2], [0, 3], kind=["flip", "stuck1"], format_name="raw8")
    assert list(fl) == [("", 1, 0, "flip", "raw8"), ("", 2, 3, "stuck1", "raw8")]


@pytest.mark.parametrize("version", [True, 1.0, "1"])
def test_from_json_version_must_be_the_integer_1(version):
    text = json.dumps({"schema": "saf_ref.faultlist", "version": version, "faults": []})
    match = rf"^FaultList.from_json: schema/version must be 'saf_ref.faultlist'/1, got '[^']*'/{version!r}$"
    with pytest.raises(ValueError, match=match):
        FaultList.from_json(text)
    assert len(FaultList.from_json(text.replace(json.dumps(version), "1"))) == 0


@pytest.mark.parametrize("records", ["abc", b"abc", 3])
def test_records_must_be_an_iterable_of_records(records):
    # a str used to be read as its characters ("records[0]: must be a 5-tuple, got str 'a'"), an int
    # failed with Python's bare "'int' object is not iterable"
    with pytest.raises(TypeError, match=r"^FaultList: records must be an iterable of 5-tuples, got "):
        FaultList(records)


def test_from_json_deep_nesting_is_a_value_error(tmp_path):
    # json's decoder recurses once per bracket: a damaged file raised RecursionError
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match=r"^FaultList.from_json: text must be a fault list, got JSON nested"):
        FaultList.from_json(text)
    path = tmp_path / "deep.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"^FaultList.from_json: text must be a fault list"):
        FaultList.load(path)


def test_a_byte_order_mark_is_ignored_in_csv_text_and_files(tmp_path):
    """Spreadsheet programs start CSV files with a UTF-8 byte-order mark; the header then read as
    '\\ufefftensor' and the file was refused."""
    faults = FaultList([("fc.weight", 3, 30, "flip", "float32"), ("fc.bias", 0, 1, "stuck1", "float16")])
    text = faults.to_csv()
    assert FaultList.from_csv("\ufeff" + text).to_csv() == text
    for suffix, body in ((".csv", text), (".json", faults.to_json())):
        path = tmp_path / f"faults{suffix}"
        path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))  # U+FEFF in UTF-8, then the text
        assert FaultList.load(path).to_csv() == text
