"""The codec protocol over IEEE formats, fixed point and quantizers: encode_tensor / decode_tensor / JSON.

References: NumPy casts and views for float16/float32/float64, ml_dtypes for bfloat16 (round to nearest
even from float32, the same single rounding), ``np.rint`` on float64 for fixed point, and the quantizer's
own array API (its bit-exactness against the published code is tested in test_golden_quantizer.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from saf_ref.bits import Codec, Quantizer, codec_from_json, get_format
from saf_ref.bits.quantize import QuantContext

ml_dtypes = pytest.importorskip("ml_dtypes")

X32 = np.array([0.0, -0.0, 1.0, -2.5, 3.14159, 1e-3, -7e-6, 65504.0, 1e5, np.inf, -np.inf], np.float32)


@pytest.mark.parametrize(
    ("name", "ref_dtype", "code_dtype"),
    [("float16", np.float16, np.uint16), ("float32", np.float32, np.uint32),
     ("float64", np.float64, np.uint64), ("bfloat16", ml_dtypes.bfloat16, np.uint16)],
)
def test_ieee_encode_tensor_is_the_cast_and_has_no_context(name, ref_dtype, code_dtype):
    fmt = get_format(name)
    assert isinstance(fmt, Codec) and fmt.name == name and fmt.nbits == 8 * np.dtype(code_dtype).itemsize
    with np.errstate(over="ignore"):
        expected = X32.astype(ref_dtype).view(code_dtype)
    codes, context = fmt.encode_tensor(X32)
    assert context is None and codes.dtype == code_dtype
    np.testing.assert_array_equal(codes, expected)
    values = fmt.decode_tensor(codes, None)
    np.testing.assert_array_equal(values, expected.view(ref_dtype).astype(values.dtype))
    assert fmt.input_dtypes == (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def test_fixed_encode_tensor_rounds_half_even_and_saturates():
    fmt = get_format("q2.5")
    x = np.array([0.0, 1.0 / 64, 3.0 / 64, -1.0 / 64, 3.96875, 4.5, -4.0, -100.0, 0.3], np.float64)
    k = np.clip(np.rint(x * 32.0), -128, 127).astype(np.int64)  # rint: half to even
    codes, context = fmt.encode_tensor(x)
    assert context is None
    np.testing.assert_array_equal(codes, (k & 0xFF).astype(np.uint8))
    np.testing.assert_array_equal(fmt.decode_tensor(codes, None), (k / 32.0).astype(np.float32))


def test_quantizer_encode_tensor_is_its_encode_with_context():
    q = Quantizer(6, scheme="symmetric", clip=0.7)
    x = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    codes, context = q.encode_tensor(x)
    ref_codes, ref_context = q.encode(x)
    np.testing.assert_array_equal(codes, ref_codes)
    assert isinstance(context, QuantContext) and context == ref_context
    np.testing.assert_array_equal(q.decode_tensor(codes, context), q.decode(ref_codes, ref_context))
    assert isinstance(q, Codec) and q.input_dtypes == (np.dtype(np.float32),)


@pytest.mark.parametrize(
    ("codec", "text"),
    [
        (get_format("bfloat16"), '"bfloat16"'),
        (get_format("fp16"), '"float16"'),
        (get_format("float8_e4m3fn"), '"float8_e4m3fn"'),
        (get_format("Q1.6"), '"q1.6"'),
        (Quantizer(8), '{"quantizer": {"nbits": 8, "scheme": "asymmetric", "code": "offset_binary", '
                       '"rounding": "nearest_even", "clip": null, "max_abs": null, "margin": 0.0}}'),
        (Quantizer(4, scheme="symmetric", code="twos_complement", rounding="toward_zero", max_abs=1.5,
                   margin=0.001),
         '{"quantizer": {"nbits": 4, "scheme": "symmetric", "code": "twos_complement", "rounding": '
         '"toward_zero", "clip": null, "max_abs": 1.5, "margin": 0.001}}'),
    ],
)
def test_json_form_is_the_documented_text_and_round_trips(codec, text):
    assert json.dumps(codec.to_json()) == text
    back = codec_from_json(json.loads(text))
    assert back.name == codec.name and json.dumps(back.to_json()) == text
    x = np.linspace(-2, 2, 9, dtype=np.float32)
    a, b = codec.encode_tensor(x), back.encode_tensor(x)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: get_format("float16").decode_tensor(np.zeros(2, np.uint16), QuantContext("symmetric",
                                                    "offset_binary", 8, 1.0, 0.5)),
         TypeError, "float16.decode_tensor: context must be None .* got QuantContext"),
        (lambda: get_format("q2.5").decode_tensor(np.zeros(2, np.uint8), {}), TypeError,
         r"q2.5.decode_tensor: context must be None \(fixed point has no context\), got dict"),
        (lambda: codec_from_json(16), TypeError, "codec_from_json: format must be a format name"),
        (lambda: codec_from_json("float12", fn="f", where="rule 'x'"), ValueError,
         "f: rule 'x' format must be an IEEE format name"),
        (lambda: codec_from_json({"quant": {}}), ValueError,
         r"codec_from_json: format must be a name or \{'quantizer': \{...\}\}"),
        (lambda: codec_from_json({"quantizer": {"scheme": "symmetric"}}), ValueError,
         "codec_from_json: quantizer must have 'nbits' and keys among"),
        (lambda: Quantizer.from_json({"quantizer": {"nbits": 8, "bits": 3}}, where="rule '*'"), ValueError,
         r"Quantizer.from_json: rule '\*' quantizer must have 'nbits' .* got keys \['bits', 'nbits'\]"),
    ],
)
def test_codec_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
