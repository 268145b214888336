"""The MX codec and group norm checks of the conformance suite: the independent backends pass them, bugs
seen in real code fail them, a backend without MX support is reported as such, and the boundary tables
hold the classes they promise.

The references are saf_ref's :mod:`saf_ref.bits.mx` and :mod:`saf_ref.nn.groupnorm`; the subjects are the
reference backend (NumPy written from the specification) and PyTorch, neither of which calls saf_ref's
code, so every comparison can fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.bits.mx import MXFormat
from saf_ref.testing import mx_reference
from saf_ref.testing.checks.codecs import MX_CHECK_FORMATS, MXCase, mx_decode_classes, mx_encode_classes
from saf_ref.testing.checks.layers import gn_classes
from saf_ref.testing.reference_backend import ReferenceBackend
from saf_ref.testing.suite import run_suite

ONLY = ["mx_*", "groupnorm_*"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_reference_backend_passes_strictly(dtype):
    backend = ReferenceBackend(dtype=dtype)
    report = run_suite(backend, examples=5, only=ONLY, strict=True, nan_payloads="strict")
    assert report.ok, report.failures_text()
    assert len(report.results) == 2 * len(MX_CHECK_FORMATS) + 2
    assert {r.status for r in report.results} == {"pass"}


class MXTruncates(ReferenceBackend):
    """Elements rounded toward zero instead of to nearest even."""

    @staticmethod
    def _mx_round(f, y):
        return ReferenceBackend._mx_round(f, np.sign(y) * np.floor(np.abs(y) * 2.0**f.m) / 2.0**f.m)


class MXScaleFromCeil(ReferenceBackend):
    """The shared exponent from ceil(log2 max|V|): one binade too high where max|V| is not a power of 2."""

    def mx_encode(self, format_name, x):
        scales, elements = super().mx_encode(format_name, x)
        blocks = np.asarray(x, dtype=np.float64).reshape(scales.shape + (32,))
        amax = np.abs(np.where(np.isfinite(blocks), blocks, 0)).max(axis=-1)
        exact = (amax == 0) | (np.frexp(amax)[0] == 0.5)
        bump = (scales < 254) & ~exact
        return np.where(bump, scales + 1, scales).astype(np.uint8), elements


class MXNanScaleIgnored(ReferenceBackend):
    """Decoding treats the NaN scale 0xFF as 2**128 (a plain exponent)."""

    def mx_decode(self, format_name, scales, elements):
        values = super().mx_decode(format_name, np.where(scales == 0xFF, 254, scales), elements)
        return np.where(np.repeat(scales, 32, axis=-1) == 0xFF, values * 2.0, values)


class GroupNormUnbiased(ReferenceBackend):
    """Group norm normalised with the unbiased variance (batch norm's running-variance estimator)."""

    def groupnorm_forward(self, x, weight, bias, *, num_groups, eps):
        m = x[0].size // num_groups
        y = super().groupnorm_forward(x, weight, bias, num_groups=num_groups, eps=eps)
        if m < 2:
            return y
        pc = (1, -1) + (1,) * (x.ndim - 2)
        return ((y - bias.reshape(pc)) * np.sqrt((m - 1) / m) + bias.reshape(pc)).astype(x.dtype)


class GroupNormInterleaved(ReferenceBackend):
    """Groups of channels interleaved (channel c in group c % G: a reshape to (N, C/G, G) instead of
    (N, G, C/G))."""

    def _perm(self, c, num_groups):
        return np.arange(c).reshape(c // num_groups, num_groups).T.reshape(-1)

    def groupnorm_vjp(self, x, weight, bias, dy, *, num_groups, eps):
        p = self._perm(x.shape[1], num_groups)
        inv = np.argsort(p)
        dx, dw, db = super().groupnorm_vjp(x[:, p], weight[p], bias[p], dy[:, p], num_groups=num_groups,
                                           eps=eps)
        return dx[:, inv], dw[inv], db[inv]


@pytest.mark.parametrize(
    "backend, check",
    [
        (MXTruncates(), "mx_encode[mxfp8_e4m3]"),
        (MXTruncates(), "mx_encode[mxfp4]"),
        (MXScaleFromCeil(), "mx_encode[mxfp6_e3m2]"),
        (MXNanScaleIgnored(), "mx_decode[mxint8]"),
        (GroupNormUnbiased(), "groupnorm_forward"),
        (GroupNormInterleaved(), "groupnorm_vjp"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_a_realistic_bug_fails_its_check_at_a_boundary_class(backend, check):
    report = run_suite(backend, examples=3, only=[check])
    r = report.result(check)
    assert r.status == "fail", r.message
    assert r.first_failure <= len(r.classes)  # caught by the boundary table, before any generated case
    assert "reproduce: saf-ref check" in r.message


class OnlyMXFP8(ReferenceBackend):
    """A backend with MX support for the 8-bit element formats only."""

    def mx_encode(self, format_name, x):
        if not format_name.startswith("mxfp8"):
            raise NotImplementedError(f"OnlyMXFP8: no {format_name}")
        return super().mx_encode(format_name, x)


def test_an_unsupported_mx_format_is_skipped_as_not_implemented():
    report = run_suite(OnlyMXFP8(), examples=2, only=["mx_encode*"])
    for name in MX_CHECK_FORMATS:
        r = report.result(f"mx_encode[{name}]")
        if name.startswith("mxfp8"):
            assert r.status == "pass", r.message
        else:
            assert r.status == "skip" and r.message.startswith("not implemented (mx_encode: OnlyMXFP8: no")
    assert report.ok


def test_a_backend_without_mx_skips_the_mx_checks_by_name():
    class NoMX:
        def relu_forward(self, x):
            return ReferenceBackend().relu_forward(x)

    report = run_suite(NoMX(), examples=2, only=["mx_*"])
    assert {r.message for r in report.results} == {"backend has no mx_encode", "backend has no mx_decode"}


def test_the_mx_encode_table_pins_each_class_it_names():
    """The scale codes of the classes, from the specification's loop implementation (exact fractions)."""
    for name in ("mxfp8_e4m3", "mxfp4", "mxint8"):
        rows = {b.name: b.case for b in mx_encode_classes(name)}
        element = mx_reference.MX_ELEMENT[name]

        def scales(case, name=name):
            x = case.array() if isinstance(case, MXCase) else case
            blocks = np.asarray(x, dtype=np.float64).reshape(-1, 32)
            return {mx_reference.encode_block(name, [float(v) for v in b])[0] for b in blocks}

        assert scales(rows["ties at the largest scale 2**127 (float64)"]) == {254}
        assert scales(rows["ties at the smallest scale 2**-127 (float64)"]) == {0}
        assert scales(rows["shared exponent 128, one above the largest scale: NaN scale (float64)"]) == {255}
        assert scales(rows["shared exponent below -127: clamped (float64)"]) == {0}
        assert scales(rows["all-zero blocks: +0, -0 and mixed (scale code 0, signs kept)"]) == {0}
        assert 255 in scales(rows["NaN, infinities, signed zeros and subnormals in blocks (float32)"])
        ties = rows["ties of every element value, scale 2**0 (float32)"].array()
        assert scales(ties) == {127}
        # the ties class holds exact midpoints of neighbouring element values
        values = sorted({abs(float(v)) for c in range(1 << mx_reference.element_bits(element))
                         for v in [mx_reference.element_value(element, c)[0]] if not isinstance(v, str)})
        mids = {(a + b) / 2 for a, b in zip(values, values[1:], strict=False)}
        assert mids & set(np.abs(ties).ravel().astype(float).tolist())


def test_the_reference_backend_refuses_rows_that_are_not_whole_blocks():
    with pytest.raises(ValueError, match="ReferenceBackend: the last axis must be a multiple of 32, got"):
        ReferenceBackend().mx_encode("mxfp4", np.zeros((2, 20), np.float32))
    with pytest.raises(NotImplementedError, match="ReferenceBackend: unknown MX format 'mxfp2'"):
        ReferenceBackend().mx_decode("mxfp2", np.zeros(1, np.uint8), np.zeros(32, np.uint8))


def test_the_mx_decode_table_has_every_element_and_scale_code():
    for name in MX_CHECK_FORMATS:
        bits = MXFormat(name).element_bits
        rows = mx_decode_classes(name)
        codes = set(np.concatenate([np.ravel(r.case[1]) for r in rows]).tolist())
        scales = set(np.concatenate([np.ravel(r.case[0]) for r in rows]).tolist())
        assert codes == set(range(1 << bits)) and scales == set(range(256)), name


def test_the_group_norm_table_covers_layer_and_instance_norm_and_ranks():
    rows = gn_classes()
    ranks = {len(r.case.x_shape) for r in rows}
    assert ranks == {2, 3, 4, 5}
    assert any(r.case.num_groups == 1 for r in rows)
    assert any(r.case.num_groups == r.case.x_shape[1] for r in rows)
    assert any(r.case.layout == "strided" for r in rows)
    assert {17, 64} <= {r.case.x_shape[1] for r in rows}


@pytest.mark.torch
def test_torch_passes_the_mx_and_group_norm_checks_in_both_dtypes():
    pytest.importorskip("torch")
    from saf_ref.testing.torch_backend import TorchBackend

    for dtype in ("float32", "float64"):
        backend = TorchBackend(dtype=dtype)
        report = run_suite(backend, examples=5, only=ONLY, strict=True, nan_payloads="strict")
        assert report.ok, report.failures_text()
    with pytest.raises(ValueError, match="TorchBackend.mx_encode: the last axis must be a multiple of 32"):
        TorchBackend().mx_encode("mxfp4", np.zeros((2, 20), np.float32))
    with pytest.raises(NotImplementedError, match="TorchBackend: no MX format 'mxfp2'"):
        TorchBackend().mx_decode("mxfp2", np.zeros(1, np.uint8), np.zeros(32, np.uint8))
