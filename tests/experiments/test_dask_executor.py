"""Campaigns on a real distributed engine: a dask.distributed LocalCluster (two worker processes, talking
over TCP on localhost), used through the standard ``concurrent.futures`` interface that
``Client.get_executor()`` returns, gives byte-identical results to the serial run.

This is what the README claims: ``run_campaign(..., executor=client.get_executor())`` runs unchanged on a
cluster, because every (subject, trial) unit draws its faults from ``(seed, trial)`` alone and the results
are put back in (trial, subject) order, whatever the completion order. Skipped where dask.distributed is
not installed (it is in the ``test`` extra).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging

import pytest

distributed = pytest.importorskip("distributed")

from saf_ref.data import load_digits  # noqa: E402
from saf_ref.experiments.campaign import Subject, run_campaign  # noqa: E402
from saf_ref.nn.small import init_mlp  # noqa: E402
from saf_ref.protect import default_spec  # noqa: E402

RATES = (0.0, 1e-3, 1e-2)
TRIALS = 3


@pytest.fixture(scope="module")
def campaign_inputs():
    digits = load_digits()
    # An untrained MLP is enough: its predictions are a deterministic function of the stored bits, and
    # faults at these rates change some of them (checked below), so a wrong pattern would show.
    params, state = init_mlp(64, hidden=(16,), num_classes=10, rng=0)
    subjects = [
        Subject("baseline", "identity", fmt, "mlp", params, state, default_spec(fmt))
        for fmt in ("float32", "q2.5")
    ]
    return subjects, digits.x_test[:100], digits.y_test[:100]


def _run(campaign_inputs, executor, tmp_path, name):
    subjects, x, y = campaign_inputs
    result = run_campaign(subjects, x, y, RATES, trials=TRIALS, seed=5, executor=executor, progress=False)
    summary, run = tmp_path / f"{name}.json", tmp_path / f"{name}.run.json"
    result.to_json(summary)
    result.to_run_json(run)
    return result, summary.read_bytes(), run.read_bytes()


@pytest.mark.slow
def test_campaign_on_a_dask_local_cluster_is_byte_identical_to_serial(campaign_inputs, tmp_path):
    serial, serial_summary, serial_run = _run(campaign_inputs, "serial", tmp_path, "serial")
    assert len(serial.trials) == 2 * TRIALS * len(RATES) and not serial.interrupted
    # the faults do something: at the highest rate some trial's accuracy differs from the clean one
    clean = {row["subject"]: row["clean_accuracy"] for row in serial.clean}
    assert any(r["accuracy"] != clean[r["subject"]] for r in serial.trials if r["ber"] == RATES[-1])

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        executor = client.get_executor()
        assert isinstance(executor, cf.Executor)
        with distributed.get_task_stream(client) as stream:
            dask, dask_summary, dask_run = _run(campaign_inputs, executor, tmp_path, "dask")
        # every (subject, trial) unit really ran as a task on the cluster's worker processes
        units = [task for task in stream.data if "_run_unit" in str(task["key"])]
        assert len(units) == 2 * TRIALS
        assert {task["worker"] for task in units} <= set(client.scheduler_info()["workers"])

    assert dask_summary == serial_summary
    assert dask_run == serial_run
    assert dask.trials == serial.trials and not dask.interrupted
