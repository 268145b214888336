"""Clipping, quantizing and exposing every trained tensor, as the reference code of Stutz et al. does.

``default_spec(..., weight_clip=c, clip_roles=ROLES)``, ``clip_weights(..., roles=ROLES)`` and
``RandBETConfig(clip_roles=ROLES)``. References: ``np.clip`` on the latents, the quantizer's own
encode/decode on the clipped tensor, the role table written out by hand; the default roles keep the
specs and training of before (compared with the spec written out rule by rule, and bit for bit).
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.bits.faultmodels import BitErrors
from saf_ref.bits.quantize import Quantizer
from saf_ref.data.shipped import load_digits
from saf_ref.nn.small import init_small_cnn
from saf_ref.protect.spec import ROLES, StorageRule, StorageSpec, check_clip_roles, default_spec
from saf_ref.protect.storage import inject, load, store
from saf_ref.train.loop import train
from saf_ref.train.optim import SGD
from saf_ref.train.randbet import RandBETConfig, clip_weights

Q8 = Quantizer(8, scheme="asymmetric", code="offset_binary", margin=1e-3)
SHAPES = {
    "conv1.weight": (4, 2, 3, 3),  # weight
    "bn1.weight": (4,),  # bn
    "bn1.bias": (4,),  # bn
    "fc.weight": (3, 4),  # weight
    "fc.bias": (3,),  # bias
    "step": (2,),  # other
}
ROLE_OF = {"conv1.weight": "weight", "bn1.weight": "bn", "bn1.bias": "bn", "fc.weight": "weight",
           "fc.bias": "bias", "step": "other"}  # fmt: skip


def _params(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in SHAPES.items()}


# ==================================================================================================
# The spec
# ==================================================================================================


def test_default_roles_give_the_spec_of_before():
    before = StorageSpec((
        StorageRule("*", format=Q8, transform="tanh", clip=0.1, role="weight"),
        StorageRule("*", format=Q8, transform="identity", exposed=False),
    ))  # fmt: skip
    assert default_spec(Q8, "tanh", weight_clip=0.1, expose_non_weights=False) == before
    assert default_spec(Q8, "tanh", weight_clip=0.1, expose_non_weights=False).to_dict() == before.to_dict()
    # Without a clip the roles change nothing.
    assert default_spec(Q8, clip_roles=ROLES) == default_spec(Q8)


@pytest.mark.parametrize("clip_roles", [ROLES, ("weight", "bn"), ("bias",), ()])
def test_clip_applies_to_exactly_the_given_roles(clip_roles):
    c = 0.5
    u = _params(scale=2.0)
    spec = default_spec("float32", weight_clip=c, clip_roles=clip_roles)
    got = load(store(u, spec))  # float32 storage is exact: only the clip changes values
    for name, v in u.items():
        want = np.clip(v, np.float32(-c), np.float32(c)) if ROLE_OF[name] in clip_roles else v
        assert got[name].tobytes() == want.tobytes(), name
    assert check_clip_roles(list(reversed(clip_roles)), "f") == tuple(r for r in ROLES if r in clip_roles)


def test_every_tensor_clipped_quantized_and_exposed():
    """The reference setting: every tensor clipped to [-c, c], stored by the 8-bit quantizer, exposed."""
    c = 0.3
    u = _params(scale=1.0)
    spec = default_spec(Q8, weight_clip=c, clip_roles=ROLES)
    got = load(store(u, spec))
    for name, v in u.items():
        clipped = np.clip(v, np.float32(-c), np.float32(c))
        codes, ctx = Q8.encode(clipped)  # the quantizer, by hand, on the clipped tensor
        assert got[name].tobytes() == Q8.decode(codes, ctx).tobytes(), name
        assert np.max(np.abs(got[name])) <= c
    # Every tensor is exposed: at rate 0.2 every one of them takes flips.
    fl = inject(store(u, spec), BitErrors(0.2), rng=0).faults
    assert set(fl.tensors) == set(SHAPES)
    hidden = inject(store(u, default_spec(Q8, weight_clip=c, clip_roles=ROLES, expose_non_weights=False)),
                    BitErrors(0.2), rng=0).faults  # fmt: skip
    assert set(hidden.tensors) == {"conv1.weight", "fc.weight"}


@pytest.mark.parametrize("bad, exc, match", [
    ("weight", TypeError, r"default_spec: clip_roles must be a tuple of roles from \('weight', 'bias', "),
    (None, TypeError, "default_spec: clip_roles must be a tuple of roles"),
    (("weight", "gamma"), ValueError, r"default_spec: clip_roles\[i\] must be one of \('weight', 'bias', "),
    (("bn", "bn"), ValueError, r"default_spec: clip_roles must not repeat a role, got \('bn', 'bn'\)"),
])  # fmt: skip
def test_clip_roles_validation(bad, exc, match):
    with pytest.raises(exc, match=match):
        default_spec(Q8, weight_clip=0.1, clip_roles=bad)
    with pytest.raises(exc, match=match.replace("default_spec", "clip_weights")):
        clip_weights(_params(), 0.1, roles=bad)
    with pytest.raises(exc, match=match.replace("default_spec", "RandBETConfig")):
        RandBETConfig(0.01, weight_clip=0.1, clip_roles=bad)


# ==================================================================================================
# clip_weights and the loop
# ==================================================================================================


def test_clip_weights_roles():
    u = _params(scale=2.0)
    c = np.float32(0.25)
    for roles in (("weight",), ROLES, ("bn", "bias")):
        out = clip_weights(u, 0.25, roles=roles)
        for name, v in u.items():
            if ROLE_OF[name] in roles:
                assert out[name].tobytes() == np.clip(v, -c, c).tobytes(), name
            else:
                assert out[name] is v, name
    default = clip_weights(u, 0.25)
    assert all(default[k].tobytes() == clip_weights(u, 0.25, roles=("weight",))[k].tobytes() for k in u)


def _run(config, *, model="small_cnn", spec=None, epochs=1, norm="batch", reparam=False):
    d = load_digits(dtype=np.float32)
    data = (d.x_train[:128], d.y_train[:128], d.x_test[:64], d.y_test[:64])
    params, state = init_small_cnn(width=4, rng=0, norm=norm, reparam=reparam)
    return train(params, state, data, model=model, spec=spec or default_spec(Q8), epochs=epochs,
                 batch_size=32, optimizer=SGD(0.05, momentum=0.9), randbet=config, augment=None, rng=0,
                 verbose=False)  # fmt: skip


def test_loop_clips_every_tensor_with_every_role():
    c = 0.2
    p_all, _, _ = _run(RandBETConfig(0.0, weight_clip=c, clip_roles=ROLES))
    assert all(np.max(np.abs(v)) <= np.float32(c) for v in p_all.values())
    # The default clips conv/linear weights only: the batch-norm scales (initialised at 1) stay near 1.
    p_w, _, _ = _run(RandBETConfig(0.0, weight_clip=c))
    assert all(np.max(np.abs(p_w[k])) <= np.float32(c) for k in ("conv1.weight", "fc.weight"))
    assert np.min(p_w["bn1.weight"]) > 0.5
    # The identity: clip_roles appears only when it differs from the default (old checkpoints resume).
    assert "clip_roles" not in RandBETConfig(0.0, weight_clip=c).to_dict()
    assert RandBETConfig(0.0, weight_clip=c, clip_roles=ROLES).to_dict()["clip_roles"] == list(ROLES)


def test_reference_setting_trains():
    """Group norm with the reparameterized scale, every tensor clipped, quantized and exposed, RandBET at
    1% with the per-batch curriculum: the latents stay in the box and the network learns."""
    c = 0.25
    spec = default_spec(Q8, weight_clip=c, clip_roles=ROLES)
    config = RandBETConfig(0.01, weight_clip=c, clip_roles=ROLES, curriculum_loss=2.2)
    params, state, history = _run(config, model="small_cnn@norm=group,reparam=1", spec=spec, epochs=8,
                                  norm="group", reparam=True)  # fmt: skip
    assert state == {} and all(np.max(np.abs(v)) <= np.float32(c) for v in params.values())
    assert history[-1]["loss"] < history[0]["loss"] and sum(r["error_batches"] for r in history) > 0
    assert history[-1]["test_acc"] > 0.4  # chance is 0.1 (0.56 when written)
