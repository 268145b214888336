"""saf_ref.validation.check_rng: the one gate of every seed argument."""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.validation import check_rng


def test_check_rng_takes_a_generator_as_is_and_a_seed_as_default_rng():
    g = np.random.default_rng(5)
    assert check_rng(g, "f") is g
    for seed in (0, 7, np.int64(7), np.uint8(3)):
        want = np.random.default_rng(int(seed)).random(4)
        np.testing.assert_array_equal(check_rng(seed, "f").random(4), want)


@pytest.mark.parametrize("bad", [None, 1.0, "3", True, np.bool_(False), np.random.RandomState(0)])
def test_check_rng_refuses_other_types_with_a_type_error(bad):
    with pytest.raises(TypeError, match=r"^f: seed must be a numpy.random.Generator or a non-negative "):
        check_rng(bad, "f", "seed")


@pytest.mark.parametrize("bad", [-1, np.int64(-5)])
def test_check_rng_refuses_a_negative_seed_with_a_value_error(bad):
    with pytest.raises(ValueError, match=rf"^f: rng must be a numpy.random.Generator or a non-negative "
                       rf"integer seed, got {int(bad)}$"):
        check_rng(bad, "f")
