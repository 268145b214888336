"""CIFAR loaders on small synthetic archives written in the official format, and the restricted
unpickler against malicious pickles.

The official batches were written by Python 2's cPickle (protocol 2): Python 2 ``str`` objects (the dict
keys, the raw array buffer, dtype codes) are SHORT_BINSTRING/BINSTRING opcodes and the array constructor is
named ``numpy.core.multiarray._reconstruct``. :class:`Py2Pickler` writes exactly that, so the synthetic
files exercise the same code path as the real ones (a Python 3 protocol-2 pickle would instead encode bytes
through ``_codecs.encode``).
"""

import io
import os
import pickle
import pickletools
import struct
import tarfile

import numpy as np
import pytest

from saf_ref.data import cifar as C
from saf_ref.data.unpickle import ALLOWED_GLOBALS, RestrictedUnpickler, restricted_loads


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote the CIFAR files (see the module docstring)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module = {"numpy._core.multiarray": "numpy.core.multiarray"}.get(obj.__module__, obj.__module__)
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode("ascii"))
        self.memoize(obj)


def py2_dumps(obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def make_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def batch_bytes(images, **label_lists):
    """A batch dict as in the official files; ``data`` rows are R, G, B planes, each row-major."""
    d = {b"batch_label": b"synthetic batch", b"data": images.reshape(len(images), 3072)}
    d.update({k.encode(): list(map(int, v)) for k, v in label_lists.items()})
    d[b"filenames"] = [f"img_{i}.png".encode() for i in range(len(images))]
    return py2_dumps(d)


def write_archive(tmp_path, folder, members, *, as_dir=False, prefix="", mode="w:gz"):
    """Write ``members`` ({name: bytes}) as ``folder/name`` in a tar archive, or as a directory tree."""
    if as_dir:
        (tmp_path / folder).mkdir()
        for name, data in members.items():
            (tmp_path / folder / name).write_bytes(data)
        return tmp_path
    path = tmp_path / f"{folder}.tar.gz"
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{prefix}{folder}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def cifar10_parts():
    """Five train batches of 3 images, a test batch of 4, and batches.meta; plus the expected arrays."""
    train = [make_images(3, i) for i in range(5)]
    train_labels = [np.random.default_rng(10 + i).integers(0, 10, 3) for i in range(5)]
    test, test_labels = make_images(4, 99), np.array([9, 0, 3, 3])
    members = {f"data_batch_{i + 1}": batch_bytes(train[i], labels=train_labels[i]) for i in range(5)}
    members["test_batch"] = batch_bytes(test, labels=test_labels)
    members["batches.meta"] = py2_dumps(
        {b"num_cases_per_batch": 3, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    )
    expected = (np.concatenate(train), np.concatenate(train_labels), test, test_labels)
    return members, expected


def test_synthetic_batch_uses_the_official_opcodes_and_globals(cifar10_parts):
    members, _ = cifar10_parts
    ops = list(pickletools.genops(members["data_batch_1"]))
    globals_used = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_used == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    assert "BINSTRING" in {op.name for op, _, _ in ops}  # the 3072-byte-per-row buffer
    assert not {op.name for op, _, _ in ops} & {"BINUNICODE", "SHORT_BINBYTES", "BINBYTES"}


@pytest.mark.parametrize("layout", ["tar.gz", "tar", "dir", "parent", "dot-prefix"])
def test_load_cifar10_matches_the_arrays_written(tmp_path, cifar10_parts, layout):
    members, (x_train, y_train, x_test, y_test) = cifar10_parts
    folder = "cifar-10-batches-py"
    if layout in ("dir", "parent"):
        parent = write_archive(tmp_path, folder, members, as_dir=True)
        path = parent / folder if layout == "dir" else parent
    else:
        mode = "w" if layout == "tar" else "w:gz"
        path = write_archive(
            tmp_path, folder, members, mode=mode, prefix="./" if layout == "dot-prefix" else ""
        )
    ds = C.load_cifar10(path, dtype=np.uint8, normalize=False)
    for got, want in zip(ds, (x_train, y_train, x_test, y_test), strict=True):
        np.testing.assert_array_equal(got, want)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (15, 3, 32, 32)
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert C.cifar10_label_names(path) == tuple(CIFAR10_NAMES)


def test_cifar10_channel_layout_is_rgb_planes(tmp_path):
    """Row = 1024 red bytes, then green, then blue, each row-major: pixel (i, j) of plane c is at
    c * 1024 + 32 * i + j. Written here byte by byte, independently of reshape."""
    row = bytearray(3072)
    for c in range(3):
        for i in range(32):
            for j in range(32):
                row[c * 1024 + 32 * i + j] = (c * 80 + i * 2 + j) % 256
    data = np.frombuffer(bytes(row), dtype=np.uint8).reshape(1, 3072)
    members = {"test_batch": py2_dumps({b"data": data, b"labels": [7]})}
    path = write_archive(tmp_path, "cifar-10-batches-py", members)
    x, y = C.load_cifar10(path, split="test", dtype=np.uint8, normalize=False)
    assert x[0, 2, 5, 7] == (2 * 80 + 5 * 2 + 7) % 256 and x[0, 0, 31, 0] == 62 and y.tolist() == [7]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cifar10_normalized_floats(tmp_path, cifar10_parts, dtype):
    members, (x_train, y_train, x_test, y_test) = cifar10_parts
    path = write_archive(tmp_path, "cifar-10-batches-py", members)
    x, y = C.load_cifar10(path, split="train", dtype=dtype)
    # the correctly rounded v / 255: float64 division then one rounding to float32 is the same value
    np.testing.assert_array_equal(x, (x_train.astype(np.float64) / 255.0).astype(dtype))
    assert x.dtype == dtype and x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(y, y_train)
    x_raw, _ = C.load_cifar10(path, split="test", dtype=dtype, normalize=False)
    np.testing.assert_array_equal(x_raw, x_test.astype(dtype))


def test_cifar10_test_split_reads_only_the_test_batch(tmp_path, cifar10_parts):
    members, (*_, x_test, y_test) = cifar10_parts
    path = write_archive(tmp_path, "cifar-10-batches-py", {"test_batch": members["test_batch"]})
    x, y = C.load_cifar10(path, split="test", dtype=np.uint8, normalize=False)
    np.testing.assert_array_equal(x, x_test)
    np.testing.assert_array_equal(y, y_test)
    with pytest.raises(FileNotFoundError, match=r"load_cifar10: .* has no member\(s\) .*data_batch_1"):
        C.load_cifar10(path, split="train")


@pytest.fixture(scope="module")
def cifar100_parts():
    x_train, x_test = make_images(6, 1), make_images(2, 2)
    fine_tr, coarse_tr = [0, 99, 50, 7, 7, 12], [0, 19, 10, 3, 3, 5]
    fine_te, coarse_te = [42, 98], [8, 18]
    members = {
        "train": batch_bytes(x_train, fine_labels=fine_tr, coarse_labels=coarse_tr),
        "test": batch_bytes(x_test, fine_labels=fine_te, coarse_labels=coarse_te),
        "meta": py2_dumps(
            {
                b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
            }
        ),
    }
    return members, (x_train, fine_tr, coarse_tr, x_test, fine_te, coarse_te)


@pytest.mark.parametrize("as_dir", [False, True])
def test_load_cifar100_fine_and_coarse(tmp_path, cifar100_parts, as_dir):
    members, (x_train, fine_tr, coarse_tr, x_test, fine_te, coarse_te) = cifar100_parts
    path = write_archive(tmp_path, "cifar-100-python", members, as_dir=as_dir)
    fine = C.load_cifar100(path, dtype=np.uint8, normalize=False)
    coarse = C.load_cifar100(path, label_mode="coarse", dtype=np.uint8, normalize=False)
    np.testing.assert_array_equal(fine.x_train, x_train)
    np.testing.assert_array_equal(fine.x_test, x_test)
    np.testing.assert_array_equal(coarse.x_train, x_train)
    assert fine.y_train.tolist() == fine_tr and fine.y_test.tolist() == fine_te
    assert coarse.y_train.tolist() == coarse_tr and coarse.y_test.tolist() == coarse_te
    assert C.cifar100_label_names(path)[99] == "fine99"
    assert C.cifar100_label_names(path, label_mode="coarse") == tuple(f"coarse{i}" for i in range(20))


def test_python3_pickles_of_the_same_data_also_load(tmp_path):
    """A batch re-pickled by Python 3 (protocol 4, str keys, numpy._core names on NumPy 2) loads too."""
    images = make_images(2, 5)
    raw = pickle.dumps({"data": images.reshape(2, 3072), "labels": [1, 2]}, protocol=4)
    path = write_archive(tmp_path, "cifar-10-batches-py", {"test_batch": raw})
    x, y = C.load_cifar10(path, split="test", dtype=np.uint8, normalize=False)
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [1, 2]


# ---- malicious pickles --------------------------------------------------------------------------


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def _malicious_pickles(marker):
    """Pickles that would create ``marker`` if loaded by pickle.loads."""
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "os.system": pickle.dumps(_Evil(os.system, cmd), protocol=2),
        "builtins.eval": pickle.dumps(_Evil(eval, code), protocol=4),
        "exec in a batch dict": pickle.dumps({b"data": _Evil(exec, code), b"labels": [0]}, protocol=2),
        # hand-written protocol 0: GLOBAL + REDUCE, and INST (which also resolves a global)
        "protocol 0 GLOBAL": b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR.",
        "protocol 0 INST": b"(S'" + cmd.encode() + b"'\nios\nsystem\n.",
        "numpy-named but not allowed": b"cnumpy\nload\n(S'" + str(marker).encode() + b"'\ntR.",
    }


def test_malicious_fixtures_really_are_dangerous(tmp_path):
    """Guard against a vacuous test: the plain unpickler does execute one of them."""
    marker = tmp_path / "pwned_by_plain_pickle"
    pickle.loads(_malicious_pickles(marker)["builtins.eval"])
    assert marker.exists()


@pytest.mark.parametrize("kind", list(_malicious_pickles("x")))
def test_restricted_unpickler_refuses_malicious_pickles(tmp_path, kind):
    marker = tmp_path / "pwned"
    data = _malicious_pickles(marker)[kind]
    with pytest.raises(pickle.UnpicklingError, match=r"evil.bin: refusing to load global"):
        restricted_loads(data, source="evil.bin")
    assert not marker.exists()


def test_malicious_batch_in_an_archive_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    members = {f"data_batch_{i}": _malicious_pickles(marker)["os.system"] for i in range(1, 6)}
    members["test_batch"] = _malicious_pickles(marker)["builtins.eval"]
    path = write_archive(tmp_path, "cifar-10-batches-py", members)
    with pytest.raises(pickle.UnpicklingError, match=r"cifar-10-batches-py/data_batch_1: refusing .*system"):
        C.load_cifar10(path)
    with pytest.raises(pickle.UnpicklingError, match=r"test_batch: refusing to load global builtins.eval"):
        C.load_cifar10(path, split="test")
    assert not marker.exists()


def test_allowed_globals_are_exactly_the_numpy_array_constructors():
    assert set(ALLOWED_GLOBALS) == {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
    # the table's names are the ones NumPy's own pickles use (they resolve to stand-ins that only record
    # what the pickle asks for: tests/data/test_data_unpickle_memory.py)
    func, args, _ = np.zeros(2, np.uint8).__reduce__()
    assert (func.__module__, func.__name__) in ALLOWED_GLOBALS and args[0] is np.ndarray
    u = RestrictedUnpickler(io.BytesIO(b""))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global numpy.core.multiarray.scalar"):
        u.find_class("numpy.core.multiarray", "scalar")


def test_object_arrays_built_from_allowed_names_are_rejected(tmp_path):
    """Only allowed globals, but an object array instead of uint8: refused while unpickling (only plain
    number types are built), nothing runs."""
    data = np.empty((1, 3072), dtype=object)
    data[:] = 0
    path = write_archive(
        tmp_path, "cifar-10-batches-py", {"test_batch": py2_dumps({b"data": data, b"labels": [0]})}
    )
    with pytest.raises(pickle.UnpicklingError, match=r"test_batch: refusing array element type 'O8'"):
        C.load_cifar10(path, split="test")


# ---- structural and argument errors ------------------------------------------------------------


def _one_batch(tmp_path, obj, raw=None):
    data = raw if raw is not None else py2_dumps(obj)
    return write_archive(tmp_path, "cifar-10-batches-py", {"test_batch": data})


GOOD = make_images(2, 0).reshape(2, 3072)


@pytest.mark.parametrize(
    "obj, raw, exc, match",
    [
        ([1, 2], None, ValueError, r"test_batch must unpickle to a dict, got list"),
        ({b"labels": [0, 1]}, None, ValueError, r"test_batch has no key 'data'"),
        ({b"data": GOOD}, None, ValueError, r"test_batch has no key 'labels'"),
        (
            {b"data": GOOD.astype(np.int16), b"labels": [0, 1]},
            None,
            ValueError,
            r"uint8 array .* got int16 array",
        ),
        (
            {b"data": GOOD[:, :100], b"labels": [0, 1]},
            None,
            ValueError,
            r"got uint8 array of shape \(2, 100\)",
        ),
        ({b"data": b"xx", b"labels": [0, 1]}, None, ValueError, r"shape \(n, 3072\), got bytes"),
        ({b"data": GOOD, b"labels": [0]}, None, ValueError, r"has 2 images but 1 labels"),
        ({b"data": GOOD, b"labels": [0, 10]}, None, ValueError, r"be in \[0, 9\], got .*\[0, 10\]"),
        ({b"data": GOOD, b"labels": [0, -1]}, None, ValueError, r"be in \[0, 9\], got .*\[-1, 0\]"),
        ({b"data": GOOD, b"labels": [0, 1.0]}, None, ValueError, r"list of ints, got an entry 1.0"),
        ({b"data": GOOD, b"labels": b"ab"}, None, ValueError, r"labels must be a list of ints, got bytes"),
        (None, b"\x80\x02}q\x00(U\x04data", pickle.UnpicklingError, r"test_batch: not a readable pickle"),
        (None, b"", pickle.UnpicklingError, r"test_batch: not a readable pickle \(EOFError"),
    ],
)
def test_malformed_batches(tmp_path, obj, raw, exc, match):
    with pytest.raises(exc, match=match):
        C.load_cifar10(_one_batch(tmp_path, obj, raw), split="test")


def test_malformed_meta(tmp_path):
    path = write_archive(
        tmp_path, "cifar-10-batches-py", {"batches.meta": py2_dumps({b"label_names": [1, 2]})}
    )
    with pytest.raises(
        ValueError,
        match=r"cifar10_label_names: .*batches.meta label_names must be a list of strings, got a list hold",
    ):
        C.cifar10_label_names(path)
    path = write_archive(tmp_path / "..", "cifar-100-python", {"meta": py2_dumps([b"x"])})
    with pytest.raises(
        ValueError, match=r"cifar100_label_names: cifar-100-python/meta must unpickle to a dict"
    ):
        C.cifar100_label_names(path)


def test_path_errors(tmp_path):
    with pytest.raises(TypeError, match=r"load_cifar10: path must be a str or path-like, got int"):
        C.load_cifar10(3)
    with pytest.raises(FileNotFoundError, match=r"load_cifar10: .*nope does not exist"):
        C.load_cifar10(tmp_path / "nope")
    (tmp_path / "plain.txt").write_text("not a tar")
    with pytest.raises(
        ValueError, match=r"load_cifar10: .*plain.txt is neither a directory nor a tar archive"
    ):
        C.load_cifar10(tmp_path / "plain.txt")
    with pytest.raises(FileNotFoundError, match=r"load_cifar100: .* holds neither \['train', 'test'\] nor"):
        C.load_cifar100(tmp_path)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda p: C.load_cifar10(p, split="val"), ValueError, r"load_cifar10: split must be one of"),
        (lambda p: C.load_cifar10(p, dtype=np.int32), TypeError, r"load_cifar10: dtype must be one of"),
        (lambda p: C.load_cifar10(p, dtype="nonsense"), TypeError, r"load_cifar10: dtype must be one of"),
        (
            lambda p: C.load_cifar10(p, dtype=None),
            TypeError,
            r"load_cifar10: dtype must be one of .*got None",
        ),
        (
            lambda p: C.load_cifar10(p, dtype=np.uint8),
            ValueError,
            r"load_cifar10: dtype uint8 .* normalize=False",
        ),
        (
            lambda p: C.load_cifar10(p, normalize=1),
            TypeError,
            r"load_cifar10: normalize must be a bool, got int",
        ),
        (
            lambda p: C.load_cifar100(p, label_mode="super"),
            ValueError,
            r"load_cifar100: label_mode must be one of",
        ),
        (
            lambda p: C.cifar100_label_names(p, label_mode=""),
            ValueError,
            r"cifar100_label_names: label_mode must",
        ),
    ],
)
def test_argument_errors(tmp_path, call, exc, match):
    with pytest.raises(exc, match=match):
        call(tmp_path)
