"""Process-pool campaigns do not oversubscribe the cores: each worker runs BLAS on one thread, and the
default number of workers is the number of CPUs the process may use (and no more than the units).

The BLAS thread counts are read in the workers themselves, through threadpoolctl where it is installed
(an independent reader: it asks every BLAS library loaded), else through the OpenBLAS bundled with
NumPy. The pool runs in a subprocess started with ``OPENBLAS_NUM_THREADS=2``, so that the parent's BLAS
has two threads to begin with (OpenBLAS reads the variable once, when NumPy loads it).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import textwrap

import pytest

from saf_ref import determinism
from saf_ref.experiments import campaign

PROBE = textwrap.dedent(
    """
    import os

    def blas_threads():
        try:
            from threadpoolctl import threadpool_info
        except ImportError:
            from saf_ref import determinism
            return determinism._bundled_openblas()[0]()
        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    def unit(_):
        return {"pid": os.getpid(), "blas": blas_threads(), "env": os.environ.get("OPENBLAS_NUM_THREADS")}
    """
)

POOL_SCRIPT = textwrap.dedent(
    """
    import json
    import probe
    from saf_ref.experiments.campaign import run_units

    results = []
    before = probe.blas_threads()
    run_units(probe.unit, list(range(8)), results.append, executor="process", max_workers=2)
    print(json.dumps({"before": before, "after": probe.blas_threads(), "workers": results}))
    """
)


def _run(script: str, tmp_path, **env_extra) -> dict:
    (tmp_path / "probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _blas_readable() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return determinism._bundled_openblas() is not None
    return True


@pytest.mark.skipif(not _blas_readable(), reason="no way to read the BLAS thread count here")
def test_process_pool_workers_run_blas_on_one_thread(tmp_path):
    out = _run(POOL_SCRIPT, tmp_path, OPENBLAS_NUM_THREADS="2")
    assert out["before"] == 2  # the parent's BLAS had two threads (so the check below can fail) ...
    assert out["after"] == 2  # ... and still has: only the workers are pinned
    assert len(out["workers"]) == 8
    assert {w["blas"] for w in out["workers"]} == {1}
    assert {w["env"] for w in out["workers"]} == {"1"}  # for libraries loaded later, and subprocesses
    assert 1 <= len({w["pid"] for w in out["workers"]}) <= 2


class _RecordingPool(cf.ThreadPoolExecutor):
    """Stands in for ProcessPoolExecutor: records its arguments, runs the units in threads of this process
    (without the initializer, which would pin this test process's BLAS for good)."""

    calls: list[dict] = []

    def __init__(self, max_workers=None, initializer=None):
        type(self).calls.append({"max_workers": max_workers, "initializer": initializer})
        super().__init__(max_workers=max_workers)


@pytest.mark.parametrize(
    ("cpus", "units", "max_workers", "expect"),
    [(3, 10, None, 3), (3, 2, None, 2), (1, 10, None, 1), (3, 10, 5, 5), (3, 2, 5, 2), (64, 1, None, 1)],
)
def test_default_worker_count_is_the_available_cpus_and_at_most_one_per_unit(
    monkeypatch, cpus, units, max_workers, expect
):
    monkeypatch.setattr(campaign, "available_cpus", lambda: cpus)
    monkeypatch.setattr(campaign.cf, "ProcessPoolExecutor", _RecordingPool)
    _RecordingPool.calls = []
    got = []
    units_ = [-u for u in range(units)]
    campaign.run_units(abs, units_, got.append, executor="process", max_workers=max_workers)
    assert sorted(got) == list(range(units))
    assert _RecordingPool.calls == [{"max_workers": expect, "initializer": campaign._init_worker}]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_available_cpus_follows_the_affinity_mask(tmp_path):
    script = "import os; from saf_ref.determinism import available_cpus; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(available_cpus())"  # noqa: E501
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert determinism.available_cpus() == len(os.sched_getaffinity(0))


def test_available_cpus_without_affinity_falls_back_to_cpu_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert determinism.available_cpus() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable"
    assert determinism.available_cpus() == 1


@pytest.mark.skipif(not _blas_readable(), reason="no way to read the BLAS thread count here")
def test_pin_blas_for_this_process_pins_and_sets_the_environment(tmp_path):
    script = textwrap.dedent(
        """
        import json, os, probe
        from saf_ref import determinism
        before = probe.blas_threads()
        determinism.pin_blas_for_this_process()
        with determinism.blas_threads_pinned():
            inside = probe.blas_threads()
        env = [os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")]
        print(json.dumps({"before": before, "inside": inside, "after": probe.blas_threads(), "env": env,
                          "count": determinism.blas_thread_count()}))
        """
    )
    out = _run(script, tmp_path, OPENBLAS_NUM_THREADS="2")
    assert out == {"before": 2, "inside": 1, "after": 1, "env": ["1", "1", "1"], "count": 1}
