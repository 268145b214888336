"""Mutation testing of the oracle kit: mutate the independent NumPy backend, run the suite on each mutant.

::

    python scripts/mutate.py                       # every mutant, quick suite, one process: the table
    python scripts/mutate.py --list                # the mutants only (no suite run)
    python scripts/mutate.py --only 'encode*' -v   # mutants of some functions, each outcome printed
    python scripts/mutate.py --json mutants.json   # also the per-mutant outcomes

The subject is :mod:`saf_ref.testing.reference_backend`, written from the specification without calling
saf_ref's implementations, so that the suite's exact checks can fail on it. A small AST mutator makes one
change per mutant, at every place it applies inside the backend's classes:

============  ===========================================================================================
operator      change
============  ===========================================================================================
arith         ``+ <-> -``, ``* <-> /``, ``// -> /``, ``% -> //``, ``** -> *``, ``& <-> |``, ``^ -> |``,
              ``<< <-> >>`` (also in augmented assignments)
compare       ``< -> <=``, ``<= -> <``, ``> -> >=``, ``>= -> >``, ``== <-> !=``, ``in <-> not in``,
              ``is <-> is not``
const         a number ``c`` becomes ``c + 1`` and ``c - 1``; ``True <-> False``
negation      ``-x -> x``, ``not x -> x``, ``~x -> x``
minmax        ``minimum <-> maximum``, ``min <-> max``, ``argmax <-> argmin``
rounding      ``rint -> floor``, ``trunc -> floor``, ``floor -> ceil``
boolop        ``and <-> or``
drop          a statement of a function body replaced by ``pass`` (docstrings excepted)
============  ===========================================================================================

Each mutant runs in a forked child process with a time limit: the child compiles the mutated module, builds
its backend and runs the suite (``--examples``, default 3 generated examples per check after the boundary
examples, 1 per whole model, seed 0, ``strict`` and ``nan_payloads="strict"``: the unmutated backend
passes with no known divergence), the checks of the mutated method first, and stops at the first failing
check. A mutant is *killed* when a check fails (or the suite times out), *survives* otherwise; survivors are
run once more with the full default suite in float32 and float64 before they count. Known equivalent
mutants (:data:`EQUIVALENT`, each with the reason) are excluded from the score

    score = killed / (generated - equivalent).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import multiprocessing as mp
import os
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path

SUBJECT = Path(__file__).resolve().parents[1] / "saf_ref" / "testing" / "reference_backend.py"
MODULE = "saf_ref.testing.reference_backend"

ARITH = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitOr, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
}  # fmt: skip
COMPARE = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip
SWAPS = {
    "minimum": ("minmax", "maximum"), "maximum": ("minmax", "minimum"), "min": ("minmax", "max"),
    "max": ("minmax", "min"), "argmax": ("minmax", "argmin"), "argmin": ("minmax", "argmax"),
    "rint": ("rounding", "floor"), "trunc": ("rounding", "floor"), "floor": ("rounding", "ceil"),
}  # fmt: skip

#: Mutants that cannot change any result the protocol defines, keyed by
#: ``"<function>: <original> -> <mutated>"`` (the ``key`` of :class:`Mutant`), with the reason.
_OVERFLOW = (
    "the overflow test is `mag > max_code`, and a rounded magnitude is either at most the largest finite "
    "code or the infinity code (a carry out of the top binade lands exactly on it) or beyond it by at least "
    "2**m: moving the threshold onto the infinity code changes no result"
)
_CTOR = (
    "an attribute set from a constructor argument; the protocol's default for a missing attribute is the "
    "same for the suite's backends (name: the class name, device 'cpu', dtype float32), and the constructor "
    "is not part of the protocol"
)
_BUFFER = (
    "the size of a scratch buffer padded on each side: the scatter only writes the window positions, which "
    "lie inside the input and its padding, and only the interior is read back"
)
_MX_NAN = "a block holding a NaN or an infinity has scale 0xFF and elements 0 whatever its other values"
EQUIVALENT: dict[str, str] = {
    "_Layout.__init__ @28 `self.max_code = self.inf_code - 1`: self.inf_code - 1 -> self.inf_code + 1": _OVERFLOW,  # noqa: E501
    "_Layout.__init__ @44 `self.max_code = self.inf_code - 1`: 1 -> 0": _OVERFLOW,
    "_Layout.__init__ @44 `self.max_code = self.nan_code - 1`: 1 -> 0": (
        "float8_e4m3fn: a magnitude equal to the NaN code (0x7F) is the NaN code either way"
    ),
    'ReferenceBackend.__init__ @8 `self.name = "reference (numpy, from the spec)"`: '
    'self.name = "reference (numpy, from the spec)" -> pass': _CTOR,
    "ReferenceBackend.__init__ @8 `self.dtype = str(dtype)`: self.dtype = str(dtype) -> pass": _CTOR
    + " (dropping it makes a float64 request run as float32: a runner that compared the declared dtype with "
    "the requested one would catch it; see the report)",
    "ReferenceBackend.__init__ @8 `self.device = device`: self.device = device -> pass": _CTOR,
    "ReferenceBackend.encode @21 `a = np.where(nan | inf, 0.0, np.abs(v))`: nan | inf -> nan & inf": (
        "the placeholder magnitude of NaN and inf inputs: both are overwritten by the NaN and infinity codes"
    ),
    "ReferenceBackend.encode @32 `a = np.where(nan | inf, 0.0, np.abs(v))`: 0.0 -> 1.0": (
        "the placeholder magnitude of NaN and inf inputs, overwritten by their codes"
    ),
    "ReferenceBackend.encode @32 `a = np.where(nan | inf, 0.0, np.abs(v))`: 0.0 -> -1.0": (
        "the placeholder magnitude of NaN and inf inputs, overwritten by their codes"
    ),
    "ReferenceBackend.apply_faults @57 `flat = np.array(codes, dtype=np.uint64).reshape(-1)`: 1 -> 2": (
        "reshape(-2): NumPy takes any negative size as the one inferred dimension"
    ),
    "ReferenceBackend.apply_faults @73 `records = list(zip(faults.index, faults.bit, faults.kind, "
    "strict=True))`: True -> False": "a FaultList's columns always have the same length",
    "ReferenceBackend.quantize @36 `codes = self._levels(t, f32(1), step, cfg)`: 1 -> 2": (
        "the clip of t to [-q, q]: t = 2 (x - min) / (max - min) - 1 lies in [-1, 1] exactly (float32 "
        "rounding is monotonic and x - min rounds like max - min at x = max), so neither bound binds"
    ),
    "ReferenceBackend._derivative @32 `return np.where(x <= 1, 1 / (1 + x * x), r * r / (1 + r * r))`: "
    "x <= 1 -> x < 1": "at x = 1 both branches give exactly 0.5",
    "ReferenceBackend._derivative @37 `return np.where(x <= 1, 1 / (1 + x * x), r * r / (1 + r * r))`: "
    "1 -> 2": (
        "for 1 < x <= 2 both branches compute 1 / (1 + x**2) to within 2 float64 ulps (no overflow or "
        "underflow there), inside the 4-ulp contract in either dtype"
    ),
    "ReferenceBackend.transform_forward @8 `u = np.asarray(u)`: u = np.asarray(u) -> pass": (
        "the protocol passes arrays"
    ),
    "ReferenceBackend.transform_vjp @8 `u = np.asarray(u)`: u = np.asarray(u) -> pass": "the protocol passes arrays",  # noqa: E501
    "ReferenceBackend.conv2d_vjp @34 `dxp = np.zeros((n, c, h + 2 * ph, wid + 2 * pw), dtype=x.dtype)`: 2 -> 3": (  # noqa: E501
        _BUFFER
    ),
    "ReferenceBackend.conv2d_vjp @48 `dxp = np.zeros((n, c, h + 2 * ph, wid + 2 * pw), dtype=x.dtype)`: 2 -> 3": (  # noqa: E501
        _BUFFER
    ),
    "ReferenceBackend.batchnorm2d_forward @12 `n = x.size // x.shape[1]`: x.size // x.shape[1] -> "
    "x.size / x.shape[1]": "the division is exact (n = N H W): the same number as a float",
    "ReferenceBackend.batchnorm2d_vjp @16 `n = x.size // x.shape[1]`: x.size // x.shape[1] -> "
    "x.size / x.shape[1]": "the division is exact (n = N H W): the same number as a float",
    "ReferenceBackend.maxpool2d_vjp @43 `dxp = np.zeros((n, c, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), "
    "dtype=x.dtype)`: 2 -> 3": _BUFFER,
    "ReferenceBackend.maxpool2d_vjp @43 `dxp = np.zeros((n, c, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), "
    "dtype=x.dtype)`: 2 -> 1": _BUFFER + " (a window's maximum is never in the -inf padding, so the far "
    "padding rows are never written)",
    "ReferenceBackend.maxpool2d_vjp @64 `dxp = np.zeros((n, c, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), "
    "dtype=x.dtype)`: 2 -> 3": _BUFFER,
    "ReferenceBackend.maxpool2d_vjp @64 `dxp = np.zeros((n, c, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), "
    "dtype=x.dtype)`: 2 -> 1": _BUFFER + " (a window's maximum is never in the -inf padding, so the far "
    "padding columns are never written)",
    "ReferenceBackend.cross_entropy_forward @70 `picked = np.take_along_axis(logp, labels[:, None], "
    "axis=1)[:, 0]`: 0 -> -1": "column 0 and column -1 of an (N, 1) array are the same column",
    "_Net.backward @12 `return dx`: return dx -> pass": (
        "the gradient with respect to the input images, which the model's result does not include"
    ),
    # MX blocks and group norm (the checks mx_encode[*], mx_decode[*], groupnorm_*)
    "ReferenceBackend.mx_encode @8 `v = np.where(finite, v, 0.0)`: v = np.where(finite, v, 0.0) -> pass": _MX_NAN,  # noqa: E501
    "ReferenceBackend.mx_encode @32 `v = np.where(finite, v, 0.0)`: 0.0 -> 1.0": _MX_NAN,
    "ReferenceBackend.mx_encode @32 `v = np.where(finite, v, 0.0)`: 0.0 -> -1.0": _MX_NAN,
    "ReferenceBackend.mx_encode @53 `shared = np.where(amax > 0, e - 1 - f.emax, -127)`: 127 -> 128": (
        "an all-zero block's exponent: -128 is clipped to -127 on the next line"
    ),
    "ReferenceBackend.mx_encode @39 `shared = np.clip(shared, -127, 127)`: 127 -> 128": (
        "a shared exponent of 128 is already a NaN block (scale 0xFF, elements 0), decided before the clip"
    ),
    "ReferenceBackend.mx_decode @38 `v = np.ldexp(p, np.minimum(s, 254) - 127)`: 254 -> 255": (
        "a block whose scale is 0xFF is NaN whatever its values (the next line)"
    ),
    "ReferenceBackend._group_stats @44 `groups = (x.shape[0], num_groups, x[0].size // num_groups)`: "
    "0 -> -1": "every sample has the same size",
}


@dataclass
class Mutant:
    """One mutation: where, which operator, the source before and after."""

    index: int
    operator: str
    function: str
    line: int
    before: str
    after: str
    col: int = 0
    text: str = ""  # the source line (stripped): with the column, the mutant's identity across edits
    status: str = ""  # killed, timeout, survived, equivalent
    check: str = ""  # the check that killed it
    seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.function} @{self.col} `{self.text}`: {self.before} -> {self.after}"


# -------------------------------------------------------------------------------------------------------
# The mutator
# -------------------------------------------------------------------------------------------------------
def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _sites(tree: ast.Module):
    """Yield ``(node path, operator, function name, apply)`` for every mutation of the backend's code.

    ``apply(node)`` mutates a *copy* of the node in place and returns ``(before, after)`` source text.
    """
    targets = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    targets += [
        n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) and _names(n) == ["SPEC_FORMATS"]
    ]
    for top in targets:
        for func, node in _walk_with_function(
            top, top.name if isinstance(top, ast.ClassDef) else "SPEC_FORMATS"
        ):
            yield from _node_mutations(func, node)


def _is_guard(node: ast.AST) -> bool:
    """``if <test>: raise ...`` (an argument check), which no valid input of the protocol takes."""
    return (
        isinstance(node, ast.If)
        and len(node.body) == 1
        and isinstance(node.body[0], ast.Raise)
        and not node.orelse
    )


def _names(node) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _walk_with_function(node: ast.AST, func: str):
    """Every node under ``node`` with the qualified name of its enclosing function (``Class.method``)."""
    for child in ast.iter_child_nodes(node):
        name = func
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{func.split('.')[0]}.{child.name}"
        if _is_docstring(child) if isinstance(child, ast.stmt) else False:
            continue
        if isinstance(child, (ast.JoinedStr, ast.Raise)) or _is_guard(child):
            continue  # messages and argument checks: the protocol's inputs never reach them
        yield name, child
        yield from _walk_with_function(child, name)


def _node_mutations(func: str, node: ast.AST):
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in ARITH:
        yield func, node, "arith", lambda n: _set(n, "op", ARITH[type(n.op)]())
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE:
                yield func, node, "compare", lambda n, i=i: _set_list(n, "ops", i, COMPARE[type(n.ops[i])]())
    if isinstance(node, ast.Constant) and not isinstance(node.value, str):
        if isinstance(node.value, bool):
            yield func, node, "const", lambda n: _set(n, "value", not n.value)
        elif isinstance(node.value, (int, float)):
            for delta in (1, -1):
                yield func, node, "const", lambda n, d=delta: _set(n, "value", n.value + d)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not, ast.Invert)):
        yield func, node, "negation", "unwrap"
    if isinstance(node, ast.BoolOp):
        yield (
            func,
            node,
            "boolop",
            lambda n: _set(n, "op", ast.Or() if isinstance(n.op, ast.And) else ast.And()),
        )
    if isinstance(node, ast.Attribute) and node.attr in SWAPS:
        op, new = SWAPS[node.attr]
        yield func, node, op, lambda n, new=new: _set(n, "attr", new)
    if isinstance(node, ast.Name) and node.id in ("min", "max"):
        yield func, node, "minmax", lambda n: _set(n, "id", "max" if n.id == "min" else "min")
    for field in ("body", "orelse"):
        stmts = getattr(node, field, None)
        if isinstance(stmts, list) and isinstance(node, (ast.FunctionDef, ast.If, ast.For, ast.With)):
            for i, stmt in enumerate(stmts):
                if not (_is_docstring(stmt) or isinstance(stmt, (ast.Pass, ast.Raise)) or _is_guard(stmt)):
                    yield func, node, "drop", ("drop", field, i)


def _set(node, attr, value):
    setattr(node, attr, value)


def _set_list(node, attr, i, value):
    getattr(node, attr)[i] = value


def generate(source: str) -> list[tuple[Mutant, object]]:
    """Every mutant of ``source``: its record and its compiled module (a code object).

    Each mutation is applied to the one parsed tree, compiled, and undone (no copy of the tree).
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    out = []
    for func, node, operator, how in list(_sites(tree)):
        before = ast.get_source_segment(source, node) or ast.unparse(node)
        line, col = getattr(node, "lineno", 0), getattr(node, "col_offset", 0)
        if how == "unwrap":
            parent, field, index = _parent(tree, node)
            _replace(parent, field, index, node.operand)
            after = ast.unparse(node.operand)
            undo = lambda p=parent, f=field, i=index, n=node: _replace(p, f, i, n)  # noqa: E731
        elif isinstance(how, tuple):
            _, field, i = how
            stmt = getattr(node, field)[i]
            before, line, col = (
                ast.get_source_segment(source, stmt) or ast.unparse(stmt),
                stmt.lineno,
                stmt.col_offset,
            )
            getattr(node, field)[i] = ast.copy_location(ast.Pass(), stmt)
            after = "pass"
            undo = lambda n=node, f=field, i=i, s=stmt: _set_list(n, f, i, s)  # noqa: E731
        else:
            saved = {k: list(v) if isinstance(v, list) else v for k, v in vars(node).items()}
            how(node)
            after = ast.unparse(node)
            undo = lambda n=node, s=saved: n.__dict__.update(s)  # noqa: E731
        try:
            before, after = " ".join(before.split()), " ".join(after.split())
            if before != after:
                ast.fix_missing_locations(tree)
                code = compile(tree, str(SUBJECT), "exec")
                text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
                out.append((Mutant(len(out), operator, func, line, before, after, col, text), code))
        finally:
            undo()
    return out


def _parent(tree: ast.AST, target: ast.AST):
    for n in ast.walk(tree):
        for field, value in ast.iter_fields(n):
            if value is target:
                return n, field, None
            if isinstance(value, list):
                for i, v in enumerate(value):
                    if v is target:
                        return n, field, i
    raise LookupError("parent not found")


def _replace(parent, field, index, new):
    if index is None:
        setattr(parent, field, new)
    else:
        getattr(parent, field)[index] = new


# -------------------------------------------------------------------------------------------------------
# Running the suite on a mutant
# -------------------------------------------------------------------------------------------------------
def _load(code) -> types.ModuleType:
    module = types.ModuleType(MODULE + "_mutant")
    module.__file__ = str(SUBJECT)
    sys.modules[module.__name__] = module
    exec(code, module.__dict__)
    return module


#: the protocol methods the model pass calls (a mutant of one of them can also fail the model checks)
MODEL_METHODS = (
    "conv2d_forward", "conv2d_vjp", "batchnorm2d_forward", "batchnorm2d_vjp", "relu_forward", "relu_vjp",
    "maxpool2d_forward", "maxpool2d_vjp", "global_avgpool_forward", "global_avgpool_vjp", "linear_forward",
    "linear_vjp", "cross_entropy_forward", "cross_entropy_vjp", "model_forward_backward",
)  # fmt: skip
#: helpers -> the protocol methods that call them
HELPERS = {
    "_Layout": ("encode", "decode"), "SPEC_FORMATS": ("encode", "decode"), "_levels": ("quantize",),
    "_quant_round": ("quantize",),
    "_derivative": ("transform_vjp",), "_windows": ("conv2d_forward", "conv2d_vjp", "maxpool2d_forward",
    "maxpool2d_vjp"), "_per_channel": ("batchnorm2d_forward", "batchnorm2d_vjp"),
    "_log_softmax": ("cross_entropy_forward", "cross_entropy_vjp"), "_Net": ("model_forward_backward",),
    "_MXElement": ("mx_encode", "mx_decode"), "MX_SPEC": ("mx_encode", "mx_decode"),
    "_mx_blocks": ("mx_encode", "mx_decode"), "_mx_round": ("mx_encode",),
    "_group_stats": ("groupnorm_forward", "groupnorm_vjp"),
}  # fmt: skip


def reached_by(function: str) -> set[str] | None:
    """The protocol methods whose checks can execute the mutated ``function`` (None: every check).

    A check that never runs the mutated code cannot tell the mutant from the original, so only these
    checks run: the method itself, the methods calling a helper, and the whole-model checks for the
    methods the model pass uses.
    """
    owner, _, method = function.partition(".")
    names = set(HELPERS.get(owner, ())) | set(HELPERS.get(method, ()))
    if owner == "ReferenceBackend" and method not in HELPERS and method not in ("__init__", "unit_roundoff"):
        names.add(method)
    if not names:
        return None
    if names & set(MODEL_METHODS):
        names.add("model_forward_backward")
    return names


def _ordered_checks(function: str):
    """The checks that can execute the mutated function, the cheap ones first."""
    from saf_ref.testing.suite import select_checks

    reached = reached_by(function)
    checks = [c for c in select_checks() if reached is None or set(c.methods) & reached]
    return sorted(checks, key=lambda c: c.cost)


def run_mutant(tree: ast.Module, function: str, examples: int, dtypes, full: bool) -> tuple[str, str]:
    """Run the suite on one mutant (in the current process); ``("killed", check)`` or ``("survived", "")``."""
    import warnings

    from saf_ref.testing.checks import SuiteOptions
    from saf_ref.testing.suite import _hypothesis_home_in_a_temporary_directory, run_check

    warnings.simplefilter("ignore")
    module = _load(tree)
    kw = dict(strict=True, nan_payloads="strict", seed=0)
    options = SuiteOptions(examples=examples, model_examples=max(1, examples // 10) if full else 1, **kw)
    with _hypothesis_home_in_a_temporary_directory():
        for dtype in dtypes:
            try:
                backend = module.ReferenceBackend(dtype=dtype)
            except Exception as err:  # noqa: BLE001 - the mutant broke construction: the suite reports it
                return "killed", f"constructor ({type(err).__name__})"
            for check in _ordered_checks(function):
                r = run_check(check, backend, options)
                if r.status in ("fail", "known divergence") or (r.status == "skip"):
                    return "killed", f"{check.name} [{dtype}]"
    return "survived", ""


def _child(conn, tree, function, examples, dtypes, full):
    # --jobs children run side by side: one BLAS thread each, or they oversubscribe the cores
    from saf_ref.determinism import pin_blas_for_this_process

    pin_blas_for_this_process()
    try:
        conn.send(run_mutant(tree, function, examples, dtypes, full))
    except BaseException as err:  # noqa: BLE001 - anything escaping the suite kills the mutant too
        conn.send(("killed", f"suite raised {type(err).__name__}"))


def run_isolated(tree, function: str, examples: int, dtypes, full: bool, timeout: float) -> tuple[str, str]:
    """:func:`run_mutant` in a forked child with a time limit (``("timeout", "")`` past it)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, tree, function, examples, dtypes, full))
    proc.start()
    child.close()
    if parent.poll(timeout):
        out = parent.recv()
        proc.join()
        return out
    proc.kill()
    proc.join()
    return "timeout", ""


def _warm_up() -> None:
    """Import the suite and build its strategies once in the parent, so that every fork starts warm."""
    from saf_ref.testing import reference_backend  # noqa: F401
    from saf_ref.testing.suite import select_checks

    select_checks()


# -------------------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------------------
def table(mutants: list[Mutant]) -> str:
    generated = len(mutants)
    equivalent = sum(m.status == "equivalent" for m in mutants)
    killed = sum(m.status in ("killed", "timeout") for m in mutants)
    timeouts = sum(m.status == "timeout" for m in mutants)
    survivors = [m for m in mutants if m.status == "survived"]
    score = killed / max(generated - equivalent, 1)
    lines = [
        "| mutants generated | equivalent | killed | survivors | score (killed / non-equivalent) |",
        "|---|---|---|---|---|",
        f"| {generated} | {equivalent} | {killed}"
        + (f" ({timeouts} by timeout)" if timeouts else "")
        + f" | {len(survivors)} | {100 * score:.1f}% |",
    ]
    by_op: dict[str, list[int]] = {}
    for m in mutants:
        row = by_op.setdefault(m.operator, [0, 0, 0, 0])
        row[0] += 1
        row[1] += m.status == "equivalent"
        row[2] += m.status in ("killed", "timeout")
        row[3] += m.status == "survived"
    lines += ["", "| operator | generated | equivalent | killed | survivors |", "|---|---|---|---|---|"]
    lines += [f"| {op} | {a} | {b} | {c} | {d} |" for op, (a, b, c, d) in sorted(by_op.items())]
    if survivors:
        lines += ["", "Survivors:"]
        lines += [
            f"- line {m.line}, `{m.function}`: `{m.before}` -> `{m.after}` ({m.operator})" for m in survivors
        ]
    eq = [m for m in mutants if m.status == "equivalent"]
    if eq:
        lines += ["", "Equivalent (excluded from the score):"]
        lines += [
            f"- line {m.line}, `{m.function}`: `{m.before}` -> `{m.after}`: {EQUIVALENT[m.key]}" for m in eq
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=3, help="generated examples per check (default 3)")
    parser.add_argument(
        "--confirm-examples",
        type=int,
        default=30,
        help="examples per check of the survivors' rerun (default 30)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant (default 120)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--only", action="append", metavar="PATTERN", help="mutants of functions matching")
    parser.add_argument("--limit", type=int, default=None, help="run the first N mutants only")
    parser.add_argument(
        "--index", type=int, action="append", help="run the mutant of this index (repeatable)"
    )
    parser.add_argument("--no-confirm", action="store_true", help="skip the full-suite rerun of survivors")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--json", metavar="PATH", help="write every mutant and its outcome")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each outcome")
    args = parser.parse_args(argv)
    source = SUBJECT.read_text()
    pairs = generate(source)
    if args.only:
        pairs = [(m, t) for m, t in pairs if _selected(m.function, args.only)]
    if args.limit:
        pairs = pairs[: args.limit]
    if args.index:
        pairs = [(m, t) for m, t in pairs if m.index in set(args.index)]
    if args.list:
        for m, _ in pairs:
            print(f"{m.index:4d} line {m.line:4d} {m.operator:<9} {m.function:<40} {m.before} -> {m.after}")
        return 0
    _warm_up()
    start = time.perf_counter()
    todo = []
    for m, tree in pairs:
        if m.key in EQUIVALENT:
            m.status = "equivalent"
        else:
            todo.append((m, tree))
    _run_all(todo, args, quick=True)
    survivors = [(m, t) for m, t in todo if m.status == "survived"]
    if survivors and not args.no_confirm:
        _run_all(survivors, args, quick=False)
    mutants = [m for m, _ in pairs]
    print(table(mutants))
    print(f"{len(mutants)} mutants in {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(m) for m in mutants], indent=1) + "\n")
    return 0


def _selected(function: str, patterns) -> bool:
    return any(fnmatch.fnmatch(function, p) or fnmatch.fnmatch(function.split(".")[-1], p) for p in patterns)


def _run_all(todo, args, *, quick: bool) -> None:
    dtypes = ("float32",) if quick else ("float32", "float64")
    running: list = []
    queue = list(todo)
    # simple pool of forked children, at most args.jobs at once
    while queue or running:
        while queue and len(running) < max(1, args.jobs):
            m, tree = queue.pop(0)
            t0 = time.perf_counter()
            n = args.examples if quick else args.confirm_examples
            if args.jobs <= 1:
                m.status, m.check = run_isolated(tree, m.function, n, dtypes, not quick, args.timeout)
                m.seconds = time.perf_counter() - t0
                _settle(m, quick)
                _say(m, args, quick)
                continue
            ctx = mp.get_context("fork")
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(child, tree, m.function, n, dtypes, not quick))
            proc.start()
            child.close()
            running.append((m, proc, parent, t0))
        for item in list(running):
            m, proc, parent, t0 = item
            if parent.poll(0.05):
                m.status, m.check = parent.recv()
                proc.join()
            elif time.perf_counter() - t0 > args.timeout:
                proc.kill()
                proc.join()
                m.status, m.check = "timeout", ""
            else:
                continue
            m.seconds = time.perf_counter() - t0
            running.remove(item)
            _settle(m, quick)
            _say(m, args, quick)


def _settle(m: Mutant, quick: bool) -> None:
    """A survivor whose full-suite rerun times out is not a kill: it stays a survivor (unconfirmed)."""
    if not quick and m.status == "timeout":
        m.status, m.check = "survived", "full-suite rerun timed out"


def _say(m: Mutant, args, quick: bool) -> None:
    if args.verbose or (m.status == "survived" and not quick):
        stage = "" if quick else " (full suite)"
        print(
            f"[{m.index}] {m.status}{stage} {m.seconds:.1f}s {m.key} {m.check}", file=sys.stderr, flush=True
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
