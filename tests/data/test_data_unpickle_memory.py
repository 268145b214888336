"""The restricted CIFAR unpickler against pickles that use only the allowed names to read other memory.

NumPy's constructors trust their arguments: ``numpy.ndarray(shape, dtype, buffer, offset)`` accepts a
negative offset, and ``dtype.__setstate__`` a record whose field lies outside the record. A pickle naming
only ``numpy.ndarray`` / ``numpy.dtype`` could thereby load the process's memory as image bytes or crash
it (a segmentation fault with a large offset). The unpickler now builds arrays itself from checked states;
benign arrays must come back exactly as the standard unpickler gives them (the reference here).
"""

import io
import pickle
import struct
import tarfile

import numpy as np
import pytest

from saf_ref.data import cifar as C
from saf_ref.data.unpickle import ALLOWED_DTYPES, ALLOWED_GLOBALS, restricted_loads

# NumPy's own _reconstruct, as a real pickle names it (the test builds the malicious files with it)
_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0, dtype=np.uint8))[0]


def _archive(tmp_path, members):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class _ArrayBeforeItsBytes:
    """``numpy.ndarray((n, 3072), uint8, buffer, offset)`` with a negative offset: the array starts
    ``(n - 1) * 3072`` bytes *before* the 3072-byte buffer, so it is memory the file does not hold."""

    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (np.ndarray, ((self.n, 3072), np.dtype("u1"), b"\x00" * 3072, -(self.n - 1) * 3072))


def test_an_array_over_memory_before_the_file_is_refused(tmp_path):
    # n = 2: 3072 bytes before the buffer (small enough not to crash the test process before the fix)
    raw = pickle.dumps({b"data": _ArrayBeforeItsBytes(2), b"labels": [0, 0]}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match=r"test_batch: refusing to call numpy.ndarray directly"):
        C.load_cifar10(_archive(tmp_path, {"test_batch": raw}), split="test", dtype=np.uint8,
                       normalize=False)


class _RecordFieldOutside:
    """A 1-byte record dtype whose int64 field lies 1000 bytes past the record."""

    def __reduce__(self):
        state = (3, "|", None, ("a",), {"a": (np.dtype("<i8"), 1000)}, 1, 1, 0)
        return (np.dtype, ("V1", False, True), state)


class _LabelsOfThatRecord:
    def __reduce__(self):
        return (_NUMPY_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                (1, (2,), _RecordFieldOutside(), False, b"\x00\x00"))


def test_a_record_dtype_reading_past_its_bytes_is_refused(tmp_path):
    # Before the fix the labels check printed an element of this array: 8 bytes of unrelated memory.
    raw = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": _LabelsOfThatRecord()},
                       protocol=3)
    with pytest.raises(pickle.UnpicklingError, match=r"test_batch: refusing array element type 'V1'"):
        C.load_cifar10(_archive(tmp_path, {"test_batch": raw}), split="test")


def _cases():
    rng = np.random.default_rng(0)
    for name in ALLOWED_DTYPES:
        for order in "<>":
            dt = np.dtype(name).newbyteorder(order)
            a = (rng.random((3, 5)) * 100).astype(dt)
            yield f"{dt.str}-C", a
            yield f"{dt.str}-F", np.asfortranarray(a)
    yield "0-d", np.array(2.5)
    yield "empty", np.zeros((0, 3072), np.uint8)
    yield "3-d", np.arange(24, dtype=np.int16).reshape(2, 3, 4)


@pytest.mark.parametrize("protocol", [3, 4])
@pytest.mark.parametrize("case", list(dict(_cases())))
def test_plain_arrays_load_as_the_standard_unpickler_gives_them(case, protocol):
    a = dict(_cases())[case]
    raw = pickle.dumps({"x": a, "pair": (a, [a])}, protocol=protocol)
    want = pickle.loads(raw)  # the reference: benign data through the standard unpickler
    got = restricted_loads(raw, source="t")
    for g, w in ((got["x"], want["x"]), (got["pair"][0], want["pair"][0]), (got["pair"][1][0], want["x"])):
        # (NumPy 2 returns a non-native byte order as native, older NumPy kept it: compare the type only)
        assert type(g) is np.ndarray and g.dtype == w.dtype.newbyteorder("=") and g.shape == w.shape
        assert g.flags.f_contiguous == w.flags.f_contiguous
        np.testing.assert_array_equal(g, w)


def _py2_pickle(obj):
    """Protocol 2 as Python 2's cPickle wrote CIFAR: str as BINSTRING, dtype names as bytes."""

    class P(pickle._Pickler):
        dispatch = pickle._Pickler.dispatch.copy()

        def save_str(self, s):
            raw = s.encode("latin-1") if isinstance(s, str) else s
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

        dispatch[bytes] = save_str
        dispatch[str] = save_str

        def save_global(self, o, name=None):
            module = o.__module__.replace("._core", ".core")
            self.write(pickle.GLOBAL + f"{module}\n{o.__qualname__}\n".encode())
            self.memoize(o)

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    return buf.getvalue()


def test_python2_pickles_of_big_endian_and_fortran_arrays():
    a = np.arange(12, dtype=">i4").reshape(3, 4)
    for x in (a, np.asfortranarray(a), a.astype("<f8")):
        got = restricted_loads(_py2_pickle({b"x": x}), source="t")[b"x"]
        assert got.dtype == x.dtype.newbyteorder("=") and got.flags.f_contiguous == x.flags.f_contiguous
        np.testing.assert_array_equal(got, x)


def _op_str(s):
    return b"X" + struct.pack("<I", len(s)) + s.encode()


@pytest.mark.parametrize(
    "raw, match",
    [
        # BUILD on the numpy.dtype stand-in, with slot state that would set its __init__
        (b"\x80\x02cnumpy\ndtype\nN}" + _op_str("__init__") + b"K\x01s\x86b.", r"refusing to set the state"),
        # _reconstruct of something else than numpy.ndarray
        (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n(cnumpy\ndtype\ntR.", r"only numpy.ndarray"),
        # an array that never receives its state
        (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x85R.", r"without its state"),
        # a stand-in handed back as a value
        (b"\x80\x02cnumpy\nndarray\n.", r"refusing numpy.ndarray as a value"),
        # 100 nested lists (the walk that builds the arrays must not recurse without bound)
        (b"\x80\x02" + b"(" * 100 + b"l" * 100 + b".", r"nested more than"),
    ],
)
def test_stand_ins_cannot_be_changed_or_leaked(raw, match):
    with pytest.raises(pickle.UnpicklingError, match=match):
        restricted_loads(raw, source="t")
    # the stand-ins still work for a benign pickle afterwards
    a = np.arange(3, dtype=np.uint8)
    np.testing.assert_array_equal(restricted_loads(pickle.dumps(a, protocol=3), source="t"), a)
    assert set(ALLOWED_GLOBALS) == {("numpy.core.multiarray", "_reconstruct"),
                                    ("numpy._core.multiarray", "_reconstruct"),
                                    ("numpy", "ndarray"), ("numpy", "dtype")}


def test_array_state_with_too_few_bytes_is_refused():
    class Short:
        def __reduce__(self):
            state = (1, (2, 3072), np.dtype("u1"), False, b"ab")
            return (_NUMPY_RECONSTRUCT, (np.ndarray, (0,), b"b"), state)

    with pytest.raises(pickle.UnpicklingError, match=r"needs 6144 bytes, got 2"):
        restricted_loads(pickle.dumps(Short(), protocol=3), source="t")
