"""Mutation proof: the suite catches every deliberately broken backend, in the expected check, within its
boundary table; each mutant overrides exactly one method; MUTANTS.md lists them with the right check.

The PyTorch mutants need torch; the NumPy mutants (the same 13 bugs in the independent reference backend,
and 6 that only the boundary tables catch) run everywhere, so the proof holds without torch too. (The
unmodified PyTorch backend passing the same suite is tested in test_suite_backends.py, the reference
backend here.)
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from saf_ref.testing import mutants
from saf_ref.testing.checks import all_checks
from saf_ref.testing.reference_backend import ReferenceBackend
from saf_ref.testing.suite import run_suite
from saf_ref.testing.torch_backend import TorchBackend

#: Mutants run their check with fewer examples than the CLI default (30): the boundary table comes first
#: and catches each of them; 4 generated examples per check keep the runs within seconds.
MUTANT_EXAMPLES = 4


@pytest.fixture(scope="module")
def torch():
    """torch with one thread (tiny tensors: fastest, and immune to OpenMP spinning on a busy CI box)."""
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(old)


def _table_size(name: str) -> int:
    """How many rows the check's boundary table has (run before any generated example)."""
    from saf_ref.testing.checks.core import Context, SuiteOptions
    from saf_ref.testing.protocol import describe_backend

    check = next(c for c in all_checks() if c.name == name)
    backend = ReferenceBackend()
    return len(check.explicit(Context(backend, describe_backend(backend), SuiteOptions(), name)))


def test_at_least_eleven_mutants_one_per_bug():
    assert len(mutants.MUTANTS) >= 11
    assert len({m.caught_by for m in mutants.MUTANTS}) >= 10
    assert all(m.bug and m.caught_by for m in mutants.MUTANTS)


@pytest.mark.parametrize("cls", mutants.MUTANTS, ids=lambda c: c.__name__)
def test_each_mutant_overrides_exactly_one_method(cls):
    """(Checked on the classes: no torch needed.)"""
    own = [k for k, v in vars(cls).items() if inspect.isfunction(v)]
    assert len(own) == 1, own
    assert cls.__mro__[1] is mutants.Mutant and issubclass(cls, TorchBackend)
    assert hasattr(TorchBackend, own[0])  # an override, not a new method


def _assert_caught(cls):
    report = run_suite(cls(), examples=MUTANT_EXAMPLES, model_examples=1, seed=0, only=[cls.caught_by])
    assert not report.ok
    r = report.result(cls.caught_by)
    assert r.status == "fail", f"{cls.__name__} not caught by {cls.caught_by}"
    assert r.first_failure <= _table_size(cls.caught_by)  # caught by the boundary table, which runs first
    assert r.classes_run[-1] in r.message  # the failing class is named in the reproduction
    assert r.message.startswith(cls.caught_by)  # the message names the check and its arguments
    assert "reproduce: saf-ref check" in r.message and "--seed 0" in r.message


@pytest.mark.torch
@pytest.mark.parametrize("cls", mutants.MUTANTS, ids=lambda c: c.__name__)
def test_suite_catches_each_mutant_in_the_expected_check(torch, cls):
    _assert_caught(cls)


@pytest.mark.parametrize("cls", mutants.NUMPY_MUTANTS, ids=lambda c: c.__name__)
def test_suite_catches_each_numpy_mutant_without_torch(cls):
    """100% of the hand-written mutants are caught where PyTorch is not installed (no torch imported)."""
    _assert_caught(cls)


def test_numpy_mutants_repeat_every_torch_bug_and_override_one_method():
    assert len(mutants.NUMPY_MUTANTS) >= len(mutants.MUTANTS) + 6
    twins = {m.bug: m.caught_by for m in mutants.NUMPY_MUTANTS}
    assert all(twins.get(m.bug) == m.caught_by for m in mutants.MUTANTS)
    for cls in mutants.NUMPY_MUTANTS:
        own = [k for k, v in vars(cls).items() if inspect.isfunction(v)]
        assert len(own) == 1 and hasattr(ReferenceBackend, own[0]), (cls.__name__, own)
        assert cls.__mro__[1] is mutants.NumpyMutant


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reference_backend_passes_strict_with_every_boundary_class(dtype):
    """The mutants' base (and the mutation score's subject) passes every check with no known divergence,
    NaN payloads compared bit for bit, and every boundary class runs."""
    report = run_suite(ReferenceBackend(dtype=dtype), examples=2, model_examples=1, seed=0, strict=True,
                       nan_payloads="strict")  # fmt: skip
    assert report.ok, report.failures_text()
    for r in report.results:
        assert r.classes and r.classes_run == r.classes, r.name


def test_reference_backend_imports_no_saf_ref_implementation():
    """Written from the spec: it imports only the protocol (its types and default roundoffs)."""
    import ast

    from saf_ref.testing import reference_backend

    tree = ast.parse(Path(reference_backend.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith("saf_ref")} == {"saf_ref.testing.protocol"}


@pytest.mark.parametrize(
    "cls",
    [mutants.UniformLessEqual, mutants.ReluGradOneAtZero, mutants.BatchNormUnbiasedVariance],
    ids=lambda c: c.__name__,
)
@pytest.mark.torch
def test_generated_examples_alone_catch_mutants(torch, cls):
    """Without the explicit boundary examples, the boundary values mixed into the strategies still catch
    the bug within the default 30 examples."""
    report = run_suite(cls(), examples=30, seed=0, boundary_examples=False, only=[cls.caught_by])
    r = report.result(cls.caught_by)
    assert r.status == "fail" and r.first_failure <= 30


@pytest.mark.parametrize(
    "cls", [mutants.ReluGradOneAtZero, mutants.NpReluGradOneAtZero], ids=lambda c: c.__name__
)
def test_failure_message_says_where_and_by_how_much(cls):
    if cls is mutants.ReluGradOneAtZero:
        pytest.importorskip("torch")
    report = run_suite(cls(), examples=3, only=["relu_vjp"])
    msg = report.result("relu_vjp").message
    assert re.search(r"relu_vjp: not bit-exact at index \(\d+,\): got .*, expected 0.0 \(0x00000000\)", msg)
    assert "x = 0.0" in msg or "x = -0.0" in msg
    # hypothesis' own note on the failing case (its wording varies across versions: "Falsifying explicit
    # example" in 6.155, "Failing explicit example" in 6.170).
    assert re.search(r"(Falsifying|Failing) explicit example", msg)
    assert "reproduce: saf-ref check" in msg


@pytest.mark.torch
def test_faultlist_failure_is_saved_and_replays(torch, tmp_path):
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
    assert rows == {cls.__name__: cls.caught_by for cls in mutants.MUTANTS + mutants.NUMPY_MUTANTS}
