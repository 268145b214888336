"""Tests for saf_ref.train.checkpoint: exact round trips, every failure mode, atomic writes, no pickle."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from saf_ref.train import checkpoint as ckpt_mod
from saf_ref.train.checkpoint import (
    FORMAT_VERSION,
    MANIFEST_KEY,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from saf_ref.train.optim import SGD, sgd_init, sgd_step


def bits(a: np.ndarray) -> bytes:
    return a.tobytes(order="C")


def sample_arrays(rng):
    nan_payload = np.array([0x7FC00001, 0xFFA00000, 0x80000000, 0x7F800001], dtype=np.uint32).view(np.float32)
    return {
        "conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "layer1.0/odd name é": rng.standard_normal(5),  # dots, a slash, unicode: all fine
        "bits32": nan_payload,  # quiet NaN with payload, signalling NaN, -0.0, sNaN
        "bits64": np.array([-0.0, np.nan, -np.nan, np.inf, 5e-324]),
        "scalar": np.array(3.5, dtype=np.float64),  # 0-d
        "empty": np.zeros((0, 3), dtype=np.float32),
        "int64": np.array([-(2**63), 2**63 - 1, 0], dtype=np.int64),
        "uint8": np.arange(256, dtype=np.uint8).reshape(16, 16),
        "bool": np.array([True, False]),
        "float16": np.array([1.5, -0.0, np.inf], dtype=np.float16),
        "complex": np.array([1 + 2j, -0.0 - 1j], dtype=np.complex128),
        "big_endian": np.array([1.0, -2.5], dtype=">f4"),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
    }


def assert_identical(got: dict, expected: dict):
    assert list(got) == list(expected)  # names and their order
    for k, a in expected.items():
        assert got[k].dtype == a.dtype and got[k].dtype.str == a.dtype.str, k
        assert got[k].shape == a.shape, k
        assert bits(got[k]) == bits(a), k


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    params = sample_arrays(rng)
    state = {"bn1.running_mean": rng.standard_normal(8).astype(np.float32),
             "bn1.num_batches_tracked": np.array(7, dtype=np.int64)}
    optim = {"step": np.array(3, dtype=np.int64), "momentum_buffer/conv1.weight": rng.standard_normal(4)}
    meta = {"epoch": 3, "arch": "resnet20", "acc": 0.91, "nested": {"lr": [0.1, 0.01], "ok": True, "n": None}}
    path = save_checkpoint(tmp_path / "model.ckpt.npz", params=params, state=state,
                           optimizer_state=optim, metadata=meta)
    return path, params, state, optim, meta


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


def test_exact_round_trip(saved):
    path, params, state, optim, meta = saved
    ck = load_checkpoint(path)
    assert isinstance(ck, Checkpoint)
    assert_identical(ck.params, params)
    assert_identical(ck.state, state)
    assert_identical(ck.optimizer_state, optim)
    assert ck.metadata == meta
    assert np.signbit(ck.params["bits64"][0]) and ck.params["scalar"].shape == ()


def test_file_is_a_plain_npz_with_a_json_manifest(saved):
    path, params, *_ = saved
    with np.load(path, allow_pickle=False) as npz:  # readable by any NumPy tool, no pickle
        assert "params/conv1.weight" in npz.files and "optim/momentum_buffer/conv1.weight" in npz.files
        manifest = json.loads(npz[MANIFEST_KEY].tobytes().decode("utf-8"))
        a = npz["params/fortran"]
    assert manifest["format"] == "saf_ref.checkpoint" and manifest["format_version"] == FORMAT_VERSION
    entry = manifest["arrays"]["params/conv1.weight"]
    assert entry["dtype"] == "<f4" and entry["shape"] == [4, 3, 3, 3]
    import hashlib  # independent recomputation of the documented checksum

    assert entry["sha256"] == hashlib.sha256(np.ascontiguousarray(params["conv1.weight"]).data).hexdigest()
    assert manifest["arrays"]["params/fortran"]["sha256"] == hashlib.sha256(
        np.ascontiguousarray(a).data).hexdigest()


def test_optimizer_state_none_and_empty_are_distinct(tmp_path):
    p = {"w": np.ones(2)}
    save_checkpoint(tmp_path / "a.npz", params=p, state={})
    save_checkpoint(tmp_path / "b.npz", params=p, state={}, optimizer_state={})
    a, b = load_checkpoint(tmp_path / "a.npz"), load_checkpoint(tmp_path / "b.npz")
    assert a.optimizer_state is None and b.optimizer_state == {}
    assert a.metadata == {} and a.state == {}


def test_compressed_round_trip_and_exact_path(tmp_path):
    rng = np.random.default_rng(1)
    params = sample_arrays(rng)
    path = save_checkpoint(tmp_path / "ck", params=params, state={}, compress=True)
    assert path == tmp_path / "ck" and path.exists()  # no ".npz" appended
    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    assert_identical(load_checkpoint(str(path)).params, params)


def test_save_does_not_mutate_and_load_returns_fresh_arrays(tmp_path):
    params = {"w": np.arange(6.0).reshape(2, 3)}
    params["w"].flags.writeable = False
    save_checkpoint(tmp_path / "c.npz", params=params, state={})
    ck = load_checkpoint(tmp_path / "c.npz")
    assert not np.shares_memory(ck.params["w"], params["w"])
    np.testing.assert_array_equal(ck.params["w"], np.arange(6.0).reshape(2, 3))


def test_sgd_training_resumes_exactly_from_a_checkpoint(tmp_path):
    rng = np.random.default_rng(2)
    params = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()} for _ in range(6)]
    opt = SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    p, s = params, sgd_init(params)
    for g in grads[:3]:
        p, s = sgd_step(p, g, s, opt)
    save_checkpoint(tmp_path / "mid.npz", params=p, state={}, optimizer_state=s, metadata={"step": 3})
    straight_p, straight_s = p, s
    for g in grads[3:]:
        straight_p, straight_s = sgd_step(straight_p, g, straight_s, opt)
    ck = load_checkpoint(tmp_path / "mid.npz")
    p, s = ck.params, ck.optimizer_state
    for g in grads[3:]:
        p, s = sgd_step(p, g, s, opt)
    assert_identical(p, straight_p)
    assert_identical(s, straight_s)


# ------------------------------------------------------------------------------------------------
# Save-time validation
# ------------------------------------------------------------------------------------------------


def test_save_rejects_what_would_need_pickle_and_bad_inputs(tmp_path):
    path = tmp_path / "x.npz"
    ok = {"w": np.ones(2)}
    with pytest.raises(TypeError, match=r"save_checkpoint: params\['obj'\] has dtype object; only bool, "
                                        r"integer, float and complex arrays can be stored"):
        save_checkpoint(path, params={**ok, "obj": np.array([{"a": 1}], dtype=object)}, state={})
    with pytest.raises(TypeError, match=r"save_checkpoint: state\['s'\] has dtype <U3"):
        save_checkpoint(path, params=ok, state={"s": np.array(["abc"])})
    with pytest.raises(TypeError, match=r"save_checkpoint: optimizer_state\['rec'\] has dtype"):
        save_checkpoint(path, params=ok, state={},
                        optimizer_state={"rec": np.zeros(2, dtype=[("x", "f4"), ("y", "i4")])})
    with pytest.raises(TypeError, match=r"save_checkpoint: params\['w'\] must be a numpy.ndarray, got list"):
        save_checkpoint(path, params={"w": [1.0]}, state={})
    with pytest.raises(TypeError, match="save_checkpoint: params keys must be non-empty str, got ''"):
        save_checkpoint(path, params={"": np.ones(1)}, state={})
    with pytest.raises(TypeError, match="save_checkpoint: params keys must be non-empty str, got 3"):
        save_checkpoint(path, params={3: np.ones(1)}, state={})
    with pytest.raises(TypeError, match="save_checkpoint: state must be a dict of str -> numpy.ndarray"):
        save_checkpoint(path, params=ok, state=None)
    with pytest.raises(TypeError, match="save_checkpoint: metadata must be a dict"):
        save_checkpoint(path, params=ok, state={}, metadata=[1, 2])
    with pytest.raises(TypeError, match="save_checkpoint: metadata must be JSON-serializable"):
        save_checkpoint(path, params=ok, state={}, metadata={"s": {1, 2}})
    with pytest.raises(TypeError, match="save_checkpoint: metadata must be JSON-serializable"):
        save_checkpoint(path, params=ok, state={}, metadata={"a": np.ones(2)})
    with pytest.raises(ValueError, match=r"save_checkpoint: metadata must be strict JSON \(no NaN or inf\)"):
        save_checkpoint(path, params=ok, state={}, metadata={"loss": float("nan")})
    with pytest.raises(TypeError, match="save_checkpoint: compress must be a bool, got str"):
        save_checkpoint(path, params=ok, state={}, compress="zip")
    with pytest.raises(TypeError, match="save_checkpoint: path must be a str or path-like, got NoneType"):
        save_checkpoint(None, params=ok, state={})
    with pytest.raises(TypeError, match="load_checkpoint: path must be a str or path-like, got int"):
        load_checkpoint(3)
    assert not path.exists() and os.listdir(tmp_path) == []  # nothing written on validation errors


# ------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, params={"w": np.ones(3)}, state={}, metadata={"v": 1})
    before = path.read_bytes()

    def broken_savez(f, **members):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, params={"w": np.zeros(3)}, state={}, metadata={"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.npz"]
    assert load_checkpoint(path).metadata == {"v": 1}


def test_overwrite_replaces_and_keeps_mode(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, params={"w": np.ones(3)}, state={})
    assert (path.stat().st_mode & 0o777) == 0o644
    os.chmod(path, 0o600)
    save_checkpoint(path, params={"w": np.zeros(2)}, state={})
    assert (path.stat().st_mode & 0o777) == 0o600
    np.testing.assert_array_equal(load_checkpoint(path).params["w"], np.zeros(2))
    assert os.listdir(tmp_path) == ["ck.npz"]


# ------------------------------------------------------------------------------------------------
# Corrupt and mismatched files: each gives a CheckpointError naming the file (and the tensor)
# ------------------------------------------------------------------------------------------------


def rewrite(src, dst, *, replace=None, drop=(), add=None, manifest=None):
    """Re-create an .npz from src's members with changes (a tool an attacker or a bug could use)."""
    with np.load(src, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files if k not in drop}
    members.update(replace or {})
    members.update(add or {})
    if manifest is not None:
        members[MANIFEST_KEY] = np.frombuffer(manifest.encode("utf-8") if isinstance(manifest, str)
                                              else manifest, dtype=np.uint8)
    np.savez(dst, **members)  # pickles object arrays (np.savez's default), as an attacker's file would
    return dst


def read_manifest(path):
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(npz[MANIFEST_KEY].tobytes().decode())


def expect_error(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)  # names the file
    assert isinstance(info.value, ValueError)
    return info


def test_truncated_file(saved, tmp_path):
    path = saved[0]
    data = path.read_bytes()
    for n in (len(data) // 2, len(data) - 10, 30):
        bad = tmp_path / f"trunc{n}.npz"
        bad.write_bytes(data[:n])
        expect_error(bad, "not a readable .npz checkpoint")


def test_not_a_zip_and_a_plain_npy(tmp_path):
    text = tmp_path / "t.npz"
    text.write_text("hello, not a checkpoint")
    expect_error(text, "not a readable .npz checkpoint")
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones(3))
    expect_error(npy, "is a single .npy array, not an .npz checkpoint")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(tmp_path / "missing.npz")


def test_flipped_byte_inside_a_tensor_names_the_tensor(tmp_path):
    path = tmp_path / "ck.npz"
    marker = np.arange(1000, 1064, dtype=np.float64)  # distinctive bytes to find in the archive
    save_checkpoint(path, params={"a": np.ones(3), "fc.weight": marker}, state={})
    data = bytearray(path.read_bytes())
    at = data.find(marker.tobytes()) + 100
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    # zip's own CRC-32 catches it first; either way the error names the tensor.
    expect_error(path, r"could not read array 'params/fc.weight'.*CRC")


def test_checksum_mismatch_names_the_tensor(saved, tmp_path):
    path, params, *_ = saved
    changed = params["conv1.weight"].copy()
    changed[0, 0, 0, 0] += 1  # same dtype and shape, different content: a valid zip, wrong hash
    bad = rewrite(path, tmp_path / "bad.npz", replace={"params/conv1.weight": changed})
    expect_error(bad, r"checksum mismatch for array 'params/conv1.weight'")


def test_manifest_mismatch_names_the_tensor(saved, tmp_path):
    path, params, *_ = saved
    wrong_shape = np.zeros((4, 3, 3), np.float32)
    bad = rewrite(path, tmp_path / "shape.npz", replace={"params/conv1.weight": wrong_shape})
    expect_error(bad, r"array 'params/conv1.weight' has dtype <f4 and shape \[4, 3, 3\] but the manifest "
                      r"says dtype <f4 and shape \[4, 3, 3, 3\]")
    bad = rewrite(path, tmp_path / "dtype.npz",
                  replace={"params/conv1.weight": params["conv1.weight"].astype(np.float64)})
    expect_error(bad, r"array 'params/conv1.weight' has dtype <f8")


def test_missing_and_unlisted_arrays(saved, tmp_path):
    path = saved[0]
    bad = rewrite(path, tmp_path / "missing.npz", drop=["state/bn1.running_mean"])
    expect_error(bad, r"array 'state/bn1.running_mean' listed in the manifest is missing from the file")
    bad = rewrite(path, tmp_path / "extra.npz", add={"params/intruder": np.ones(2)})
    expect_error(bad, r"array 'params/intruder' is not listed in the manifest")


def test_manifest_problems(saved, tmp_path):
    path = saved[0]
    expect_error(rewrite(path, tmp_path / "nomanifest.npz", drop=[MANIFEST_KEY]), "no '__manifest__' member")
    expect_error(rewrite(path, tmp_path / "json.npz", manifest='{"format": "saf_ref.checkpoint", '),
                 "the manifest is not valid UTF-8 JSON")
    expect_error(rewrite(path, tmp_path / "utf8.npz", manifest=b"\xff\xfe{}"), "not valid UTF-8 JSON")
    m = read_manifest(path)
    expect_error(rewrite(path, tmp_path / "v2.npz", manifest=json.dumps({**m, "format_version": 2})),
                 r"format_version 2 is not supported \(this saf_ref reads 1\)")
    expect_error(rewrite(path, tmp_path / "fmt.npz", manifest=json.dumps({**m, "format": "other"})),
                 "manifest format must be 'saf_ref.checkpoint', got 'other'")
    expect_error(rewrite(path, tmp_path / "list.npz", manifest="[1, 2]"), "manifest format must be")
    expect_error(rewrite(path, tmp_path / "noarr.npz", manifest=json.dumps({**m, "arrays": None})),
                 "manifest must have 'arrays', 'metadata' and 'has_optimizer_state'")
    entries = dict(m["arrays"])
    entries["params/conv1.weight"] = {"dtype": "<f4", "shape": "4x3"}
    expect_error(rewrite(path, tmp_path / "entry.npz", manifest=json.dumps({**m, "arrays": entries})),
                 r"manifest entry for 'params/conv1.weight' is malformed")
    wrong = np.frombuffer(json.dumps(m).encode(), dtype=np.uint8).astype(np.int16)
    expect_error(rewrite(path, tmp_path / "dt.npz", replace={MANIFEST_KEY: wrong}),
                 "'__manifest__' must be a 1-d uint8 array")
    # An array under an unknown section, listed consistently in the manifest.
    extra = np.ones(2)
    entries = dict(m["arrays"], **{"weights/x": {"dtype": "<f8", "shape": [2], "sha256": "0" * 64}})
    expect_error(rewrite(path, tmp_path / "sec.npz", add={"weights/x": extra},
                         manifest=json.dumps({**m, "arrays": entries})),
                 r"manifest array name 'weights/x' has no known section prefix")
    no_opt = json.dumps({**m, "has_optimizer_state": False})
    expect_error(rewrite(path, tmp_path / "hasopt.npz", manifest=no_opt),
                 "optimizer arrays present but has_optimizer_state is false")


def test_pickled_member_is_refused_not_unpickled(saved, tmp_path):
    path = saved[0]
    m = read_manifest(path)
    evil = np.array([{"__reduce__": "boom"}], dtype=object)  # np.save would pickle this
    entries = dict(m["arrays"], **{"params/evil": {"dtype": "|O", "shape": [1], "sha256": "0" * 64}})
    bad = rewrite(path, tmp_path / "evil.npz", add={"params/evil": evil},
                  manifest=json.dumps({**m, "arrays": entries}))
    expect_error(bad, r"could not read array 'params/evil'.*allow_pickle")


# ------------------------------------------------------------------------------------------------
# expected_params
# ------------------------------------------------------------------------------------------------


def test_expected_params_names_every_mismatch(tmp_path):
    path = tmp_path / "ck.npz"
    params = {"conv1.weight": np.ones((4, 3, 3, 3), np.float32), "fc.weight": np.ones((10, 4)),
              "old.bias": np.ones(3)}
    save_checkpoint(path, params=params, state={})
    ok = load_checkpoint(path, expected_params={k: v.shape for k, v in params.items()})
    assert_identical(ok.params, params)
    load_checkpoint(path, expected_params={k: np.zeros(v.shape, np.float16) for k, v in params.items()})
    model = {"conv1.weight": np.zeros((4, 3, 7, 7)), "fc.weight": np.zeros((10, 4)),
             "fc.bias": np.zeros(10)}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expected_params=model)
    msg = str(info.value)
    assert str(path) in msg and "(3 tensors)" in msg
    assert "missing 'fc.bias' (expected shape (10,))" in msg
    assert "unexpected 'old.bias' (shape (3,))" in msg
    assert "'conv1.weight' has shape (4, 3, 3, 3), expected (4, 3, 7, 7)" in msg
    with pytest.raises(TypeError, match="expected_params must be a dict"):
        load_checkpoint(path, expected_params=[1])
