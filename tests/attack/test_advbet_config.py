"""AdvBETConfig edge cases found in review: a numpy.bool_ one_per_word, a malformed per_tensor tuple."""

import json

import numpy as np
import pytest

from saf_ref.attack import AdvBETConfig
from saf_ref.bits import Quantizer
from saf_ref.data.shipped import load_digits
from saf_ref.nn.small import init_mlp
from saf_ref.protect.storage import default_spec
from saf_ref.train import SGD, RandBETConfig, train


def test_numpy_bool_one_per_word_is_stored_as_a_python_bool_and_trains():
    """check_bool accepts numpy.bool_; the value used to be kept as given, so to_dict() was not JSON and
    train() (which records the attack's settings in the run's identity) failed with json's TypeError."""
    config = AdvBETConfig(k_train=2, method="pbs", one_per_word=np.True_)
    assert type(config.one_per_word) is bool and config.one_per_word
    assert json.loads(json.dumps(config.to_dict()))["one_per_word"] is True
    assert config == AdvBETConfig(k_train=2, method="pbs", one_per_word=True)
    d = load_digits(dtype=np.float32)
    params, state = init_mlp(64, hidden=(8,), rng=0, dtype=np.float32)
    spec = default_spec(Quantizer(4, scheme="asymmetric", code="offset_binary", margin=1e-3))
    _, _, history = train(params, state, (d.x_train[:32], d.y_train[:32]), model="mlp", spec=spec,
                          randbet=RandBETConfig(0.0, adversarial=config), epochs=1, batch_size=32,
                          augment=None, optimizer=SGD(0.1), rng=0, verbose=False)  # fmt: skip
    assert history[0]["flips"] == 2


@pytest.mark.parametrize("per_tensor", [(1, 2), (("fc1.weight",),), ((1, 2),), (("a", 1, 2),)])
def test_per_tensor_must_be_name_cap_pairs(per_tensor):
    """A tuple is taken as (name, cap) pairs; anything else used to fail inside the unpacking, with a
    bare 'cannot unpack' TypeError that named neither the function nor the argument (or, for an int
    name, was turned into a str and refused only by train())."""
    with pytest.raises(TypeError, match=r"AdvBETConfig: per_tensor must be None, an int, a dict str -> int "
                                        r"or a tuple of \(name, cap\) pairs, got"):
        AdvBETConfig(k_train=2, per_tensor=per_tensor)


def test_per_tensor_dict_and_pairs_are_the_same_configuration():
    a = AdvBETConfig(k_train=2, per_tensor={"fc1.weight": 1, "fc2.weight": 3})
    b = AdvBETConfig(k_train=2, per_tensor=(("fc1.weight", 1), ("fc2.weight", 3)))
    assert a == b and a.to_dict()["per_tensor"] == {"fc1.weight": 1, "fc2.weight": 3}
