"""The conformance suite engine: run every check on a backend with hypothesis, collect a report.

::

    from saf_ref.testing import TorchBackend, run_suite
    report = run_suite(TorchBackend(dtype="float32"), examples=30)
    print(report.table())
    assert report.ok, report.failures_text()

Each check (:mod:`saf_ref.testing.checks`) becomes a hypothesis test built on the fly: its explicit
boundary examples run first, then ``examples`` generated cases (``SuiteOptions``), with no example
database (runs are reproducible from ``seed``) and, unless asked, no shrinking (a failing mutant is
reported at once). The engine counts the examples tried and the one that first failed, keeps the worst
``error / bound`` ratio and the known divergences, and turns hypothesis' failure notes (the falsifying
example and its ``@reproduce_failure`` blob) into the report's reproduction line.

Statuses: ``pass``; ``known divergence`` (passed, with documented differences counted); ``fail``;
``skip`` (a method is missing, or the backend raised ``NotImplementedError`` for every case).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, example, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.configuration import set_hypothesis_home_dir, storage_directory
from hypothesis.errors import Unsatisfiable

from saf_ref.testing.checks import Check, Context, SuiteOptions, Unsupported, all_checks
from saf_ref.testing.checks.core import Boundary, label
from saf_ref.testing.contracts import KNOWN_DIVERGENCES
from saf_ref.testing.protocol import describe_backend, has_method

__all__ = [
    "CheckResult",
    "Report",
    "SuiteOptions",
    "coverage_text",
    "run_check",
    "run_suite",
    "select_checks",
]

STATUSES = ("pass", "known divergence", "fail", "skip")
#: a check whose first GIVE_UP cases all raise NotImplementedError is skipped without trying more
GIVE_UP = 10


class _NothingSupported(BaseException):
    """Raised through hypothesis (which lets non-``Exception`` errors pass) to stop an unsupported check."""


REPORT_SCHEMA = "saf_ref.check_report"


@dataclass
class CheckResult:
    """The outcome of one check.

    Attributes
    ----------
    name, contract : str
    status : {"pass", "known divergence", "fail", "skip"}
    examples : int
        Examples run (explicit boundary examples included).
    first_failure : int or None
        1-based index of the first failing example.
    worst_ratio : float
        The largest ``error / bound`` seen (0 for exact agreement; above 1 only in a failure).
    divergences : dict[str, int]
        Known divergence -> number of elements it explained.
    unsupported : int
        Examples the backend declined with ``NotImplementedError``.
    message : str
        Why it failed (with the reproduction), or why it was skipped.
    seconds : float
    classes : list of str
        The check's boundary classes (its boundary table), in the order they run.
    classes_run : list of str
        Those that ran (all of them unless the check failed or was skipped first, or boundary examples
        were turned off).
    """

    name: str
    contract: str
    status: str = "pass"
    examples: int = 0
    first_failure: int | None = None
    worst_ratio: float = 0.0
    divergences: dict[str, int] = field(default_factory=dict)
    unsupported: int = 0
    message: str = ""
    seconds: float = 0.0
    classes: list[str] = field(default_factory=list)
    classes_run: list[str] = field(default_factory=list)


@dataclass
class Report:
    """The suite's results on one backend; ``ok`` is the verdict."""

    backend: str
    device: str
    dtype: str
    unit_roundoff: float
    options: dict[str, Any]
    results: list[CheckResult]
    spec: str = ""

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def ok(self) -> bool:
        """No failure (and, with ``strict``, no known divergence either)."""
        bad = ("fail", "known divergence") if self.options.get("strict") else ("fail",)
        return not any(r.status in bad for r in self.results)

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"Report.result: no check named {name!r}; checks: {[r.name for r in self.results]}")

    def to_dict(self) -> dict[str, Any]:
        summary = {s: self.count(s) for s in STATUSES}
        return {
            "schema": REPORT_SCHEMA,
            "version": 1,
            "backend": self.backend,
            "spec": self.spec,
            "device": self.device,
            "dtype": self.dtype,
            "unit_roundoff": self.unit_roundoff,
            "options": self.options,
            "ok": self.ok,
            "summary": summary,
            "known_divergences": {k: KNOWN_DIVERGENCES[k.split("+")[0]] for k in self._divergence_names()},
            "checks": [asdict(r) for r in self.results],
        }

    def to_json(self) -> str:
        def clean(v):  # JSON has no inf or NaN: the worst ratio of a failure is inf, written as null
            return None if isinstance(v, float) and not math.isfinite(v) else v

        d = self.to_dict()
        for r in d["checks"]:
            r["worst_ratio"] = clean(r["worst_ratio"])
        return json.dumps(d, indent=1) + "\n"

    def _divergence_names(self) -> list[str]:
        names: list[str] = []
        for r in self.results:
            for k in r.divergences:
                for part in k.split("+"):
                    if part not in names:
                        names.append(part)
        return names

    def table(self) -> str:
        """The report as text: a header, one line per check, the known divergences and failures, a summary."""
        lines = [
            f"saf-ref check {self.spec or self.backend}: {self.backend} on {self.device}, "
            f"dtype {self.dtype}, "
            f"unit roundoff {self.unit_roundoff:.3g}",
            f"  examples per check: {self.options['examples']} (+ boundary examples), "
            f"seed {self.options['seed']}, "
            f"e4m3 overflow {self.options['e4m3_overflow']}, narrowing {self.options['narrowing']}, "
            f"NaN payloads {self.options['nan_payloads']}",
            "",
            f"{'check':<30} {'contract':<9} {'status':<17} {'examples':>8} {'worst/bound':>12}  notes",
        ]
        for r in self.results:
            ratio = "" if r.status == "skip" else f"{r.worst_ratio:12.3g}"
            notes = ""
            if r.status == "fail":
                notes = f"first failure at example {r.first_failure}"
            elif r.status == "skip":
                notes = r.message
            elif r.divergences:
                notes = ", ".join(f"{k} ({v})" for k, v in r.divergences.items())
            if r.unsupported and r.status != "skip":
                notes += f"{'; ' if notes else ''}{r.unsupported} unsupported"
            lines.append(f"{r.name:<30} {r.contract:<9} {r.status:<17} {r.examples:>8} {ratio:>12}  {notes}")
        names = self._divergence_names()
        if names:
            lines += ["", "known divergences (documented, not bugs):"]
            lines += [f"  {k}: {KNOWN_DIVERGENCES[k]}" for k in names]
        if self.failed:
            lines += ["", "failures:"]
            for r in self.failed:
                lines += [f"  {r.name}: {r.message}", ""]
        lines += [
            "",
            f"{self.count('pass')} passed, {self.count('known divergence')} passed with known divergences, "
            f"{self.count('fail')} failed, {self.count('skip')} skipped" + ("" if self.ok else "  -> FAILED"),
        ]
        return "\n".join(lines)

    def failures_text(self) -> str:
        return "\n\n".join(f"{r.name}: {r.message}" for r in self.failed)

    def coverage_text(self) -> str:
        """Which boundary classes of each check ran (:func:`coverage_text` of the report)."""
        return coverage_text(self.to_dict())


def coverage_text(report: dict[str, Any]) -> str:
    """The boundary classes of every check of a report (its :meth:`Report.to_dict` or JSON), each marked
    ``ran`` or ``NOT RUN``, and a total: ``saf-ref check --coverage``."""
    lines, total, ran = ["boundary classes (run first, before the generated examples):"], 0, 0
    for r in report["checks"]:
        done = set(r.get("classes_run", []))
        classes = r.get("classes", [])
        total, ran = total + len(classes), ran + len(done)
        lines.append(f"{r['name']}: {len(done)} of {len(classes)} classes ran")
        lines += [f"  {'ran    ' if c in done else 'NOT RUN'}  {c}" for c in classes]
    lines.append(f"{ran} of {total} boundary classes ran" + ("" if ran == total else "  -> some did not run"))
    return "\n".join(lines)


def select_checks(only: Iterable[str] | None = None, skip: Iterable[str] | None = None) -> list[Check]:
    """The checks whose names match a pattern of ``only`` (all if None) and none of ``skip``.

    A pattern is a check name or an fnmatch pattern (``"encode*"``, ``"model*"``, ``"*vjp*"``).
    """
    only, skip = list(only or []), list(skip or [])

    def matches(name: str, pattern: str) -> bool:
        # an exact name first: "encode[bfloat16]" would be a character class for fnmatch
        return name == pattern or fnmatch.fnmatchcase(name, pattern)

    out = []
    for c in all_checks():
        if only and not any(matches(c.name, p) for p in only):
            continue
        if any(matches(c.name, p) for p in skip):
            continue
        out.append(c)
    if only and not out:
        raise ValueError(
            f"select_checks: no check matches only={only}; the checks are {[c.name for c in all_checks()]}"
        )
    return out


def _settings(options: SuiteOptions, n: int) -> settings:
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if options.shrink else [])
    return settings(
        max_examples=n,
        database=None,
        deadline=None,
        derandomize=options.seed is None,
        phases=phases,
        print_blob=True,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )


def _repro(check: Check, options: SuiteOptions, spec: str, dtype: str, notes: Sequence[str]) -> str:
    cmd = f"saf-ref check {spec} --only '{check.name}' --dtype {dtype} --examples {options.examples}"
    cmd += f" --seed {options.seed}" if options.seed is not None else " --derandomize"
    defaults = SuiteOptions()
    for flag, name in (("--e4m3-overflow", "e4m3_overflow"), ("--narrowing", "narrowing"),
                       ("--nan-payloads", "nan_payloads"), ("--rel-factor", "rel_factor")):  # fmt: skip
        if getattr(options, name) != getattr(defaults, name):
            cmd += f" {flag} {getattr(options, name)}"
    if not options.boundary_examples:
        cmd += " --no-boundary-examples"
    text = " ".join(" ".join(str(n).split()) for n in notes)
    return f"reproduce: {cmd}" + (f"; hypothesis: {text}" if text else "")


def run_check(check: Check, backend: Any, options: SuiteOptions, *, spec: str = "") -> CheckResult:
    """Run one check on a backend (see the module docstring); never raises for a backend's failure."""
    info = describe_backend(backend)
    result = CheckResult(check.name, check.contract)
    missing = [m for m in check.methods if not has_method(backend, m)]
    if missing:
        result.status, result.message = "skip", f"backend has no {', '.join(missing)}"
        if options.boundary_examples:
            result.classes = [
                b.name for b in label(check.explicit(Context(backend, info, options, check.name)))
            ]
        return result
    ctx = Context(backend, info, options, check.name)
    state = {"count": 0, "first": None, "unsupported": 0, "why": "", "worst": 0.0, "divergences": {}}
    table = label(check.explicit(ctx)) if options.boundary_examples else []
    result.classes = [b.name for b in table]

    def body(case):
        if isinstance(case, Boundary):  # a row of the boundary table: record its class, run its case
            if case.name not in result.classes_run:
                result.classes_run.append(case.name)
            case = case.case
        state["count"] += 1
        try:
            out = check.run(ctx, case)
        except Unsupported as err:
            state["unsupported"] += 1
            state["why"] = str(err)
            if state["unsupported"] >= GIVE_UP and state["count"] == state["unsupported"]:
                raise _NothingSupported from None  # do not let hypothesis search for a supported case
            reject()
        except BaseException:
            if state["first"] is None:
                state["first"] = state["count"]
            raise
        ratio, divs = out if isinstance(out, tuple) else (out, {})
        state["worst"] = max(state["worst"], ratio)
        for k, v in divs.items():
            state["divergences"][k] = state["divergences"].get(k, 0) + v

    test = given(check.strategy(ctx))(body)
    for row in reversed(table):  # example() decorators apply bottom-up: the table runs in its order
        test = example(row)(test)
    test = _settings(options, options.examples_for(check))(test)
    if options.seed is not None:
        test = hypothesis_seed(options.seed)(test)
    start = time.perf_counter()
    try:
        # signalling NaNs, overflow edges and subnormals warn in NumPy casts and arithmetic (the backend's
        # and the references'): expected here, and not the report's business
        with np.errstate(all="ignore"):
            test()
    except (Unsatisfiable, _NothingSupported):
        pass  # every case tried was unsupported: decided below
    except Exception as err:  # the contract failed, or the backend raised
        kind = "" if isinstance(err, AssertionError) else f"{type(err).__name__}: "
        notes = getattr(err, "__notes__", [])
        result.status = "fail"
        if state["first"] is None:  # failed while generating a case, before the check ran
            state["first"] = state["count"] + 1
        result.message = (
            f"{kind}{err}\n    {_repro(check, options, spec or info.name, info.dtype.name, notes)}"
        )
    result.seconds = time.perf_counter() - start
    result.unsupported = state["unsupported"]
    # hypothesis replays a failing example once more before raising: count what ran before that
    result.examples = state["first"] if state["first"] is not None else state["count"] - state["unsupported"]
    result.first_failure = state["first"] if result.status == "fail" else None
    result.worst_ratio = float("inf") if result.status == "fail" else state["worst"]
    result.divergences = state["divergences"]
    if result.status != "fail":
        if result.examples == 0 and result.unsupported:
            result.status, result.message = "skip", f"not implemented ({state['why']})"
        elif result.divergences:
            result.status = "known divergence"
    return result


@contextlib.contextmanager
def _hypothesis_home_in_a_temporary_directory() -> Iterator[None]:
    """Point hypothesis's storage at a temporary directory while the suite runs, then back.

    The suite keeps no example database (``database=None``), but hypothesis still caches what it reads
    from source files under its home directory, ``./.hypothesis`` by default: ``saf-ref check`` would
    leave that folder in whatever directory it was run from.
    """
    try:
        current = storage_directory(intent_to_write=False)
    except TypeError:  # hypothesis before 6.13x: no keyword, and a plain Path for the home directory
        current = storage_directory()
    previous = getattr(current, "home_directory", current)
    with tempfile.TemporaryDirectory(prefix="saf_ref_check_hypothesis_") as home:
        set_hypothesis_home_dir(home)
        try:
            yield
        finally:
            set_hypothesis_home_dir(previous)


def run_suite(
    backend: Any,
    options: SuiteOptions | None = None,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] | None = None,
    spec: str = "",
    progress: Any = None,
    **option_kwargs: Any,
) -> Report:
    """Run the selected checks on ``backend`` and return a :class:`Report`.

    Parameters
    ----------
    backend : object
        Implements (part of) :class:`saf_ref.testing.protocol.Backend`.
    options : SuiteOptions, optional
        Or give its fields as keyword arguments (``examples=10, e4m3_overflow="saturate"``).
    only, skip : iterable of str
        fnmatch patterns on check names (``"encode*"``, ``"model*"``).
    spec : str
        How the backend was named on the command line (for the reproduction line).
    progress : callable(CheckResult), optional
        Called after each check (the command line prints a dot).
    """
    if options is None:
        options = SuiteOptions(**option_kwargs)
    elif option_kwargs:
        raise TypeError(f"run_suite: give options or keyword options, not both (got {sorted(option_kwargs)})")
    info = describe_backend(backend)
    results = []
    with _hypothesis_home_in_a_temporary_directory():
        for check in select_checks(only, skip):
            r = run_check(check, backend, options, spec=spec)
            results.append(r)
            if progress is not None:
                progress(r)
    return Report(info.name, info.device, info.dtype.name, info.roundoff, asdict(options), results, spec)
