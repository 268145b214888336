"""load_checkpoint(expected_params=...): each value must be an array or a shape, checked before the file
is read (review finding: an int value failed with a bare "'int' object is not iterable")."""

import numpy as np
import pytest

from saf_ref.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("value", [3, (3.0,), "3", None, (True,)])
def test_a_value_that_is_no_shape_is_refused_before_reading(tmp_path, value):
    missing = tmp_path / "never_written.npz"  # the argument is refused before the path is looked at
    with pytest.raises(TypeError, match=r"load_checkpoint: expected_params\['w'\] must be a numpy.ndarray "
                                        r"or a shape \(a tuple of int\), got"):
        load_checkpoint(missing, expected_params={"w": value})
    with pytest.raises(TypeError, match="load_checkpoint: expected_params must be a dict"):
        load_checkpoint(missing, expected_params=[("w", (3,))])


@pytest.mark.parametrize("value", [(2, 3), [2, 3], (np.int64(2), np.int32(3)), np.zeros((2, 3), np.int8)])
def test_arrays_and_int_shapes_are_accepted(tmp_path, value):
    path = tmp_path / "c.npz"
    save_checkpoint(path, params={"w": np.ones((2, 3), np.float32)}, state={})
    assert load_checkpoint(path, expected_params={"w": value}).params["w"].shape == (2, 3)
    with pytest.raises(CheckpointError, match=r"'w' has shape \(2, 3\), expected \(3, 2\)"):
        load_checkpoint(path, expected_params={"w": (3, 2)})
