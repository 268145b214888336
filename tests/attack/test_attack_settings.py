"""AttackResult.settings must be JSON-ready whatever integer type the caller passed (review finding)."""

import json

import numpy as np
import pytest
from attack_helpers import SPECS, tiny_mlp

from saf_ref.attack import bit_flip_attack


@pytest.mark.parametrize(("per_tensor", "expected"), [
    (np.int64(2), 2), (np.uint8(3), 3), (None, None), ({"fc1.weight": np.int32(2)}, {"fc1.weight": 2}),
])
def test_settings_are_json_with_numpy_integers(per_tensor, expected):
    """A numpy integer cap passed the check but was kept as given, so to_json() raised json's TypeError."""
    params, state, x, y = tiny_mlp()
    result = bit_flip_attack("mlp", params, state, SPECS["quant4"], x, y, k=2, per_tensor=per_tensor,
                             candidates=np.int64(3), target=None)  # fmt: skip
    settings = json.loads(result.to_json())["settings"]
    assert settings["per_tensor"] == expected and type(settings["per_tensor"]) is type(expected)
    assert settings["candidates"] == 3 and settings["k"] == 2
