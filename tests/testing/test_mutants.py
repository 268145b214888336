"""Mutation proof: the suite catches every deliberately broken PyTorch backend, in the expected check, within
a few examples; each mutant overrides exactly one method; MUTANTS.md lists them with the right check.

(The unmodified PyTorch backend passing the same suite is tested in test_suite_backends.py.)
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from saf_ref.testing import mutants  # noqa: E402
from saf_ref.testing.suite import run_suite  # noqa: E402
from saf_ref.testing.torch_backend import TorchBackend  # noqa: E402

#: Mutants run the whole suite with fewer examples than the CLI default (30): the boundary examples come
#: first and catch each of them at once; 4 generated examples per check keep 13 runs within seconds.
MUTANT_EXAMPLES = 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The suite's tensors are tiny: one thread is fastest, and immune to OpenMP spinning on a busy CI box."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_at_least_eleven_mutants_one_per_bug():
    assert len(mutants.MUTANTS) >= 11
    assert len({m.caught_by for m in mutants.MUTANTS}) >= 10
    assert all(m.bug and m.caught_by for m in mutants.MUTANTS)


@pytest.mark.parametrize("cls", mutants.MUTANTS, ids=lambda c: c.__name__)
def test_each_mutant_overrides_exactly_one_method(cls):
    own = [k for k, v in vars(cls).items() if inspect.isfunction(v)]
    assert len(own) == 1, own
    assert cls.__mro__[1] is mutants.Mutant and issubclass(cls, TorchBackend)
    assert hasattr(TorchBackend, own[0])  # an override, not a new method


@pytest.mark.parametrize("cls", mutants.MUTANTS, ids=lambda c: c.__name__)
def test_suite_catches_each_mutant_in_the_expected_check(cls):
    report = run_suite(cls(), examples=MUTANT_EXAMPLES, model_examples=1, seed=0)
    assert not report.ok
    failed = {r.name: r for r in report.failed}
    assert cls.caught_by in failed, f"{cls.__name__} not caught by {cls.caught_by}: {sorted(failed)}"
    r = failed[cls.caught_by]
    assert r.first_failure == 1  # the boundary examples run first
    assert r.message.startswith(cls.caught_by)  # the message names the check and its arguments
    assert "reproduce: saf-ref check" in r.message and "--seed 0" in r.message


@pytest.mark.parametrize(
    "cls",
    [mutants.UniformLessEqual, mutants.ReluGradOneAtZero, mutants.BatchNormUnbiasedVariance],
    ids=lambda c: c.__name__,
)
def test_generated_examples_alone_catch_mutants(cls):
    """Without the explicit boundary examples, the boundary values mixed into the strategies still catch
    the bug within the default 30 examples."""
    report = run_suite(cls(), examples=30, seed=0, boundary_examples=False, only=[cls.caught_by])
    r = report.result(cls.caught_by)
    assert r.status == "fail" and r.first_failure <= 30


def test_failure_message_says_where_and_by_how_much():
    report = run_suite(mutants.ReluGradOneAtZero(), examples=3, only=["relu_vjp"])
    msg = report.result("relu_vjp").message
    assert re.search(r"relu_vjp: not bit-exact at index \(\d+,\): got .*, expected 0.0 \(0x00000000\)", msg)
    assert "x = 0.0" in msg or "x = -0.0" in msg
    # hypothesis' own note on the failing case (its wording varies across versions: "Falsifying explicit
    # example" in 6.155, "Failing explicit example" in 6.170).
    assert re.search(r"(Falsifying|Failing) explicit example", msg)
    assert "reproduce: saf-ref check" in msg


def test_faultlist_failure_is_saved_and_replays(tmp_path):
    from saf_ref.bits.faultlist import FaultList

    report = run_suite(
        mutants.FaultListFlipsAsSet(), examples=3, only=["apply_faults"], artifacts=str(tmp_path)
    )
    msg = report.result("apply_faults").message
    path = Path(re.search(r"the FaultList is saved in (\S+) ", msg).group(1))
    assert path.parent == tmp_path and path.exists()
    faults = FaultList.load(path)
    codes = np.load(str(path).replace("_faults.json", "_codes.npy"))
    # replaying the saved case shows the bug again, outside the suite
    bad = mutants.FaultListFlipsAsSet().apply_faults(codes, faults, nbits=16)
    assert not np.array_equal(bad, faults.apply(codes, nbits=16))
    assert np.array_equal(TorchBackend().apply_faults(codes, faults, nbits=16), faults.apply(codes, nbits=16))


def test_mutants_md_lists_every_mutant_with_its_check():
    text = (Path(mutants.__file__).parent / "MUTANTS.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| [^|]+ \| `([^`]+)`", text, re.M)}
    assert rows == {cls.__name__: cls.caught_by for cls in mutants.MUTANTS}
