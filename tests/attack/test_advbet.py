"""AdvBET: adversarial bit-error training as configuration of the one training loop.

References are built by hand from the public pieces, never from the step under test: the attack is
run with :func:`bit_flip_attack` on the step's latents and batch, its FaultList replayed with
``randbet_gradients(faults=...)`` (RandBET's tested path), the combination of several perturbed passes
written out as NumPy float32 arithmetic, then ``sgd_step`` and ``clip_weights``.
"""

from __future__ import annotations

import numpy as np
import pytest
from attack_helpers import tiny_mlp

from saf_ref.attack import AdvBETConfig, bit_flip_attack
from saf_ref.bits import FaultList, Quantizer
from saf_ref.bits.faultmodels import BitErrors
from saf_ref.data import load_digits
from saf_ref.nn.registry import model_fns
from saf_ref.nn.small import init_mlp, init_small_cnn
from saf_ref.protect import StorageRule, StorageSpec, default_spec, effective_weights
from saf_ref.train import SGD, AdversarialErrors, RandBETConfig, clip_weights, randbet_gradients
from saf_ref.train.loop import train, train_step
from saf_ref.train.optim import sgd_init, sgd_step

Q8 = default_spec(Quantizer(8, margin=1e-3))
Q4 = default_spec(Quantizer(4))
OPT = SGD(0.05, momentum=0.9, weight_decay=5e-4)


def _same_bits(a, b):
    return list(a) == list(b) and all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


def _without_timing(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history]


@pytest.fixture(scope="module")
def digits_flat():
    d = load_digits(dtype=np.float32)
    flat = [a.reshape(a.shape[0], -1) for a in (d.x_train[:96], d.x_test[:48])]
    return flat[0], d.y_train[:96], flat[1], d.y_test[:48]


def _mlp(seed=0):
    return init_mlp(64, hidden=(12,), num_classes=10, rng=seed)


# ==================================================================================================
# One step against a hand-built step
# ==================================================================================================


@pytest.mark.parametrize("method", ["gradient", "pbs"])
def test_advbet_step_equals_hand_built_step(method):
    params, state, x, y = tiny_mlp()
    adv = AdvBETConfig(k_train=3, method=method, iterations=2, candidates=3)
    config = RandBETConfig(0.0, grad_clamp=0.05, weight_clip=0.5, adversarial=adv)
    opt_state = sgd_init(params)
    got = train_step(params, state, opt_state, x, y, model="mlp", optimizer=OPT, spec=Q4, randbet=config)

    # by hand: the attack on this step's latents and batch, RandBET's replay path, SGD, clipping
    fl = bit_flip_attack("mlp", params, state, Q4, x, y, k=3, method=method, iterations=2,
                         candidates=3).faults
    assert len(fl) == 3
    g = randbet_gradients(params, state, x, y, model="mlp", spec=Q4, faults=fl, grad_clamp=0.05)
    want_p, want_o = sgd_step(params, g.update, opt_state, OPT)
    want_p = clip_weights(want_p, 0.5)
    assert _same_bits(got[0], want_p) and _same_bits(got[2], want_o) and _same_bits(got[1], g.state)
    assert got[3].n_flips == 3 and got[3].errors_on
    assert got[3].adversarial_loss == got[3].perturbed_loss == g.info.perturbed_loss


def test_constraints_reach_the_attack():
    """bits, per_tensor and one_per_word are the attack's: the step's flips obey them."""
    params, state, x, y = tiny_mlp()
    adv = AdvBETConfig(k_train=4, method="pbs", bits="msb", per_tensor={"fc2.weight": 1}, one_per_word=True)
    o = sgd_init(params)
    got = train_step(params, state, o, x, y, model="mlp", optimizer=OPT, spec=Q4,
                     randbet=RandBETConfig(0.0, adversarial=adv))
    fl = bit_flip_attack("mlp", params, state, Q4, x, y, k=4, method="pbs", bits="msb", candidates=4,
                         per_tensor={"fc2.weight": 1}, one_per_word=True).faults
    assert all(r.bit == 3 for r in fl) and sum(r.tensor == "fc2.weight" for r in fl) <= 1
    g = randbet_gradients(params, state, x, y, model="mlp", spec=Q4, faults=fl)
    assert _same_bits(got[0], sgd_step(params, g.update, o, OPT)[0])


def test_attack_sees_the_running_statistics_before_the_step():
    """A network with batch norm: the attack runs in evaluation mode on the state given to the step."""
    d = load_digits(dtype=np.float32)
    x, y = d.x_train[:32], d.y_train[:32]
    params, state = init_small_cnn(in_channels=1, num_classes=10, width=2, rng=1)
    # running statistics away from their initial values: one train-mode pass over other images
    _, state, _ = model_fns("small_cnn").forward(params, state, d.x_train[32:96], train=True)
    config = RandBETConfig(0.0, adversarial=AdvBETConfig(k_train=4))
    opt_state = sgd_init(params)
    got = train_step(params, state, opt_state, x, y, model="small_cnn", optimizer=OPT, spec=Q8,
                     randbet=config)
    fl = bit_flip_attack("small_cnn", params, state, Q8, x, y, k=4, method="gradient", iterations=1).faults
    g = randbet_gradients(params, state, x, y, model="small_cnn", spec=Q8, faults=fl)
    want_p, _ = sgd_step(params, g.update, opt_state, OPT)
    assert _same_bits(got[0], want_p) and _same_bits(got[1], g.state)


def test_mixed_random_and_adversarial_passes_average_by_thirds():
    params, state, x, y = tiny_mlp()
    adv = AdvBETConfig(k_train=2)
    config = RandBETConfig(0.05, grad_clamp=0.05, adversarial=adv)
    opt_state = sgd_init(params)
    got = train_step(params, state, opt_state, x, y, model="mlp", optimizer=OPT, spec=Q4, randbet=config,
                     rng=7)

    # the random pattern the step draws from rng=7, the attack's flips, each replayed on its own
    _, cache = effective_weights(params, Q4, faults=BitErrors(0.05), rng=7)
    rand_fl = cache.faults
    adv_fl = bit_flip_attack("mlp", params, state, Q4, x, y, k=2, method="gradient", iterations=1).faults
    g_rand = randbet_gradients(params, state, x, y, model="mlp", spec=Q4, faults=rand_fl, grad_clamp=None)
    g_adv = randbet_gradients(params, state, x, y, model="mlp", spec=Q4, faults=adv_fl, grad_clamp=None)
    c = np.float32(0.05)
    update = {k: (g_rand.clean[k] + np.clip(g_rand.perturbed[k], -c, c) + np.clip(g_adv.perturbed[k], -c, c))
              / np.float32(3) for k in params}
    want_p, _ = sgd_step(params, update, opt_state, OPT)
    assert _same_bits(got[0], want_p)
    info = got[3]
    assert info.n_flips == len(rand_fl) + 2 and len(rand_fl) > 0
    assert info.adversarial_loss == g_adv.info.perturbed_loss
    assert info.perturbed_loss == (g_rand.info.perturbed_loss + g_adv.info.perturbed_loss) / 2


def test_adversarial_keyword_alone_equals_faults_replay():
    params, state, x, y = tiny_mlp()
    fl = bit_flip_attack("mlp", params, state, Q4, x, y, k=4).faults
    a = randbet_gradients(params, state, x, y, model="mlp", spec=Q4, faults=fl)
    b = randbet_gradients(params, state, x, y, model="mlp", spec=Q4, adversarial=fl)
    assert _same_bits(a.update, b.update) and _same_bits(a.perturbed, b.perturbed)
    assert a.info._replace(adversarial_loss=None) == b.info._replace(adversarial_loss=None)
    assert a.info.adversarial_loss is None and b.info.adversarial_loss == b.info.perturbed_loss
    off = randbet_gradients(params, state, x, y, model="mlp", spec=Q4, adversarial=fl, errors_on=False)
    assert off.perturbed is None and not off.info.errors_on and off.info.n_flips == 0


def test_adversarial_pass_increases_the_loss_more_than_random_flips():
    params, state, x, y = tiny_mlp()
    k = 3
    config = RandBETConfig(0.0, adversarial=AdvBETConfig(k_train=k, iterations=2))
    info = train_step(params, state, sgd_init(params), x, y, model="mlp", optimizer=OPT, spec=Q4,
                      randbet=config)[3]
    assert info.adversarial_loss > info.loss  # measured: 3.44 against 1.06 on this instance
    # k random flips (exactly k, 20 draws) hurt less than the attack's k (measured: at most 1.54)
    rand = []
    for seed in range(20):
        g = randbet_gradients(params, state, x, y, model="mlp", spec=Q4, p_train=0.0,
                              faults=_random_flips(params, k, seed))
        rand.append(g.info.perturbed_loss)
    assert info.adversarial_loss > max(rand)


def _random_flips(params, k, seed):
    """``k`` distinct uniformly chosen exposed bits (4-bit words) as a FaultList."""
    rng = np.random.default_rng(seed)
    fmt = effective_weights(params, Q4)[1].stored[next(iter(params))].format
    words = [(n, i) for n, v in params.items() for i in range(v.size)]
    picks = rng.choice(len(words) * 4, size=k, replace=False)
    return FaultList([(words[p // 4][0], words[p // 4][1], int(p % 4), "flip", fmt) for p in picks])


def test_no_attack_runs_while_errors_are_off():
    """The protocol: any object with faults/check/to_dict; with errors off it is never called."""
    params, state, x, y = tiny_mlp()
    calls = []

    class Stub:
        def faults(self, params, state, x, y, *, model, spec, nonfinite):
            calls.append(nonfinite)
            return FaultList([("fc1.weight", 0, 3, "flip", effective_weights(params, spec)[1]
                               .stored["fc1.weight"].format)])

        def check(self, params, spec, *, model, fn):
            pass

        def to_dict(self):
            return {"attack": "stub"}

    assert isinstance(Stub(), AdversarialErrors)
    config = RandBETConfig(0.0, adversarial=Stub())
    o = sgd_init(params)
    off = train_step(params, state, o, x, y, model="mlp", optimizer=OPT, spec=Q4, randbet=config,
                     errors_on=False)
    clean = train_step(params, state, o, x, y, model="mlp", optimizer=OPT, spec=Q4)
    assert calls == [] and _same_bits(off[0], clean[0]) and off[3] == clean[3]
    on = train_step(params, state, o, x, y, model="mlp", optimizer=OPT, spec=Q4, randbet=config,
                    nonfinite="zero")
    assert calls == ["zero"] and on[3].n_flips == 1


# ==================================================================================================
# The loop: determinism, curriculum, checkpoints
# ==================================================================================================


def _run(data, *, rng=0, epochs=2, adv=None, p_train=0.0, curriculum=None, **kw):
    params, state = _mlp()
    config = RandBETConfig(p_train, weight_clip=0.5, curriculum_loss=curriculum, curriculum="epoch",
                           adversarial=adv or AdvBETConfig(k_train=2))
    return train(params, state, data, model="mlp", spec=Q8, epochs=epochs, batch_size=32, optimizer=OPT,
                 randbet=config, augment=None, rng=rng, **{"verbose": False, **kw})


def test_training_is_deterministic_for_a_seed(digits_flat):
    p1, s1, h1 = _run(digits_flat, rng=3, p_train=0.01)
    p2, s2, h2 = _run(digits_flat, rng=np.random.default_rng(3), p_train=0.01)
    assert _same_bits(p1, p2) and _same_bits(s1, s2) and _without_timing(h1) == _without_timing(h2)
    p3, _, _ = _run(digits_flat, rng=4, p_train=0.01)
    assert not _same_bits(p1, p3)
    for r in h1:  # 3 batches of 32 images, 2 adversarial flips each, plus the random ones
        assert r["errors_on"] and r["flips"] > 6 and r["adversarial_loss"] > r["loss"]


def test_adversarial_training_differs_from_clean_and_random_training(digits_flat):
    p_adv, _, h_adv = _run(digits_flat, epochs=1)
    params, state = _mlp()
    p_clean, _, h_clean = train(params, state, digits_flat, model="mlp", spec=Q8, epochs=1, batch_size=32,
                                optimizer=OPT, randbet=RandBETConfig(0.0, weight_clip=0.5), augment=None,
                                rng=0, verbose=False)
    assert not _same_bits(p_adv, p_clean)
    assert h_adv[0]["flips"] == 6 and h_clean[0]["flips"] == 0 and "adversarial_loss" not in h_clean[0]
    assert h_adv[0]["adversarial_loss"] > h_adv[0]["loss"]


def test_progress_line_shows_the_adversarial_loss(digits_flat, capsys):
    _, _, h = _run(digits_flat, epochs=2, curriculum=10.0, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("errors off")
    assert lines[1].endswith(f"errors on (perturbed loss {h[1]['perturbed_loss']:.4f}, "
                             f"adversarial {h[1]['adversarial_loss']:.4f})")


def test_curriculum_and_resume_equal_uninterrupted_run(digits_flat, tmp_path):
    full = _run(digits_flat, epochs=3, curriculum=10.0, checkpoint=tmp_path / "full.npz")
    assert [r["errors_on"] for r in full[2]] == [False, True, True]
    assert full[2][0]["adversarial_loss"] is None and full[2][1]["adversarial_loss"] > 0
    _run(digits_flat, epochs=2, curriculum=10.0, checkpoint=tmp_path / "part.npz")
    res = _run(digits_flat, epochs=3, curriculum=10.0, checkpoint=tmp_path / "part.npz", resume=True)
    assert _same_bits(full[0], res[0]) and _same_bits(full[1], res[1])
    assert _without_timing(full[2]) == _without_timing(res[2])
    # the attack's settings are part of the checkpoint's identity
    with pytest.raises(ValueError, match="train: the checkpoint .* has config"):
        _run(digits_flat, epochs=3, curriculum=10.0, checkpoint=tmp_path / "part.npz", resume=True,
             adv=AdvBETConfig(k_train=3))


def test_to_dict_is_json_and_randbet_identity_unchanged():
    import json

    adv = AdvBETConfig(k_train=5, method="pbs", bits=[7, 6], per_tensor={"fc1.weight": 2})
    d = RandBETConfig(0.01, adversarial=adv).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["adversarial"] == {"attack": "bit_flip_attack", "k_train": 5, "method": "pbs", "iterations": 1,
                                "candidates": 4, "bits": [7, 6], "per_tensor": {"fc1.weight": 2},
                                "one_per_word": None}
    assert hash(RandBETConfig(0.01, adversarial=adv)) == hash(RandBETConfig(0.01, adversarial=adv))
    # a RandBET configuration keeps the identity it had before AdvBET (old checkpoints still resume)
    assert RandBETConfig(0.01).to_dict() == {"p_train": 0.01, "grad_clamp": 0.05, "weight_clip": None,
                                             "curriculum_loss": None}


# ==================================================================================================
# Bad input
# ==================================================================================================


@pytest.mark.parametrize(("kw", "exc", "msg"), [
    ({"k_train": 0}, ValueError, r"AdvBETConfig: k_train must be in \[1, inf\], got 0"),
    ({"k_train": 1.5}, TypeError, "AdvBETConfig: k_train must be an int"),
    ({"k_train": 2, "method": "random"}, ValueError, "AdvBETConfig: method must be one of"),
    ({"k_train": 2, "iterations": -1}, ValueError, r"AdvBETConfig: iterations must be in \[0, inf\], got -1"),
    ({"k_train": 2, "candidates": 0}, ValueError, r"AdvBETConfig: candidates must be in \[1, inf\], got 0"),
    ({"k_train": 2, "bits": "lsb"}, ValueError, "AdvBETConfig: bits must be one of"),
    ({"k_train": 2, "bits": 3}, TypeError, "AdvBETConfig: bits must be None, 'msb' or a sequence"),
    ({"k_train": 2, "bits": [-1]}, ValueError, r"AdvBETConfig: bits\[0\] must be in \[0, 63\], got -1"),
    ({"k_train": 2, "per_tensor": -1}, ValueError, r"AdvBETConfig: per_tensor must be in \[0, inf\]"),
    ({"k_train": 2, "one_per_word": "yes"}, TypeError, "AdvBETConfig: one_per_word must be a bool"),
    ({"k_train": 2, "one_per_word": False}, ValueError, "AdvBETConfig: one_per_word must be True or None"),
])
def test_config_validation(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        AdvBETConfig(**kw)


def test_randbet_and_gradient_validation():
    with pytest.raises(TypeError, match="RandBETConfig: adversarial must be None or an attack with faults"):
        RandBETConfig(0.0, adversarial=object())
    params, state, x, y = tiny_mlp()
    with pytest.raises(TypeError, match="randbet_gradients: adversarial must be None or a FaultList, got "
                                        "list"):
        randbet_gradients(params, state, x, y, model="mlp", spec=Q4, adversarial=[])


def test_train_refuses_an_attack_it_cannot_run_before_training(digits_flat):
    params, state = _mlp()
    kw = dict(model="mlp", epochs=1, batch_size=32, augment=None, rng=0, verbose=False)
    words = sum(v.size for v in params.values())
    calls = []
    with pytest.raises(ValueError, match=f"train: k_train must be at most {words},"):
        train(params, state, digits_flat, spec=Q8, callback=lambda *a: calls.append(a),
              randbet=RandBETConfig(0.0, adversarial=AdvBETConfig(k_train=words + 1)), **kw)
    assert calls == []  # refused before the first epoch
    hidden = StorageSpec((StorageRule("*", format=Quantizer(8), exposed=False),))
    with pytest.raises(ValueError, match="train: spec must expose at least one parameter to the AdvBET "
                                         "attack"):
        train(params, state, digits_flat, spec=hidden,
              randbet=RandBETConfig(0.0, adversarial=AdvBETConfig(k_train=1)), **kw)
    with pytest.raises(ValueError, match="train: bits must be a non-empty list of positions below 8"):
        train(params, state, digits_flat, spec=Q8,
              randbet=RandBETConfig(0.0, adversarial=AdvBETConfig(k_train=1, bits=[9])), **kw)
    with pytest.raises(ValueError, match="train: per_tensor keys must be exposed tensors"):
        train(params, state, digits_flat, spec=Q8,
              randbet=RandBETConfig(0.0, adversarial=AdvBETConfig(k_train=1, per_tensor={"nope": 1})), **kw)
