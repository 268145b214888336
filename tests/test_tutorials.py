"""The tutorials: every notebook executes headless without an error, and the committed notebooks match
their jupytext scripts.

Each tutorial asserts the claims it teaches, so a library regression shows up here as a failing cell.
The notebooks are executed from their ``.py`` scripts (the source of truth) in a fresh kernel running
this interpreter, with the per-notebook limit below; nothing is written to the repository.
The harness itself (``scripts/build_tutorials.py``) is checked on throwaway notebooks: a raising cell,
a notebook past its limit and a notebook out of sync must all be caught.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

for _module in ("nbclient", "nbformat", "jupytext", "ipykernel", "matplotlib"):
    pytest.importorskip(_module, reason="the tutorials need the 'tutorials' extra")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_TIMEOUT = 240  # seconds per notebook (the longest, 04, takes about a minute on a busy 2-core box)


def _load_build():
    name = "saf_ref_scripts_build_tutorials"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "build_tutorials.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


build = _load_build()
SOURCES = build.tutorial_sources()


def test_tutorials_exist():
    assert len(SOURCES) >= 3, f"expected the tutorial scripts in {build.TUTORIALS}, found {SOURCES}"


def _files_under(directory: Path) -> set[Path]:
    return {p.relative_to(directory) for p in directory.rglob("*")}


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_tutorial_executes(source):
    before = _files_under(source.parent)
    nb = build.script_to_notebook(source)
    build.execute_notebook(nb, cwd=source.parent, timeout=NOTEBOOK_TIMEOUT)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    build.figure_outputs(nb)  # every cell that names a README figure drew one
    # a tutorial writes no files (hypothesis's cache in tutorials/.hypothesis was one)
    written = sorted(str(p) for p in _files_under(source.parent) - before)
    assert not written, f"{source.name} wrote {written}"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_tutorial_has_real_exercises(source):
    problems = build.exercise_problems(build.script_to_notebook(source))
    assert not problems, f"{source.name}: " + "; ".join(problems)


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_in_sync_with_script(source):
    problems = build.check(source)
    assert not problems, "\n".join(problems) + "\nrun: python scripts/build_tutorials.py " + source.stem


# ---------------------------------------------------------------------------------------------------------
# The harness catches what it must catch
# ---------------------------------------------------------------------------------------------------------
def _script(tmp_path: Path, body: str, name: str = "01_probe.py") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


GOOD = """# %% [markdown]
# # A probe

# %%
import numpy as np
x = np.arange(3)

# %% figure="probe"
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(2, 2))
ax.plot(x)
plt.show()
"""


@pytest.mark.slow
def test_build_then_check_round_trip(tmp_path):
    source = _script(tmp_path, GOOD)
    figures = tmp_path / "figures"
    build.build(source, figures_dir=figures)
    assert (figures / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert build.check(source, figures_dir=figures) == []
    # a rebuild of an unchanged script writes the same bytes (stable ids, no timing metadata)
    first = source.with_suffix(".ipynb").read_bytes()
    build.build(source, figures_dir=figures)
    assert source.with_suffix(".ipynb").read_bytes() == first

    # an edited script, a stale figure, an unexecuted notebook: each is reported
    source.write_text(GOOD.replace("np.arange(3)", "np.arange(4)"))
    assert any("out of sync" in line for line in build.check(source, figures_dir=figures))
    source.write_text(GOOD)
    (figures / "probe.png").write_bytes(b"stale")
    assert any("probe.png" in line for line in build.check(source, figures_dir=figures))
    build.build(source, execute=False, figures_dir=figures)
    assert any("not executed" in line for line in build.check(source, figures_dir=figures))
    source.with_suffix(".ipynb").unlink()
    assert any("missing" in line for line in build.check(source, figures_dir=figures))


def test_check_reports_cell_mismatch_without_a_kernel(tmp_path):
    source = _script(tmp_path, GOOD)
    build.build(source, execute=False, figures_dir=tmp_path)
    source.write_text(GOOD + "\n# %%\nprint('one more cell')\n")
    problems = build.check(source, figures_dir=tmp_path)
    assert len(problems) == 1 and "out of sync" in problems[0] and "cell 3" in problems[0]


def test_check_reports_a_solution_unfolded_in_the_notebook(tmp_path):
    # the folding of a solution is cell metadata: a notebook that lost it is out of sync
    folded = GOOD.replace("# %%\nimport numpy", '# %% jupyter={"source_hidden": true}\nimport numpy')
    source = _script(tmp_path, folded)
    build.build(source, execute=False, figures_dir=tmp_path)
    assert not any("out of sync" in line for line in build.check(source, figures_dir=tmp_path))
    source.write_text(GOOD)
    problems = build.check(source, figures_dir=tmp_path)
    assert len(problems) == 1 and "out of sync" in problems[0] and "cell 1" in problems[0]


EXERCISE = """# %%
answer = None  # TODO

# %% jupyter={"source_hidden": true}
solution = 1

# %%
check(test, answer, solution)
"""


def test_exercise_problems_finds_fake_exercises(tmp_path):
    def problems(body):
        return build.exercise_problems(build.script_to_notebook(_script(tmp_path, body)))

    assert problems(GOOD + EXERCISE) == []
    assert len(problems(GOOD)) == 1 and problems(GOOD)[0].startswith("no exercise")
    no_todo = problems(GOOD + EXERCISE.replace("  # TODO", ""))
    assert len(no_todo) == 1 and "must follow a code cell with a TODO" in no_todo[0]
    no_check = problems(GOOD + EXERCISE.replace("check(test, answer, solution)", "print(answer)"))
    assert len(no_check) == 1 and "followed by a check(...) cell" in no_check[0]
    last = problems(GOOD + EXERCISE.rsplit("# %%", 1)[0])
    assert len(last) == 1 and "followed by a check(...) cell" in last[0]


@pytest.mark.slow
def test_a_raising_cell_fails_execution(tmp_path):
    from nbclient.exceptions import CellExecutionError

    nb = build.script_to_notebook(_script(tmp_path, "# %%\nx = 1\n\n# %%\nassert x == 2, 'claim failed'\n"))
    with pytest.raises(CellExecutionError, match="claim failed"):
        build.execute_notebook(nb, cwd=tmp_path, timeout=60)


@pytest.mark.slow
def test_the_limit_is_per_notebook(tmp_path):
    from nbclient.exceptions import CellTimeoutError

    # three cells of 1.5 s each: every one is under the 3 s limit, together they are not
    body = "".join("# %%\nimport time\ntime.sleep(1.5)\n\n" for _ in range(3))
    nb = build.script_to_notebook(_script(tmp_path, body))
    with pytest.raises(CellTimeoutError):
        build.execute_notebook(nb, cwd=tmp_path, timeout=3)


def test_select_by_number_stem_and_path(tmp_path):
    for name in ("01_alpha.py", "02_beta.py", "notes.py"):
        (tmp_path / name).write_text("# %%\n")
    assert [p.name for p in build.tutorial_sources(tmp_path)] == ["01_alpha.py", "02_beta.py"]
    assert [p.name for p in build.select(["02", "01_alpha", "x/01_alpha.ipynb"], tmp_path)] == [
        "02_beta.py",
        "01_alpha.py",
        "01_alpha.py",
    ]
    with pytest.raises(SystemExit, match="no single tutorial matches '03'"):
        build.select(["03"], tmp_path)


def test_kernel_runs_this_interpreter():
    spec = build._kernel_manager().kernel_spec
    assert spec.argv[0] == sys.executable and shutil.which(spec.argv[0]) is not None


def test_consecutive_stream_outputs_are_merged():
    import nbformat

    cell = nbformat.v4.new_code_cell("print(1); print(2)")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="1\n"),
        nbformat.v4.new_output("stream", name="stdout", text="2\n"),
        nbformat.v4.new_output("stream", name="stderr", text="warning\n"),
        nbformat.v4.new_output("stream", name="stdout", text="3\n"),
    ]
    build._merge_streams(cell)
    assert [(o.name, o.text) for o in cell.outputs] == [
        ("stdout", "1\n2\n"),
        ("stderr", "warning\n"),
        ("stdout", "3\n"),
    ]
