"""Tests for saf_ref.train.schedules: hand formulas and torch.optim.lr_scheduler."""

from __future__ import annotations

import math
import warnings

import pytest

from saf_ref.train.schedules import Constant, Cosine, MultiStep, Schedule, Warmup

N = 60


def torch_lrs(build, n, base_lr):
    """Learning rates a PyTorch scheduler gives at epochs 0..n-1 (read before each scheduler.step())."""
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "scheduler.step() before optimizer.step()"
        sched = build(torch.optim.lr_scheduler, opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return out


# ------------------------------------------------------------------------------------------------
# Hand formulas (exact)
# ------------------------------------------------------------------------------------------------


def test_multistep_hand_formula():
    s = MultiStep(0.1, [3, 5, 9], gamma=0.5)
    expected = [0.1] * 3 + [0.05] * 2 + [0.025] * 4 + [0.0125] * 6
    assert s.values(15) == expected
    assert s(4) == s.lr_at(4) == 0.05
    assert MultiStep(0.2, []).values(3) == [0.2, 0.2, 0.2]
    assert MultiStep(1.0, [0]).lr_at(0) == 0.1  # a milestone at 0 applies from the start


def test_cosine_hand_formula():
    s = Cosine(0.2, t_max=4, eta_min=0.02)
    assert s.lr_at(0) == 0.2
    assert s.lr_at(4) == pytest.approx(0.02, abs=1e-17)
    assert s.lr_at(2) == pytest.approx(0.11, rel=1e-15)  # midpoint: (base + eta_min) / 2
    assert s.lr_at(1) == pytest.approx(0.02 + 0.18 * (1 + math.sqrt(0.5)) / 2, rel=1e-15)
    # Past t_max it rises again, as PyTorch's (period 2 t_max).
    assert s.lr_at(8) == pytest.approx(0.2, rel=1e-15)
    assert s.lr_at(5) == pytest.approx(s.lr_at(3), rel=1e-15)


def test_warmup_hand_formula():
    s = Warmup(MultiStep(0.4, [2], gamma=0.5), warmup=4, start_factor=0.25)
    # ramp 0.1, 0.175, 0.25, 0.325 then the multistep clock restarts at 0: 0.4, 0.4, 0.2, ...
    assert s.values(8) == pytest.approx([0.1, 0.175, 0.25, 0.325, 0.4, 0.4, 0.2, 0.2], rel=1e-15)
    assert s.base_lr == 0.4
    c = Warmup(Cosine(1.0, t_max=10), warmup=1, start_factor=1.0)
    assert c.values(3) == [1.0, 1.0, Cosine(1.0, 10).lr_at(1)]
    assert Constant(0.3).values(2) == [0.3, 0.3]
    assert Warmup(Constant(0.3), warmup=3).lr_at(0) == pytest.approx(0.1, rel=1e-15)  # default 1/3
    for sched in (s, c, Constant(0.1), Cosine(0.1, 3)):
        assert isinstance(sched, Schedule)


# ------------------------------------------------------------------------------------------------
# Against torch.optim.lr_scheduler
# ------------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("milestones,gamma", [([5, 12, 30], 0.1), ([1, 2, 3, 50], 0.5), ([], 0.1)])
def test_multistep_against_torch(milestones, gamma):
    ref = torch_lrs(lambda m, o: m.MultiStepLR(o, milestones, gamma=gamma), N, 0.1)
    # torch multiplies recursively (0.1 * 0.1 * 0.1...); the closed form rounds once per power.
    assert MultiStep(0.1, milestones, gamma).values(N) == pytest.approx(ref, rel=1e-14)


@pytest.mark.torch
@pytest.mark.parametrize("t_max,eta_min", [(10, 0.0), (25, 0.001), (7, 0.05)])
def test_cosine_against_torch(t_max, eta_min):
    ref = torch_lrs(lambda m, o: m.CosineAnnealingLR(o, T_max=t_max, eta_min=eta_min), N, 0.1)
    got = Cosine(0.1, t_max, eta_min).values(N)  # N > 2 t_max: covers the rise past t_max too
    assert got == pytest.approx(ref, rel=1e-12, abs=1e-15)


@pytest.mark.torch
def test_cosine_matches_torch_closed_form_bit_for_bit():
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=13, eta_min=0.003)
    ours = Cosine(0.1, 13, 0.003)
    for t in range(40):
        sched.last_epoch = t
        assert sched._get_closed_form_lr()[0] == ours.lr_at(t)


@pytest.mark.torch
@pytest.mark.parametrize("warmup,start", [(5, 0.1), (3, 0.25), (1, 0.5)])
def test_warmup_cosine_against_torch_sequential(warmup, start):
    def build(m, o):
        w = m.LinearLR(o, start_factor=start, total_iters=warmup)
        c = m.CosineAnnealingLR(o, T_max=20)
        return m.SequentialLR(o, [w, c], milestones=[warmup])

    ref = torch_lrs(build, N, 0.1)
    got = Warmup(Cosine(0.1, 20), warmup=warmup, start_factor=start).values(N)
    assert got == pytest.approx(ref, rel=1e-12, abs=1e-15)


@pytest.mark.torch
@pytest.mark.parametrize("warmup,start", [(5, 0.1), (2, 1.0 / 3.0)])
def test_warmup_multistep_against_torch_sequential(warmup, start):
    def build(m, o):
        w = m.LinearLR(o, start_factor=start, total_iters=warmup)
        s = m.MultiStepLR(o, [10, 20], gamma=0.2)
        return m.SequentialLR(o, [w, s], milestones=[warmup])

    ref = torch_lrs(build, N, 0.05)
    got = Warmup(MultiStep(0.05, [10, 20], 0.2), warmup=warmup, start_factor=start).values(N)
    assert got == pytest.approx(ref, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def test_validation():
    with pytest.raises(ValueError, match="MultiStep: base_lr must be a finite number >= 0, got -0.1"):
        MultiStep(-0.1, [1])
    with pytest.raises(ValueError, match="Constant: base_lr must be a finite number >= 0, got inf"):
        Constant(math.inf)
    with pytest.raises(TypeError, match="Constant: base_lr must be a real number, got str"):
        Constant("0.1")
    with pytest.raises(ValueError, match=r"MultiStep: milestones must be strictly increasing, got \[5, 3\]"):
        MultiStep(0.1, [5, 3])
    with pytest.raises(ValueError, match=r"MultiStep: milestones must be strictly increasing, got \[3, 3\]"):
        MultiStep(0.1, [3, 3])
    with pytest.raises(ValueError, match=r"MultiStep: milestones\[0\] must be in \[0, inf\], got -1"):
        MultiStep(0.1, [-1])
    with pytest.raises(TypeError, match=r"MultiStep: milestones\[1\] must be an integer, got float 2.5"):
        MultiStep(0.1, [1, 2.5])
    with pytest.raises(TypeError, match="MultiStep: milestones must be a sequence of int, got int"):
        MultiStep(0.1, 5)
    with pytest.raises(ValueError, match="MultiStep: gamma must be a finite number > 0, got 0.0"):
        MultiStep(0.1, [1], gamma=0.0)
    with pytest.raises(TypeError, match="MultiStep: gamma must be a real number, got str"):
        MultiStep(0.1, [1], gamma="0.1")
    with pytest.raises(ValueError, match="Cosine: t_max must be in \\[1, inf\\], got 0"):
        Cosine(0.1, 0)
    with pytest.raises(TypeError, match="Cosine: t_max must be an integer, got float 10.0"):
        Cosine(0.1, 10.0)
    with pytest.raises(ValueError, match="Cosine: eta_min must be a finite number >= 0"):
        Cosine(0.1, 10, eta_min=-1e-3)
    with pytest.raises(ValueError, match=r"Warmup: start_factor must be in \(0, 1\], got 0.0"):
        Warmup(Constant(0.1), warmup=3, start_factor=0.0)
    with pytest.raises(ValueError, match=r"Warmup: start_factor must be in \(0, 1\], got 1.5"):
        Warmup(Constant(0.1), warmup=3, start_factor=1.5)
    with pytest.raises(TypeError, match=r"Warmup: start_factor must be a real number, got NoneType"):
        Warmup(Constant(0.1), warmup=3, start_factor=None)
    with pytest.raises(ValueError, match=r"Warmup: warmup must be in \[1, inf\], got 0"):
        Warmup(Constant(0.1), warmup=0)
    with pytest.raises(TypeError, match="Warmup: after must be a schedule with base_lr and lr_at"):
        Warmup(0.1, warmup=3)
    for sched in (Constant(0.1), MultiStep(0.1, [2]), Cosine(0.1, 5), Warmup(Constant(0.1), 2)):
        name = type(sched).__name__
        with pytest.raises(ValueError, match=rf"{name}.lr_at: t must be in \[0, inf\], got -1"):
            sched.lr_at(-1)
        with pytest.raises(TypeError, match=rf"{name}.lr_at: t must be an integer, got float 1.0"):
            sched.lr_at(1.0)
        with pytest.raises(ValueError, match=rf"{name}.values: n must be in \[0, inf\], got -2"):
            sched.values(-2)


def test_frozen_and_normalized():
    s = MultiStep(1, [2, 4])
    assert s.milestones == (2, 4) and isinstance(s.base_lr, float)
    assert s == MultiStep(0.1 * 10, (2, 4)) and hash(s) == hash(MultiStep(1.0, (2, 4)))
    with pytest.raises(AttributeError):
        s.gamma = 0.5
