"""Same seed, same bits: for any number of BLAS threads (issue: results used to depend on it).

The training runs in subprocesses, because OpenBLAS reads ``OPENBLAS_NUM_THREADS`` once, when NumPy is
imported. Each subprocess prints a SHA-256 of the trained parameters, running statistics and history
(timings removed); all must agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from saf_ref import determinism

TRAIN_SCRIPT = textwrap.dedent(
    """
    import hashlib, json
    import numpy as np
    from saf_ref.data import load_digits
    from saf_ref.nn.small import init_small_cnn
    from saf_ref.protect import default_spec
    from saf_ref.experiments.demo import quantizer_8bit
    from saf_ref.train.loop import train
    from saf_ref.train.optim import SGD
    from saf_ref.train.randbet import RandBETConfig

    d = load_digits()
    data = (d.x_train[:256], d.y_train[:256], d.x_test[:128], d.y_test[:128])
    h = hashlib.sha256()
    runs = [dict(), dict(transform="tanh"),
            dict(spec=default_spec(quantizer_8bit()), randbet=RandBETConfig(0.02, weight_clip=0.2))]
    for kw in runs:
        params, state = init_small_cnn(in_channels=1, width=8, rng=0)
        params, state, history = train(params, state, data, model="small_cnn", epochs=2, batch_size=64,
                                       optimizer=SGD(0.05, momentum=0.9), augment="crop", pad=1, rng=1,
                                       verbose=False, **kw)
        for d_ in (params, state):
            for k in sorted(d_):
                h.update(k.encode()); h.update(d_[k].tobytes())
        h.update(json.dumps([{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                             for r in history]).encode())
    print(h.hexdigest())
    """
)


def _run_with_threads(threads: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if threads is not None:
        env["OPENBLAS_NUM_THREADS"] = threads
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_training_bits_do_not_depend_on_blas_threads():
    digests = {threads: _run_with_threads(threads) for threads in ("1", "2", None)}
    assert len(set(digests.values())) == 1, digests


def _available_methods() -> list[str]:
    methods = []
    try:
        import threadpoolctl  # noqa: F401

        methods.append("threadpoolctl")
    except ImportError:
        pass
    if determinism._bundled_openblas() is not None:
        methods.append("openblas")
    return methods


@pytest.mark.parametrize("method", ["threadpoolctl", "openblas"])
def test_pin_limits_blas_to_one_thread_and_restores(method):
    if method not in _available_methods():
        pytest.skip(f"the {method} route is not available here (no threadpoolctl, or no OpenBLAS in NumPy)")
    get = _blas_threads_reader(method)
    before = get()
    with determinism.blas_threads_pinned(method):
        assert get() == 1
        with determinism.blas_threads_pinned(method):  # nested: still one, and not restored early
            assert get() == 1
        assert get() == 1
    assert get() == before


def _blas_threads_reader(method: str):
    """An independent reader of the thread count of the BLAS that ``method`` pins: threadpoolctl's view
    of every BLAS library (``"threadpoolctl"``) or of NumPy's bundled OpenBLAS (``"openblas"``; SciPy
    loads an OpenBLAS of its own, which that route leaves alone), else OpenBLAS's own getter."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return determinism._bundled_openblas()[0]

    def read() -> int:
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        if method == "openblas":  # the copy in numpy.libs (Linux, Windows) or numpy/.dylibs (macOS)
            folders = ("numpy.libs", ".dylibs")
            blas = [i for i in blas if os.path.basename(os.path.dirname(i["filepath"])) in folders]
        if not blas:
            pytest.skip("threadpoolctl finds no such BLAS library")
        return max(i["num_threads"] for i in blas)

    return read


def test_pin_with_no_method_is_a_no_op():
    with determinism.blas_threads_pinned(None):
        a = np.ones((4, 4), np.float32) @ np.ones((4, 4), np.float32)
    assert a[0, 0] == 4
    assert determinism.pinning_method() in (None, "threadpoolctl", "openblas")


def test_threadpoolctl_scan_is_reused_until_a_module_is_imported(tmp_path, monkeypatch):
    """The libraries are scanned once (a scan costs milliseconds; campaigns pin on every evaluation), and
    again after an import, which is how a new BLAS library would arrive."""
    if "threadpoolctl" not in _available_methods():
        pytest.skip("threadpoolctl is not installed")
    get = _blas_threads_reader("threadpoolctl")
    with determinism.blas_threads_pinned("threadpoolctl"):
        assert get() == 1
    first = determinism._controller[1]
    with determinism.blas_threads_pinned("threadpoolctl"):
        assert get() == 1
    assert determinism._controller[1] is first  # no new scan
    (tmp_path / "saf_ref_probe_module_for_rescan.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import saf_ref_probe_module_for_rescan  # noqa: F401

    with determinism.blas_threads_pinned("threadpoolctl"):
        assert get() == 1
    assert determinism._controller[1] is not first  # sys.modules grew: scanned again


def test_set_bundled_openblas_threads_sets_and_returns_the_previous_count():
    if "openblas" not in _available_methods():
        pytest.skip("NumPy has no bundled OpenBLAS here")
    get = _blas_threads_reader("openblas")
    before = get()
    assert determinism.set_bundled_openblas_threads(1) == before
    try:
        assert get() == 1
        assert determinism.set_bundled_openblas_threads(2) == 1
        now = get()  # 2, or fewer where OpenBLAS's pool is smaller
        assert 1 <= now <= 2
    finally:
        restored_from = determinism.set_bundled_openblas_threads(before)
    assert restored_from == now
    assert get() == before


def test_set_bundled_openblas_threads_without_openblas_changes_nothing(monkeypatch):
    monkeypatch.setattr(determinism, "_bundled_openblas", lambda: None)
    assert determinism.set_bundled_openblas_threads(1) is None


@pytest.mark.parametrize(
    ("n", "error"), [(0, ValueError), (-1, ValueError), (1.0, TypeError), (True, TypeError)]
)
def test_set_bundled_openblas_threads_rejects_bad_counts(n, error):
    with pytest.raises(error, match=r"set_bundled_openblas_threads: n must be"):
        determinism.set_bundled_openblas_threads(n)


def test_bundled_openblas_threads_reads_the_pin():
    """The cheap reader the convolution loops use agrees with an independent reader, pinned or not."""
    if "openblas" not in _available_methods():
        pytest.skip("NumPy has no bundled OpenBLAS here")
    get = _blas_threads_reader("openblas")
    assert determinism.bundled_openblas_threads() == get()
    with determinism.blas_threads_pinned("openblas"):
        assert determinism.bundled_openblas_threads() == get() == 1
