"""``--eval-limit`` above the test split is refused right after the data is loaded, before any training, by
every experiment command (it used to mean "all of them", silently)."""

from __future__ import annotations

import pytest
from cli_helpers import refused_in_one_line

import saf_ref.experiments.demo as demo

# (command, the test images of its default dataset, the option's name in the message)
COMMANDS = [
    ("demo", 359, "eval_limit (--eval-limit)"),
    ("chips", 359, "eval_limit (--eval-limit)"),
    ("format-faults", 359, "eval_limit (--eval-limit)"),
    ("seeds", 1000, "--eval-limit"),
    ("attack", 359, "--eval-limit"),
]


@pytest.mark.parametrize("command,n_test,name", COMMANDS)
def test_eval_limit_above_the_test_split_is_refused_before_training(
    command, n_test, name, tmp_path, capsys, monkeypatch
):
    def forbidden(*args, **kwargs):
        raise AssertionError("training started although --eval-limit was too large")

    monkeypatch.setattr(demo, "train_subjects", forbidden)
    out = tmp_path / "out"
    err = refused_in_one_line(command, ["--eval-limit", str(n_test + 1), "--quiet"], out, capsys)
    dataset = "mnist5k" if command == "seeds" else "digits"
    assert f"{name} must be at most {n_test}, the test images of '{dataset}', got {n_test + 1}" in err
    assert not (out / "results.json").exists() and not (out / "run.json").exists()  # nothing written


def test_eval_limit_equal_to_the_test_split_is_accepted():
    data = demo.load_dataset("digits", None)
    demo.check_eval_limit(data[3].shape[0], data, "digits", "f")
    demo.check_eval_limit(None, data, "digits", "f")
    with pytest.raises(ValueError, match=r"^f: eval_limit \(--eval-limit\) must be at most 359, the test "):
        demo.check_eval_limit(360, data, "digits", "f")


@pytest.mark.parametrize("command,n_test,name", COMMANDS)
def test_a_refused_eval_limit_keeps_an_earlier_runs_outputs(
    command, n_test, name, tmp_path, capsys, monkeypatch
):
    """With ``--force`` over an earlier run, the check comes before the outputs are deleted."""
    monkeypatch.setattr(demo, "train_subjects", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("{}")
    err = refused_in_one_line(command, ["--eval-limit", str(n_test + 1), "--quiet", "--force"], out, capsys)
    assert f"{name} must be at most {n_test}" in err
    assert (out / "run.json").read_text() == "{}"
