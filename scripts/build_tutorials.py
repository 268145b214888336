#!/usr/bin/env python
"""Build the tutorials: turn the jupytext scripts into notebooks, run them headless, store the outputs.

The source of truth of each tutorial is a *percent script* ``tutorials/NN_name.py`` (cells start with
``# %%``; markdown cells with ``# %% [markdown]``), because it diffs and reviews like code. The committed
``tutorials/NN_name.ipynb`` is generated from it, executed, with its outputs, so that its figures show on
a code-hosting site without running anything. Never edit the ``.ipynb`` by hand; edit the ``.py`` (or
open the notebook in Jupyter with jupytext installed, which keeps the two paired) and rebuild.

Usage (from the repository root)::

    python scripts/build_tutorials.py                 # rebuild and execute every tutorial
    python scripts/build_tutorials.py 01 03           # only these (number, stem or path)
    python scripts/build_tutorials.py --check         # verify .ipynb == .py and figures, no execution
    python scripts/build_tutorials.py --no-execute 02 # convert only (fast, while writing)

What a build does, per tutorial:

1. reads the ``.py`` with jupytext and gives every cell a stable id (a hash of its source), so a rebuild
   of an unchanged tutorial rewrites the same bytes;
2. executes it with nbclient in a fresh kernel that runs *this* Python interpreter (not whatever
   ``python`` a ``python3`` kernel spec finds on the PATH), with the working directory ``tutorials/``,
   the inline matplotlib backend, one BLAS thread (unless ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``
   say otherwise) and a per-notebook time limit (``--timeout``, default 240 s);
   a cell that raises stops the build with the cell's traceback;
3. writes the ``.ipynb`` with outputs (no timing metadata), and for every code cell whose metadata
   names a figure (``# %% figure="flip_magnitudes"``) writes its PNG output to
   ``tutorials/figures/flip_magnitudes.png``, the copy the README embeds.

``--check`` exits with status 1 and one line per problem when a notebook's cells differ from its script,
when a code cell was never executed, or when a figure file differs from the notebook's output.

Rules for tutorial scripts: set every seed, write no files (figures for the README come from the cell
metadata above), and read only the shipped data (no network). Exercises are three code cells: a ``TODO``
cell for the learner's answer, the worked solution folded away (``# %% jupyter={"source_hidden": true}``;
``--check`` keeps that metadata in sync too) and a ``check(...)`` cell that tests the answer;
:func:`exercise_problems` finds a tutorial without them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
FIGURES = TUTORIALS / "figures"
DEFAULT_TIMEOUT = 240.0
KERNEL_NAME = "python3"
# What a notebook records about its language: enough for syntax highlighting, nothing that differs from
# one machine to the next (the Python version does).
_LANGUAGE_INFO_KEYS = (
    "name",
    "codemirror_mode",
    "file_extension",
    "mimetype",
    "nbconvert_exporter",
    "pygments_lexer",
)


# ---------------------------------------------------------------------------------------------------------
# Finding tutorials
# ---------------------------------------------------------------------------------------------------------
def tutorial_sources(directory: Path = TUTORIALS) -> list[Path]:
    """The tutorial scripts ``NN_name.py`` in ``directory``, in order."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.py") if p.is_file())


def select(names: list[str], directory: Path = TUTORIALS) -> list[Path]:
    """The scripts that ``names`` pick (a number ``"01"``, a stem, a .py or .ipynb path); all if empty."""
    sources = tutorial_sources(directory)
    if not names:
        return sources
    chosen = []
    for name in names:
        stem = Path(name).stem
        hits = [p for p in sources if p.stem == stem or p.stem.split("_", 1)[0] == stem]
        if len(hits) != 1:
            known = ", ".join(p.stem for p in sources) or "none"
            raise SystemExit(f"build_tutorials: no single tutorial matches {name!r} (known: {known})")
        chosen.append(hits[0])
    return chosen


# ---------------------------------------------------------------------------------------------------------
# Converting
# ---------------------------------------------------------------------------------------------------------
def _stable_ids(nb) -> None:
    """Give each cell an id derived from its type and source (Jupyter would draw random ones).

    A repeated cell gets a counter suffix, so ids stay unique; editing one cell changes only its id.
    """
    seen: dict[str, int] = {}
    for cell in nb.cells:
        digest = hashlib.sha1(f"{cell.cell_type}\0{cell.source}".encode()).hexdigest()[:8]
        count = seen.get(digest, 0)
        seen[digest] = count + 1
        cell["id"] = digest if count == 0 else f"{digest}-{count}"


def script_to_notebook(path: Path):
    """The notebook (``nbformat.NotebookNode``, no outputs) that the percent script ``path`` defines."""
    import jupytext

    nb = jupytext.read(path, fmt="py:percent")
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": KERNEL_NAME,
    }
    # keep the pairing (so Jupyter + jupytext saves both files) but not the jupytext version stamp
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    _stable_ids(nb)
    return nb


# Cell metadata the script defines and the notebook must keep: a README figure's name, and the
# ``jupyter.source_hidden`` flag that folds an exercise's solution away.
SYNCED_METADATA = ("figure", "jupyter")


def cell_sources(nb) -> list[tuple[str, str, dict]]:
    """``(cell_type, source, metadata)`` of every cell: what must agree between a notebook and its script
    (``metadata`` restricted to :data:`SYNCED_METADATA`)."""
    return [
        (cell.cell_type, cell.source, {k: cell.metadata[k] for k in SYNCED_METADATA if k in cell.metadata})
        for cell in nb.cells
    ]


def exercise_problems(nb) -> list[str]:
    """What is wrong with the exercises of ``nb``: one line each; empty when every exercise is real.

    An exercise is a code cell with a ``TODO`` for the learner, later a solution folded away (a code cell
    with metadata ``jupyter.source_hidden``), then a check cell that calls ``check(...)``. A tutorial needs
    at least one; every folded solution must sit between a TODO and a check.
    """
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    hidden = [k for k, (_, c) in enumerate(code) if c.metadata.get("jupyter", {}).get("source_hidden")]
    if not hidden:
        return ["no exercise (a TODO cell, a solution cell with jupyter.source_hidden, a check cell)"]
    problems = []
    for k in hidden:
        index = code[k][0]
        if k == 0 or "TODO" not in code[k - 1][1].source:
            problems.append(f"cell {index}: a folded solution must follow a code cell with a TODO")
        if k + 1 == len(code) or "check(" not in code[k + 1][1].source:
            problems.append(f"cell {index}: a folded solution must be followed by a check(...) cell")
    return problems


# ---------------------------------------------------------------------------------------------------------
# Executing
# ---------------------------------------------------------------------------------------------------------
def _kernel_manager():
    """A kernel manager whose kernel runs this interpreter (``sys.executable -m ipykernel_launcher``).

    An installed ``python3`` kernel spec usually says ``"python"`` and so runs whichever Python comes
    first on the PATH, which need not be the one where saf_ref is installed. This one cannot miss.
    """
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):  # every name means this interpreter
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name="Python 3 (ipykernel)",
                language="python",
            )

    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ThisPython())


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    # figures go to the notebook as PNG even where the caller set MPLBACKEND=Agg (CI often does)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env["PYTHONHASHSEED"] = "0"
    # One BLAS thread unless the caller says otherwise: the tutorials' matrices are small, where
    # OpenBLAS threads cost more than they save (100x slower on a busy 2-core machine), and a fixed
    # thread count keeps the summation order, hence the stored outputs, the same from build to build.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    # the kernel imports saf_ref from this checkout even if it is not installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def execute_notebook(nb, *, cwd: Path = TUTORIALS, timeout: float = DEFAULT_TIMEOUT):
    """Run every code cell of ``nb`` in order, in a fresh kernel, storing the outputs in ``nb``.

    Parameters
    ----------
    nb : nbformat.NotebookNode
        Modified in place (outputs, execution counts, ``metadata.language_info``) and returned.
    cwd : Path
        Working directory of the kernel.
    timeout : float
        Seconds for the whole notebook: each cell may use what earlier cells left.

    Raises
    ------
    nbclient.exceptions.CellExecutionError
        A cell raised; the message carries the cell's source and traceback.
    nbclient.exceptions.CellTimeoutError
        The notebook ran past ``timeout``.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    client = NotebookClient(
        nb,
        km=_kernel_manager(),
        timeout=math.ceil(timeout),
        record_timing=False,
        allow_errors=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    deadline = time.monotonic() + timeout
    with client.setup_kernel(env=_kernel_env()):
        info = client.kc.kernel_info(reply=True, timeout=60)["content"]["language_info"]
        nb.metadata["language_info"] = {k: info[k] for k in _LANGUAGE_INFO_KEYS if k in info}
        for index, cell in enumerate(nb.cells):
            left = deadline - time.monotonic()
            if left <= 0:
                raise CellTimeoutError(f"notebook ran past its {timeout:g} s limit before cell {index}")
            client.timeout = math.ceil(left)  # nbclient's limit is per cell: give each what is left
            client.execute_cell(cell, index)
            _merge_streams(cell)
    return nb


def _merge_streams(cell) -> None:
    """Join consecutive stdout (or stderr) outputs of a cell into one.

    How printed text is split into outputs depends on when the kernel flushed it, i.e. on timing; merged,
    the stored notebook is the same on every build.
    """
    merged = []
    for out in cell.get("outputs", []):
        if (
            merged
            and out.output_type == "stream"
            and merged[-1].output_type == "stream"
            and merged[-1].name == out.name
        ):
            merged[-1].text += out.text
        else:
            merged.append(out)
    if "outputs" in cell:
        cell.outputs = merged


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------
def figure_outputs(nb) -> dict[str, bytes]:
    """``{name: png bytes}`` for every code cell whose metadata has ``figure="name"``.

    The cell's last PNG output is the figure (a cell draws one figure; earlier ones would be drafts).
    """
    figures = {}
    for index, cell in enumerate(nb.cells):
        name = cell.metadata.get("figure") if cell.cell_type == "code" else None
        if name is None:
            continue
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        if not pngs:
            raise ValueError(f"build_tutorials: cell {index} names figure {name!r} but shows no PNG output")
        if name in figures:
            raise ValueError(f"build_tutorials: figure {name!r} is named by two cells")
        figures[name] = base64.b64decode(pngs[-1])
    return figures


# ---------------------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------------------
def check(source: Path, figures_dir: Path = FIGURES) -> list[str]:
    """Problems with the committed notebook of ``source``: one line each; an empty list when all is well.

    The notebook must exist, hold exactly the script's cells (type and source, in order), have every
    code cell executed, and every figure it names must be stored, byte for byte, in ``figures_dir``.
    """
    import nbformat

    target = source.with_suffix(".ipynb")
    if not target.exists():
        return [f"{target.name}: missing (run: python scripts/build_tutorials.py {source.stem})"]
    expected = cell_sources(script_to_notebook(source))
    nb = nbformat.read(target, as_version=4)
    got = cell_sources(nb)
    problems = []
    if got != expected:
        pairs = zip(got, expected, strict=False)  # lengths may differ: the first difference is wanted
        differ = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(got), len(expected)))
        problems.append(
            f"{target.name}: out of sync with {source.name} from cell {differ} "
            f"({len(got)} cells vs {len(expected)}); rebuild it"
        )
    unrun = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count") is None]
    if unrun and not problems:
        problems.append(f"{target.name}: code cells {unrun} were not executed; rebuild it")
    if not problems:
        try:
            figures = figure_outputs(nb)
        except ValueError as exc:
            return [f"{target.name}: {exc}"]
        for name, png in figures.items():
            path = figures_dir / f"{name}.png"
            if not path.exists() or path.read_bytes() != png:
                problems.append(
                    f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: "
                    f"missing or differs from {target.name}; rebuild it"
                )
    return problems


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
def build(
    source: Path, *, execute: bool = True, timeout: float = DEFAULT_TIMEOUT, figures_dir: Path = FIGURES
) -> float:
    """Write ``source``'s notebook (executed unless ``execute`` is false) and its figures; return seconds."""
    import nbformat

    start = time.perf_counter()
    nb = script_to_notebook(source)
    if execute:
        execute_notebook(nb, cwd=source.parent, timeout=timeout)
        figures = figure_outputs(nb)
        if figures:
            figures_dir.mkdir(parents=True, exist_ok=True)
        for name, png in figures.items():
            (figures_dir / f"{name}.png").write_bytes(png)
    nbformat.validate(nb)
    nbformat.write(nb, source.with_suffix(".ipynb"))
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="tutorials to build: number (01), stem or path; default all")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="verify notebooks and figures, execute nothing")
    mode.add_argument("--no-execute", action="store_true", help="convert only (the notebook has no outputs)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per notebook (default {DEFAULT_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    sources = select(args.names)
    if not sources:
        print("build_tutorials: no tutorials found in", TUTORIALS)
        return 1
    if args.check:
        problems = [line for source in sources for line in check(source)]
        for line in problems:
            print(line)
        print(f"{len(sources)} tutorial(s) checked, {len(problems)} problem(s)")
        return 1 if problems else 0
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    for source in sources:
        print(f"{source.stem}: ", end="", flush=True)
        try:
            seconds = build(source, execute=not args.no_execute, timeout=args.timeout)
        except (CellExecutionError, CellTimeoutError) as exc:
            # the message holds the failing cell and its traceback; the .ipynb is left as it was
            print(f"FAILED, {source.with_suffix('.ipynb').name} not written\n{exc}")
            return 1
        print(f"{'converted' if args.no_execute else 'executed'} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
