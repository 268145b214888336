"""The RandBET curriculum: the reference code's per-batch rule (default) and the per-epoch latch.

The rule is written out here from the reference code (``average_simple_curriculum`` in
``experiments/mlsys/common.py`` of github.com/davidstutz/random-bit-error-robustness)::

    if loss < threshold*1.15:
        average = (loss + perturbed_loss)/2
        population = 0 if average > threshold else 1
    else:
        population = 0

with ``perturbed_loss = 0`` after a step without errors (``population_perturbed_loss`` starts at 0), and
the expected switches of each scripted sequence are listed by hand. The loop is driven by a scripted
model whose clean and perturbed losses are chosen step by step, so the test sees exactly which steps the
loop ran a perturbed pass in.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from saf_ref.bits.quantize import Quantizer
from saf_ref.data.shipped import load_digits
from saf_ref.nn.blocks import ModelGrads
from saf_ref.nn.registry import ModelFns
from saf_ref.nn.small import init_small_cnn
from saf_ref.protect.storage import default_spec
from saf_ref.train.loop import format_epoch, train
from saf_ref.train.optim import SGD
from saf_ref.train.randbet import CURRICULUM_MARGIN, RandBETConfig, curriculum_errors_on, errors_on_after

TAU = 1.0


# ==================================================================================================
# The rule itself, on a scripted sequence
# ==================================================================================================

# (errors on in this step, clean loss, perturbed loss or None, errors on in the next step): by hand.
SCRIPT = [
    (False, 2.0, None, False),  # clean loss >= 1.15 tau: stays off
    (False, 1.2, None, False),  # 1.2 >= 1.15: off
    (False, 1.1, None, True),  # below 1.15 tau; perturbed loss counts as 0 -> mean 0.55 <= tau: on
    (True, 1.1, 1.0, False),  # mean 1.05 > tau: off again
    (False, 1.0, None, True),  # on
    (True, 0.9, 1.1, True),  # mean exactly tau: "at most tau" keeps it on
    (True, 1.15, 0.5, False),  # clean loss exactly 1.15 tau: not below, off
    (False, 0.5, None, True),  # on
    (True, 0.5, 3.0, False),  # mean 1.75 > tau: off
    (False, 0.4, None, True),  # on
    (True, 0.4, 1.5, True),  # mean 0.95: stays on
]


def test_rule_switches_on_and_off_as_specified():
    assert CURRICULUM_MARGIN == 1.15 and 1.15 * TAU == 1.15
    for i, (_on, loss, pert, expected) in enumerate(SCRIPT):
        assert curriculum_errors_on(loss, pert, TAU) is expected, f"step {i}"
    # Each step's state is the previous step's decision.
    for (_, _, _, decided), (on, *_) in zip(SCRIPT, SCRIPT[1:], strict=False):
        assert decided == on


def test_rule_scales_with_the_threshold_and_handles_nan():
    assert curriculum_errors_on(2.29, None, 2.0) and not curriculum_errors_on(2.3, None, 2.0)
    assert curriculum_errors_on(2.0, 2.0, 2.0) and not curriculum_errors_on(2.0, 2.0000001, 2.0)
    assert not curriculum_errors_on(math.nan, None, 1.0) and not curriculum_errors_on(math.nan, 0.1, 1.0)
    assert not curriculum_errors_on(math.inf, None, 1.0) and not curriculum_errors_on(0.5, math.inf, 1.0)
    # As in the reference (average > threshold is false for NaN), a NaN perturbed loss alone keeps them on.
    assert curriculum_errors_on(0.5, math.nan, 1.0)


# ==================================================================================================
# The loop, with a model whose losses are scripted
# ==================================================================================================


def _logits_for_loss(loss: float, n: int) -> np.ndarray:
    """float64 logits whose mean cross-entropy with labels 0 is ``loss``: ``a`` for class 0, 0 for nine
    others, with ``log(e^a + 9) - a = loss``."""
    a = math.log(9.0) - loss - math.log(-math.expm1(-loss))
    logits = np.zeros((n, 10))
    logits[:, 0] = a
    return logits


class ScriptedModel:
    """Clean and perturbed passes return the scripted losses of the current step and zero gradients.

    The parameters never change (zero gradient, plain SGD), so a pass is the clean one exactly when its
    weights equal the initial ones; a perturbed pass (bit errors at rate 0.5 in float64) never does.
    """

    def __init__(self, params, clean, perturbed):
        self.init = {k: v.copy() for k, v in params.items()}
        self.clean, self.perturbed = list(clean), list(perturbed)
        self.step = -1
        self.perturbed_steps = []

    def forward(self, params, state, x, *, train):
        if not train:
            return np.zeros((x.shape[0], 10)), {}, None
        is_clean = all(np.array_equal(params[k], v) for k, v in self.init.items())
        if is_clean:
            self.step += 1
            loss = self.clean[self.step]
        else:
            self.perturbed_steps.append(self.step)
            loss = self.perturbed[self.step]
        return _logits_for_loss(loss, x.shape[0]), {}, x.shape[0]

    def backward(self, dlogits, cache):
        return ModelGrads({k: np.zeros_like(v) for k, v in self.init.items()}, np.zeros((cache, 4)))

    def fns(self):
        return ModelFns("scripted", self.forward, self.backward)


def _scripted_run(clean, perturbed, *, epochs, batches_per_epoch, curriculum="batch", **kw):
    params = {"fc.weight": np.zeros((10, 4)), "fc.bias": np.zeros(10)}
    model = ScriptedModel(params, clean, perturbed)
    n = 4 * batches_per_epoch
    data = (np.zeros((n, 4)), np.zeros(n, dtype=np.int64))
    config = RandBETConfig(0.5, curriculum_loss=TAU, curriculum=curriculum, grad_clamp=None)
    kw.setdefault("spec", None if "transform" in kw else default_spec("float64"))
    _, _, history = train(params, {}, data, model=model.fns(), epochs=epochs, batch_size=4,
                          optimizer=SGD(0.1), randbet=config, augment=None, rng=0, verbose=False,
                          **kw)  # fmt: skip
    return model, history


def test_loop_switches_errors_per_batch_across_epochs():
    clean = [loss for _, loss, _, _ in SCRIPT] + [0.3]
    perturbed = [0.0 if p is None else p for _, _, p, _ in SCRIPT] + [0.9]
    # 12 steps in 3 epochs of 4: the state carries over the epoch boundaries.
    model, history = _scripted_run(clean, perturbed, epochs=3, batches_per_epoch=4)
    expected_on = [on for on, *_ in SCRIPT] + [SCRIPT[-1][3]]
    assert model.perturbed_steps == [i for i, on in enumerate(expected_on) if on]
    assert model.step == 11
    for e, record in enumerate(history):
        steps = expected_on[4 * e : 4 * e + 4]
        assert record["batches"] == 4 and record["error_batches"] == sum(steps)
        assert record["errors_on"] is any(steps)
        on_losses = [perturbed[4 * e + i] for i in range(4) if steps[i]]
        assert record["perturbed_loss"] == pytest.approx(np.mean(on_losses), rel=1e-12, abs=1e-12)
        assert record["loss"] == pytest.approx(np.mean(clean[4 * e : 4 * e + 4]), rel=1e-12)
        # The state the epoch leaves: the decision after its last step.
        assert record["errors_on_next"] is curriculum_errors_on(
            clean[4 * e + 3], perturbed[4 * e + 3] if steps[3] else None, TAU
        )
        assert errors_on_after(record, RandBETConfig(0.5, curriculum_loss=TAU)) is record["errors_on_next"]


def test_transform_shorthand_switches_errors_and_resumes_too(tmp_path):
    """With ``transform=`` (float storage) the per-batch state is recorded too, so it reaches the next
    epoch and a resumed run."""
    clean = [loss for _, loss, _, _ in SCRIPT] + [0.3]
    perturbed = [0.0 if p is None else p for _, _, p, _ in SCRIPT] + [0.9]
    expected_on = [on for on, *_ in SCRIPT] + [SCRIPT[-1][3]]
    model, history = _scripted_run(clean, perturbed, epochs=3, batches_per_epoch=4, transform="identity")
    assert model.perturbed_steps == [i for i, on in enumerate(expected_on) if on]
    _scripted_run(clean, perturbed, epochs=2, batches_per_epoch=4, transform="identity",
                  checkpoint=tmp_path / "ck.npz")  # fmt: skip
    # Resumed: the scripted model counts steps from 0 again, so it replays epoch 2's part of the script.
    resumed, h_res = _scripted_run(clean[8:], perturbed[8:], epochs=3, batches_per_epoch=4,
                                   transform="identity", checkpoint=tmp_path / "ck.npz",
                                   resume=True)  # fmt: skip
    assert [8 + i for i in resumed.perturbed_steps] == [i for i in range(8, 12) if expected_on[i]]
    assert h_res[2]["error_batches"] == history[2]["error_batches"]


def test_loop_never_switches_on_above_the_margin_and_latch_never_switches_off():
    # Clean losses at 1.2 tau: the per-batch rule keeps errors off throughout.
    model, history = _scripted_run([1.2] * 8, [0.0] * 8, epochs=2, batches_per_epoch=4)
    assert model.perturbed_steps == [] and [r["error_batches"] for r in history] == [0, 0]
    assert all(r["perturbed_loss"] is None and r["errors_on"] is False for r in history)
    # The latch: epoch 0's mean clean loss 0.8 < tau turns errors on for all of epoch 1 and 2, although the
    # perturbed losses are huge (the per-batch rule would switch them off after each such step).
    clean, perturbed = [0.8] * 12, [9.0] * 12
    model, history = _scripted_run(clean, perturbed, epochs=3, batches_per_epoch=4, curriculum="epoch")
    assert model.perturbed_steps == list(range(4, 12))
    assert [r["errors_on"] for r in history] == [False, True, True]
    assert all("error_batches" not in r and "errors_on_next" not in r for r in history)
    model, history = _scripted_run(clean, perturbed, epochs=3, batches_per_epoch=4)
    assert model.perturbed_steps == [1, 3, 5, 7, 9, 11]  # on, then off after each perturbed step


def test_no_threshold_means_errors_on_in_every_step():
    params = {"fc.weight": np.zeros((10, 4)), "fc.bias": np.zeros(10)}
    model = ScriptedModel(params, [5.0] * 4, [5.0] * 4)
    data = (np.zeros((8, 4)), np.zeros(8, dtype=np.int64))
    _, _, history = train(params, {}, data, model=model.fns(), spec=default_spec("float64"), epochs=2,
                          batch_size=4, optimizer=SGD(0.1), randbet=RandBETConfig(0.5), augment=None,
                          rng=0, verbose=False)  # fmt: skip
    assert model.perturbed_steps == [0, 1, 2, 3] and "error_batches" not in history[0]


def test_progress_line_counts_the_batches_with_errors():
    clean = [loss for _, loss, _, _ in SCRIPT][:8]
    perturbed = [0.0 if p is None else p for _, _, p, _ in SCRIPT][:8]
    _, history = _scripted_run(clean, perturbed, epochs=2, batches_per_epoch=4)
    line = format_epoch(history[1], 2)
    assert line.endswith(f"errors on in 2/4 batches (perturbed loss {history[1]['perturbed_loss']:.4f})")
    _, off = _scripted_run([2.0] * 4, [0.0] * 4, epochs=1, batches_per_epoch=4)
    assert format_epoch(off[0], 1).endswith("  errors off")


# ==================================================================================================
# A real model: the default, resuming, identity
# ==================================================================================================


def _cnn_run(tmp_path, name, *, epochs, config, resume=False):
    d = load_digits(dtype=np.float32)
    data = (d.x_train[:160], d.y_train[:160], d.x_test[:60], d.y_test[:60])
    params, state = init_small_cnn(in_channels=1, num_classes=10, width=2, rng=0)
    spec = default_spec(Quantizer(8, margin=1e-3))
    return train(params, state, data, model="small_cnn", spec=spec, epochs=epochs,
                 batch_size=32, optimizer=SGD(0.05, momentum=0.9), randbet=config, augment=None, rng=3,
                 verbose=False, checkpoint=None if name is None else tmp_path / name,
                 resume=resume)  # fmt: skip


def test_per_batch_rule_is_the_default_and_resumes_exactly(tmp_path):
    config = RandBETConfig(p_train=0.02, weight_clip=0.5, curriculum_loss=2.2)
    assert config.curriculum == "batch" and config.batch_curriculum
    p_full, s_full, h_full = _cnn_run(tmp_path, "full.npz", epochs=3, config=config)
    # It switched within epochs: some but not all of the 5 steps of some epoch had errors.
    assert any(0 < r["error_batches"] < r["batches"] == 5 for r in h_full)
    _cnn_run(tmp_path, "part.npz", epochs=2, config=config)
    p_res, s_res, h_res = _cnn_run(tmp_path, "part.npz", epochs=3, config=config, resume=True)
    same = all(p_full[k].tobytes() == p_res[k].tobytes() for k in p_full)
    assert same and all(s_full[k].tobytes() == s_res[k].tobytes() for k in s_full)
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in h_full] == [
        {k: v for k, v in r.items() if k not in drop} for r in h_res
    ]
    # The latch trains differently and refuses the per-batch checkpoint (and vice versa).
    latch = RandBETConfig(p_train=0.02, weight_clip=0.5, curriculum_loss=2.2, curriculum="epoch")
    with pytest.raises(ValueError, match="train: the checkpoint .* has config"):
        _cnn_run(tmp_path, "part.npz", epochs=3, config=latch, resume=True)


def test_config_curriculum_validation_and_identity():
    with pytest.raises(ValueError, match=r"RandBETConfig: curriculum must be one of \('batch', 'epoch'\), "
                                         r"got 'step'"):  # fmt: skip
        RandBETConfig(0.01, curriculum_loss=1.0, curriculum="step")
    with pytest.raises(ValueError, match="RandBETConfig: curriculum must be one of"):
        RandBETConfig(0.01, curriculum=None)
    # The per-epoch latch (and no curriculum at all) keep the identity checkpoints had before the rule.
    base = {"p_train": 0.01, "grad_clamp": 0.05, "weight_clip": None, "curriculum_loss": 1.0}
    assert RandBETConfig(0.01, curriculum_loss=1.0, curriculum="epoch").to_dict() == base
    assert RandBETConfig(0.01, curriculum_loss=1.0).to_dict() == {**base, "curriculum": "batch"}
    assert RandBETConfig(0.01).to_dict() == {**base, "curriculum_loss": None}
    assert RandBETConfig(0.01, curriculum="epoch").to_dict() == {**base, "curriculum_loss": None}
    # Without a perturbed pass there is nothing to switch.
    assert not RandBETConfig(0.0, curriculum_loss=1.0).batch_curriculum
    assert not RandBETConfig(0.01).batch_curriculum
