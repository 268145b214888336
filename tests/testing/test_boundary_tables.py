"""Boundary tables: every check declares its classes, every class runs first on every run, the coverage
report says so; the NaN-latent exception excuses gradients only; the tables hold what they promise."""

from __future__ import annotations

import json

import numpy as np

from saf_ref.cli import main
from saf_ref.testing import strategies as sst
from saf_ref.testing.checks import all_checks
from saf_ref.testing.checks.codecs import QUANT_RANGES, quant_combinations
from saf_ref.testing.checks.core import Boundary, Context, SuiteOptions
from saf_ref.testing.protocol import describe_backend
from saf_ref.testing.reference_backend import ReferenceBackend
from saf_ref.testing.suite import coverage_text, run_suite


def _tables(dtype="float32"):
    backend = ReferenceBackend(dtype=dtype)
    info = describe_backend(backend)
    return {c.name: c.explicit(Context(backend, info, SuiteOptions(), c.name)) for c in all_checks()}


def test_every_check_has_a_named_boundary_table():
    for name, rows in _tables().items():
        assert len(rows) >= 4, name
        assert all(isinstance(r, Boundary) and r.name for r in rows), name
        assert len({r.name for r in rows}) == len(rows), f"{name}: class names must be distinct"


def test_nan_kinds_are_every_kind_of_nan():
    for dtype, m in ((np.float16, 10), (np.float32, 23), (np.float64, 52)):
        nans = sst.nan_kinds(dtype)
        assert np.isnan(nans).all() and len(nans) == 10
        bits = nans.view(f"u{np.dtype(dtype).itemsize}").astype(object)
        payload = [int(b) & ((1 << m) - 1) for b in bits]
        quiet = [p >> (m - 1) & 1 for p in payload]
        assert set(quiet) == {0, 1}  # quiet and signalling
        assert any(p == 1 for p in payload)  # a payload only in the lowest bit (signalling)
        assert any(p == (1 << m) - 1 for p in payload)  # every payload bit set
        assert {int(b) >> (8 * np.dtype(dtype).itemsize - 1) for b in bits} == {0, 1}  # both signs


def test_layouts_cover_ranks_zero_to_four_and_non_contiguous():
    tables = _tables()
    for name in ("encode[float16]", "relu_forward", "transform_forward[tanh]", "decode[bfloat16]"):
        pick = {"relu_forward": 0, "transform_forward[tanh]": 1}.get(name)
        arrays = [r.case if pick is None else r.case[pick] for r in tables[name]]
        assert {a.ndim for a in arrays} >= {0, 1, 2, 3, 4}, name
        assert any(not a.flags.c_contiguous for a in arrays), name


def test_quantizer_table_has_every_option_combination():
    configs = [b.case[0] for b in quant_combinations()]
    keys = ("scheme", "code", "rounding", "margin")
    seen = {(*(c[k] for k in keys), c["clip"] is not None, c["max_abs"] is not None) for c in configs}
    assert len(seen) == len(QUANT_RANGES) * 2 * 2 * 2 == 40
    nbits = {b.case[0]["nbits"] for b in quant_combinations()}
    assert {2, 8, 16} <= nbits


def test_network_tables_reach_64_channels_primes_and_block_remainders():
    tables = _tables()
    conv_in = {r.case.x_shape[1] for r in tables["conv2d_forward"]}
    conv_out = {r.case.w_shape[0] for r in tables["conv2d_forward"]}
    linear_in = {r.case.in_features for r in tables["linear_forward"]}
    assert {1, 17, 33, 64} <= conv_in | conv_out and {7, 13, 17, 31} & conv_in
    assert {1, 16, 17, 32, 33, 64} <= linear_in
    assert {r.case.width for r in tables["model[resnet20]"]} == {2, 3, 4, 8}
    ce = tables["cross_entropy_forward"]
    assert max(r.case.logit_scale for r in ce) >= 1e4 and any(r.case.logit_scale == 100.0 for r in ce)
    fault_ranks = {np.ndim(r.case[0]) for r in tables["apply_faults"]}
    assert {0, 1, 2, 4} <= fault_ranks


def test_every_class_runs_first_and_the_report_says_so():
    report = run_suite(
        ReferenceBackend(), examples=1, model_examples=1, only=["relu_vjp", "apply_faults", "quantize"]
    )
    for r in report.results:
        assert r.classes and r.classes_run == r.classes
        assert r.examples >= len(r.classes) + 1  # the table, then the generated example
    text = coverage_text(json.loads(report.to_json()))
    assert "NOT RUN" not in text and "x: NaN kinds" in text
    assert text.splitlines()[-1].startswith(f"{sum(len(r.classes) for r in report.results)} of ")


def test_coverage_marks_classes_that_did_not_run():
    from saf_ref.testing import mutants

    report = run_suite(mutants.NpReluGradOneAtZero(), examples=1, only=["relu_vjp"])
    r = report.result("relu_vjp")
    assert r.status == "fail" and len(r.classes_run) < len(r.classes)
    assert "NOT RUN" in report.coverage_text() and "some did not run" in report.coverage_text()
    off = run_suite(ReferenceBackend(), examples=1, only=["relu_vjp"], boundary_examples=False)
    assert off.result("relu_vjp").classes == []


def test_cli_coverage_flag(capsys, tmp_path):
    status = main(["check", "numpy", "--only", "relu_forward", "--examples", "1", "--coverage", "--quiet"])
    out = capsys.readouterr().out
    assert status == 0
    assert "relu_forward: 9 of 9 classes ran" in out and "ran      x: rank 4, strided view" in out
    assert main(["check", "numpy", "--only", "relu_forward", "--examples", "1", "--quiet"]) == 0
    assert "classes ran" not in capsys.readouterr().out
    path = tmp_path / "r.json"  # --json kept where the user asked for it
    assert (
        main(
            [
                "check",
                "numpy",
                "--only",
                "sgd",
                "--examples",
                "1",
                "--coverage",
                "--quiet",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    assert json.loads(path.read_text())["checks"][0]["classes_run"]


class _NanGradientPassThrough(ReferenceBackend):
    """PyTorch's behaviour at NaN latents: the gradient passes dw through (a documented divergence)."""

    def transform_vjp(self, name, u, dw, *, scale):
        du = super().transform_vjp(name, u, dw, scale=scale)
        return np.where(np.isnan(u), dw, du).astype(u.dtype)


class _NanForwardToZero(ReferenceBackend):
    """A forward pass that turns a NaN latent into a finite weight: a bug, never excused."""

    def transform_forward(self, name, u, *, scale):
        w = super().transform_forward(name, u, scale=scale)
        return np.where(np.isnan(u), u.dtype.type(0), w)


class _TanhInfinityNan(ReferenceBackend):
    """tanh(+-inf) = NaN: the softsign-infinity divergence must not excuse another transform."""

    def transform_forward(self, name, u, *, scale):
        w = super().transform_forward(name, u, scale=scale)
        return np.where(np.isinf(u), np.nan, w).astype(u.dtype) if name == "tanh" else w


def test_nan_latent_exception_excuses_gradients_only():
    grad = run_suite(_NanGradientPassThrough(), examples=2, only=["transform_vjp[identity]"])
    r = grad.result("transform_vjp[identity]")
    assert r.status == "known divergence" and set(r.divergences) == {"nan-latent-gradient"}
    fwd = run_suite(_NanForwardToZero(), examples=2, only=["transform_forward*"])
    names = ("identity", "tanh", "arctan", "softsign", "hardtanh")
    assert {r.name for r in fwd.failed} == {f"transform_forward[{n}]" for n in names}
    assert "NaN kinds" in fwd.result("transform_forward[tanh]").message


class _HardtanhRoundedBound(ReferenceBackend):
    """hardtanh's gradient compared with the bound rounded to the latents' dtype, as PyTorch and JAX do:
    0 at ``|u| = fl(a)`` also where ``fl(a) < a``. With ``also``, the same for tanh (never excused), and
    with ``below``, also one step inside the rounded bound (a bug, never excused)."""

    def __init__(self, *, also: str | None = None, below: bool = False) -> None:
        super().__init__(dtype="float32")
        self.also, self.below = also, below

    def transform_vjp(self, name, u, dw, *, scale):
        du = super().transform_vjp(name, u, dw, scale=scale)
        if name not in ("hardtanh", self.also):
            return du
        bound = u.dtype.type(scale)
        if self.below:
            bound = np.nextafter(bound, u.dtype.type(0))
        return np.where(np.abs(u) >= bound, u.dtype.type(0), du).astype(u.dtype)


def test_hardtanh_bound_gradient_excuses_hardtanh_at_the_rounded_bound_only():
    report = run_suite(_HardtanhRoundedBound(), examples=2, only=["transform_vjp[hardtanh]"])
    r = report.result("transform_vjp[hardtanh]")
    assert r.status == "known divergence" and set(r.divergences) == {"hardtanh-bound-gradient"}
    report = run_suite(_HardtanhRoundedBound(also="tanh"), examples=2, only=["transform_vjp[tanh]"])
    assert report.result("transform_vjp[tanh]").status == "fail"
    report = run_suite(_HardtanhRoundedBound(below=True), examples=2, only=["transform_vjp[hardtanh]"])
    assert report.result("transform_vjp[hardtanh]").status == "fail"


def test_softsign_infinity_excuses_softsign_only():
    report = run_suite(_TanhInfinityNan(), examples=2, only=["transform_forward[tanh]"])
    assert report.result("transform_forward[tanh]").status == "fail"
