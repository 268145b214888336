"""load_torch_state_dict on a path that is no .npz state dict: one templated ValueError naming the file.

A single .npy array used to fail with a bare TypeError (np.load returns the array itself, which is no
context manager), and a text file, a truncated archive or an object member with NumPy's own messages
("This file contains pickled (object) data", "File is not a zip file"), none naming the function.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.nn.state_dict import load_torch_state_dict

FN = "load_torch_state_dict"


def _good(tmp_path):
    path = tmp_path / "net.npz"
    arrays = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "fc.bias": np.ones(2, np.float32)}
    np.savez(path, **arrays)
    return path, arrays


def test_a_good_file_still_loads(tmp_path):
    path, arrays = _good(tmp_path)
    params, state = load_torch_state_dict(path)
    assert list(params) == list(arrays) and state == {}
    for k, v in arrays.items():
        np.testing.assert_array_equal(params[k], v)
        assert params[k].dtype == v.dtype


def test_a_single_npy_array_is_refused_by_name(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=rf"{FN}: state_dict '.*weights.npy' must be an .npz file of named "
                                         r"arrays, got a single .npy array"):  # fmt: skip
        load_torch_state_dict(path)
    with pytest.raises(ValueError, match=rf"{FN}: state_dict .* got a single .npy array"):
        load_torch_state_dict(str(path))


def test_a_file_that_is_no_npz_is_refused_by_name(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match=rf"{FN}: state_dict '.*notes.npz' must be a readable .npz file"):
        load_torch_state_dict(text)
    good, _ = _good(tmp_path)
    truncated = tmp_path / "truncated.npz"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{FN}: state_dict '.*truncated.npz' must be a readable .npz file"):
        load_torch_state_dict(truncated)


def test_an_object_member_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match=rf"{FN}: state_dict '.*evil.npz' must be a readable .npz file, "
                                         r"got ValueError: .*allow_pickle"):  # fmt: skip
        load_torch_state_dict(path)


def test_a_missing_file_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_state_dict(tmp_path / "missing.npz")


def test_an_open_npz_with_an_object_member_is_refused_by_name(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with np.load(path, allow_pickle=False) as npz:
        with pytest.raises(ValueError, match=rf"{FN}: state_dict \(an NpzFile\) must hold readable arrays, "
                                             r"got ValueError: .*allow_pickle"):  # fmt: skip
            load_torch_state_dict(npz)
