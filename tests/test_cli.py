"""The ``saf-ref`` command line: output checked against values computed independently with numpy views."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from saf_ref.cli import main


def run(argv, capsys):
    status = main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


def _flip_rows(out: str) -> dict[int, str]:
    """Table rows keyed by bit index (rows start with the bit number)."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].isdigit() and parts[2].startswith("0x"):
            rows[int(parts[0])] = line
    return rows


def test_bits_float16_matches_numpy_view(capsys):
    status, out, _ = run(["bits", "0.1", "--format", "float16"], capsys)
    assert status == 0
    code = int(np.float16(0.1).view(np.uint16))
    assert f"0x{code:04X}" in out
    assert "0 01011 1001100110" in out  # sign | exponent | mantissa of 0x2E66
    assert "s eeeee mmmmmmmmmm" in out
    rows = _flip_rows(out)
    assert sorted(rows) == list(range(16))
    for bit, line in rows.items():
        flipped = np.uint16(code ^ (1 << bit)).view(np.float16)
        assert f"0x{code ^ (1 << bit):04X}" in line
        assert repr(float(flipped)) in line
    assert rows[15].split()[1] == "sign" and rows[10].split()[1] == "exponent"
    assert rows[9].split()[1] == "mantissa"


def test_bits_float32_classes(capsys):
    status, out, _ = run(["bits", "1.0", "--format", "float32"], capsys)
    assert status == 0
    rows = _flip_rows(out)
    # 1.0 = 0x3F800000: flipping bit 30 sets every exponent bit -> exponent 255, mantissa 0 -> +inf.
    assert rows[30].split()[-1] == "inf"
    assert rows[31].split()[-1] == "normal" and "-1.0" in rows[31]


def test_bits_fixed_point_q25(capsys):
    status, out, _ = run(["bits", "1.5", "--format", "q2.5"], capsys)
    assert status == 0
    # 1.5 = 48 * 2^-5 -> code 0b0_01_10000; flipping the sign bit gives 48 - 128 = -80 -> -2.5.
    assert "0x30" in out and "0 01 10000" in out
    assert "-2.5" in _flip_rows(out)[7]


def test_bits_quantizer(capsys):
    status, out, _ = run(["bits", "0.05", "--quantizer", "8", "--max-abs", "0.1"], capsys)
    assert status == 0
    # offset binary, step 0.1/127: 0.05/step = 63.5 -> nearest even 64 -> code 128 + 64 = 192 = 0xC0.
    assert "0xC0" in out
    assert len(_flip_rows(out)) == 8


def test_formats_lists_every_format(capsys):
    status, out, _ = run(["formats"], capsys)
    assert status == 0
    for name in ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "q2.5"):
        assert name in out
    assert "448" in out and "57344" in out and "65504" in out


@pytest.mark.parametrize(
    "argv,match",
    [
        (["bits", "0.1", "--format", "float7"], "get_format: name must be an IEEE format name"),
        (["bits", "abc"], "VALUE must be a decimal number"),
    ],
)
def test_bad_input_is_one_line_error(argv, match, capsys):
    status, _, err = run(argv, capsys)
    assert status == 2
    assert match in err
    assert "Traceback" not in err


def test_no_command_prints_help(capsys):
    status, out, _ = run([], capsys)
    assert status == 0 and "bits" in out and "usage" in out


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "saf_ref", "bits", "-2", "--format", "bfloat16"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "0xC000" in result.stdout  # -2.0 in bfloat16: sign 1, exponent 128, mantissa 0


@pytest.mark.parametrize(
    "fmt,code_dtype,ref",
    [
        ("float64", np.uint64, "float64"),
        ("float32", np.uint32, "float32"),
        ("bfloat16", np.uint16, "bfloat16"),
        ("float8_e4m3fn", np.uint8, "float8_e4m3fn"),
        ("float8_e5m2", np.uint8, "float8_e5m2"),
    ],
)
def test_bits_every_ieee_format_matches_reference_views(fmt, code_dtype, ref, capsys):
    """-2.75 is exact in every format, so the stored word and each flipped value come from views alone."""
    if ref in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        ml_dtypes = pytest.importorskip("ml_dtypes")
        ref_dtype = np.dtype(getattr(ml_dtypes, ref))
    else:
        ref_dtype = np.dtype(ref)
    status, out, _ = run(["bits", "-2.75", "--format", fmt], capsys)
    assert status == 0
    code = int(np.array([-2.75]).astype(ref_dtype).view(code_dtype)[0])
    nbits = 8 * np.dtype(code_dtype).itemsize
    assert f"0x{code:0{nbits // 4}X}" in out
    rows = _flip_rows(out)
    assert sorted(rows) == list(range(nbits))
    for bit, line in rows.items():
        with np.errstate(invalid="ignore"):
            flipped = float(np.array([code ^ (1 << bit)], dtype=code_dtype).view(ref_dtype)[0])
        assert f"0x{code ^ (1 << bit):0{nbits // 4}X}" in line
        assert line.split()[3] == repr(flipped), (bit, line)


# ------------------------------------------------------------------------ negative values, early checks


@pytest.mark.parametrize("text", ["-3e-5", "-1E+2", "-.5", "-inf"])
def test_bits_takes_negative_numbers_in_every_notation(text, capsys):
    """'saf-ref bits -3e-5' is the help's own example: argparse must not read it as an option."""
    status, out, err = run(["bits", text, "--format", "float16"], capsys)
    assert status == 0, err
    code = int(np.array([float(text)], dtype=np.float16).view(np.uint16)[0])
    assert f"code   0x{code:04X}" in out


def test_bits_checks_every_value_before_printing(capsys):
    status, out, err = run(["bits", "0.1", "abc"], capsys)
    assert status == 2 and out == ""
    assert err == "saf-ref bits: error: VALUE must be a decimal number such as 0.1 or -3e-5, got 'abc'\n"


def test_bits_checks_the_format_before_printing(capsys):
    status, out, err = run(["bits", "0.1", "--quantizer", "8", "--max-abs", "-3e-5"], capsys)
    assert status == 2 and out == ""  # the negative option value is parsed, then refused by Quantizer
    assert "max_abs must be a positive number" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- check: broken backends


def _check_subprocess(argv, **kw):
    return subprocess.run(
        [sys.executable, "-m", "saf_ref", "check", *argv], capture_output=True, text=True, **kw
    )


@pytest.mark.parametrize(
    "source,what",
    [
        ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
        ("def broken(:\n", "SyntaxError: "),
        ("import no_such_package_xyz\n", "ModuleNotFoundError: No module named 'no_such_package_xyz'"),
    ],
)
def test_check_backend_file_that_fails_to_import_is_one_line(tmp_path, source, what):
    path = tmp_path / "bad_backend.py"
    path.write_text(source)
    result = _check_subprocess([f"{path}:Backend"])
    assert result.returncode == 2
    assert result.stderr.startswith(f"saf-ref check: error: load_backend: cannot import '{path}'")
    assert what in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_check_backend_module_that_raises_on_import_is_one_line(tmp_path):
    (tmp_path / "raising_backend_mod.py").write_text("raise ValueError('no config')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = _check_subprocess(["raising_backend_mod:Backend"], env=env)
    assert result.returncode == 2
    assert "cannot import 'raising_backend_mod'" in result.stderr and "ValueError: no config" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------- one-line errors, exit codes


def _failing(exc):
    def command(args):
        raise exc

    return command


@pytest.mark.parametrize(
    "exc,status,line",
    [
        (OSError(28, "No space left on device"), 2,
         "saf-ref formats: error: [Errno 28] No space left on device"),
        (FileNotFoundError("x.tar does not exist"), 2, "saf-ref formats: error: x.tar does not exist"),
        (pickle.UnpicklingError("refusing to load\nglobal os.system"), 2,
         "saf-ref formats: error: refusing to load global os.system"),
        (KeyboardInterrupt(), 130, "saf-ref formats: interrupted"),
        (KeyboardInterrupt("partial results in out/"), 130,
         "saf-ref formats: interrupted: partial results in out/"),
    ],
)  # fmt: skip
def test_user_facing_failures_are_one_line_with_their_exit_status(monkeypatch, capsys, exc, status, line):
    import saf_ref.cli as cli

    monkeypatch.setattr(cli, "_cmd_formats", _failing(exc))
    assert run(["formats"], capsys)[::2] == (status, line + "\n")


def test_a_bug_is_not_hidden_as_a_user_error(monkeypatch):
    import saf_ref.cli as cli

    monkeypatch.setattr(cli, "_cmd_formats", _failing(ZeroDivisionError("bug")))
    with pytest.raises(ZeroDivisionError):
        main(["formats"])
