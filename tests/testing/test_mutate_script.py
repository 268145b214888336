"""scripts/mutate.py: the mutator makes every kind of mutant of the reference backend, its list of equivalent
mutants still matches the code, the unmutated backend survives the per-mutant suite and a real bug dies."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutate.py"


@pytest.fixture(scope="module")
def mutate():
    spec = importlib.util.spec_from_file_location("saf_ref_mutate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mutants(mutate):
    return mutate.generate(mutate.SUBJECT.read_text())


def test_every_operator_makes_mutants(mutants):
    ops = {m.operator for m, _ in mutants}
    assert ops >= {"arith", "compare", "const", "negation", "minmax", "rounding", "boolop", "drop"}
    assert len(mutants) > 900
    assert len({m.key for m, _ in mutants}) > 0.95 * len(mutants)  # keys identify mutants across edits


def test_equivalent_list_matches_the_code(mutate, mutants):
    """A stale entry (the code moved on) must be removed or re-argued, not silently kept."""
    keys = {m.key for m, _ in mutants}
    assert set(mutate.EQUIVALENT) <= keys
    assert all(reason for reason in mutate.EQUIVALENT.values())


def test_checks_reached_by_a_mutated_function(mutate):
    assert mutate.reached_by("ReferenceBackend.relu_vjp") == {"relu_vjp", "model_forward_backward"}
    assert mutate.reached_by("_Layout.__init__") == {"encode", "decode"}
    assert mutate.reached_by("ReferenceBackend.sgd") == {"sgd"}
    assert mutate.reached_by("ReferenceBackend.__init__") is None  # every check


def test_original_survives_and_a_mutant_dies(mutate, mutants):
    original = compile(mutate.SUBJECT.read_text(), str(mutate.SUBJECT), "exec")
    assert mutate.run_isolated(original, "ReferenceBackend.relu_vjp", 1, ("float32",), False, 300) == (
        "survived",
        "",
    )
    m, code = next(
        (m, c) for m, c in mutants if m.function == "ReferenceBackend.relu_vjp" and m.operator == "compare"
    )
    status, check = mutate.run_isolated(code, m.function, 1, ("float32",), False, 300)
    assert status == "killed" and check.startswith("relu_vjp"), (m.key, status, check)


def test_table_counts(mutate, mutants):
    records = [m for m, _ in mutants[:4]]
    records[0].status, records[1].status, records[2].status, records[3].status = (
        "killed", "equivalent", "survived", "timeout",
    )  # fmt: skip
    mutate.EQUIVALENT.setdefault(records[1].key, "test")
    text = mutate.table(records)
    assert "| 4 | 1 | 2 (1 by timeout) | 1 | 66.7% |" in text
    assert "Survivors:" in text and records[2].before in text
