"""Review fixes in saf_ref.bits.faultlist: a per-record kind that cannot be hashed, and the JSON version.

Both tests failed before the fix: ``FaultList.from_arrays(kind=[["flip"]])`` raised Python's bare
``TypeError: unhashable type: 'list'``; ``from_json`` took ``"version": true`` and ``"version": 1.0`` for
version 1 (``True == 1.0 == 1`` in Python).
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
