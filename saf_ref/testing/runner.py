"""``saf-ref check BACKEND``: load a backend by name, run the conformance suite, print and save the report.

BACKEND is one of

- ``numpy`` - saf_ref itself (:class:`~saf_ref.testing.numpy_backend.NumpyBackend`);
- ``torch`` - PyTorch (:class:`~saf_ref.testing.torch_backend.TorchBackend`; ``--device cuda`` for a GPU);
- ``jax`` - JAX (:class:`~saf_ref.testing.jax_backend.JaxBackend`; XLA on the CPU by default);
- ``package.module:Name`` - an importable class, factory or instance;
- ``path/to/file.py:Name`` - the same, from a file (nothing needs installing).

A class or factory is called with the keyword arguments it accepts among ``device`` and ``dtype``
(``--device``, ``--dtype``); asking for a device or dtype it does not accept is an error. The backend's
declared dtype is then verified: it must be float32 or float64, the one asked for (a constructor that
ignores ``dtype`` would otherwise run a float64 request in float32), and the dtype its network ops return
(one ``relu_forward`` call, or ``linear_forward`` / ``global_avgpool_forward``, on three values). The exit
status is 0 when every check passes (known divergences included, unless ``--strict``), 1 when one fails, 2 for
a usage error: an unknown backend, a backend module or file that raises on import, a name it does not
define, a constructor that raises (a missing ``torch`` or ``jax`` included), a declared dtype that fails the
verification above, each reported in one line.
``--json PATH`` writes the report as JSON (schema ``saf_ref.check_report``, version 1).

This module imports nothing heavy at import time, so that ``saf-ref --help`` stays fast; the suite (and
hypothesis) are imported when a check runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any

import numpy as np

__all__ = ["add_arguments", "load_backend", "main", "run_from_args", "verify_dtype"]

_BUILTIN = ("numpy", "torch", "jax")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``saf-ref check`` (used by :mod:`saf_ref.cli` and by :func:`main`)."""
    parser.add_argument(
        "backend",
        metavar="BACKEND",
        help="numpy, torch, jax, package.module:Name or path/to/file.py:Name (a class, factory or instance)",
    )
    parser.add_argument(
        "--device", default=None, help="device passed to the backend (e.g. cpu, cuda, cuda:1)"
    )
    parser.add_argument(
        "--dtype", default=None, choices=("float32", "float64"), help="dtype of the network ops"
    )
    parser.add_argument("--examples", type=int, default=30, help="generated examples per check (default: 30)")
    parser.add_argument(
        "--model-examples",
        type=int,
        default=None,
        help="examples of the whole-model checks (default: examples/10)",
    )
    seed = parser.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=0, help="seed of the example generation (default: 0)")
    seed.add_argument(
        "--derandomize", action="store_true", help="hypothesis' derandomized mode instead of a seed"
    )
    parser.add_argument(
        "--only", action="append", metavar="PATTERN", help="run checks matching PATTERN (fnmatch)"
    )
    parser.add_argument("--skip", action="append", metavar="PATTERN", help="skip checks matching PATTERN")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument(
        "--e4m3-overflow",
        choices=("ieee", "saturate"),
        default="ieee",
        help="float8_e4m3fn overflow policy checked: NaN (ieee, default) or +-448 (saturate, PyTorch)",
    )
    parser.add_argument(
        "--narrowing",
        choices=("direct", "via-float32"),
        default="direct",
        help="float64 -> float16/bfloat16/float8 reference: one rounding (default) or through float32",
    )
    parser.add_argument(
        "--nan-payloads",
        choices=("report", "strict"),
        default="report",
        help="NaN bits that differ: a known divergence (default) or a failure",
    )
    parser.add_argument(
        "--rel-factor", type=float, default=32.0, help="factor of the relative tier (default: 32)"
    )
    parser.add_argument("--strict", action="store_true", help="known divergences count as failures")
    parser.add_argument(
        "--no-boundary-examples",
        action="store_true",
        help="generated examples only (no explicit boundary cases)",
    )
    parser.add_argument(
        "--shrink", action="store_true", help="shrink a failing example to a minimal one (slower)"
    )
    parser.add_argument("--artifacts", metavar="DIR", help="folder for files saved on failure (FaultLists)")
    parser.add_argument(
        "--tf32", choices=("auto", "on", "off"), default="auto", help="torch backend on CUDA: TF32"
    )
    parser.add_argument("--deterministic", action="store_true", help="torch backend: deterministic cuDNN")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (the suite's tensors are tiny: 1 is fastest)",
    )
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress dots")


def _import_object(spec: str) -> Any:
    """The object named by ``module:attr`` or ``path/file.py:attr``."""
    fn = "load_backend"
    if ":" not in spec:
        raise ValueError(
            f"{fn}: BACKEND must be 'numpy', 'torch', 'jax', 'package.module:Name' or "
            f"'path/to/file.py:Name', got {spec!r}"
        )
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py") or os.sep in target or "/" in target:
        if not os.path.isfile(target):
            raise ValueError(f"{fn}: no such file {target!r} (from BACKEND {spec!r})")
        name = "saf_ref_check_" + os.path.splitext(os.path.basename(target))[0]
        module_spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules[name] = module  # dataclasses and pickling-free introspection need the module registered
        try:
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as err:  # the user's file failed (SyntaxError, a missing package, ...): one line
            del sys.modules[name]
            raise ValueError(_cannot_import(fn, target, spec, err)) from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as err:
            raise ValueError(_cannot_import(fn, target, spec, err)) from None
    if not hasattr(module, attr):
        raise ValueError(f"{fn}: module {target!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _cannot_import(fn: str, target: str, spec: str, err: BaseException) -> str:
    """The one-line error for a backend module that raised on import."""
    return f"{fn}: cannot import {target!r} (from BACKEND {spec!r}): {type(err).__name__}: {err}"


def load_backend(
    spec: str, *, device: str | None = None, dtype: str | None = None, **torch_options: Any
) -> Any:
    """Build the backend named by ``spec`` (see the module docstring).

    Parameters
    ----------
    spec : str
        ``"numpy"``, ``"torch"``, ``"module:Name"`` or ``"file.py:Name"``.
    device, dtype : str or None
        Passed on when given (``None``: the backend's default).
    **torch_options
        ``tf32``, ``deterministic`` for the torch backend.
    """
    fn = "load_backend"
    if not isinstance(spec, str):
        raise TypeError(f"{fn}: spec must be a str, got {type(spec).__name__}")
    try:
        backend = _build_backend(spec, device, dtype, torch_options)
    except (TypeError, ValueError) as err:
        if str(err).startswith(f"{fn}:"):
            raise
        raise type(err)(f"{fn}: cannot build the backend {spec!r}: {err}") from None
    except Exception as err:  # ImportError (no torch, no jax), a constructor's own error: one line
        raise ValueError(f"{fn}: cannot build the backend {spec!r}: {type(err).__name__}: {err}") from None
    verify_dtype(backend, spec, dtype)
    return backend


#: cheap network ops that reveal the dtype a backend computes in: (method, arguments for a dtype)
_DTYPE_PROBES = (
    ("relu_forward", lambda d: (np.array([-1.5, 0.0, 2.0], dtype=d),)),
    ("linear_forward", lambda d: (np.ones((1, 3), dtype=d), np.ones((2, 3), dtype=d), None)),
    ("global_avgpool_forward", lambda d: (np.ones((1, 3, 1, 1), dtype=d),)),
)


def verify_dtype(backend: Any, spec: str, dtype: str | None = None) -> None:
    """Check a backend's declared dtype before the suite runs (one line naming what is wrong).

    Parameters
    ----------
    backend : object
        A built backend.
    spec : str
        How it was named (for the message).
    dtype : str or None
        The dtype asked for (``--dtype``), if any.

    Raises
    ------
    TypeError
        The declared dtype (``backend.dtype``) is not float32 or float64, or a network op returns another
        floating dtype than the declared one (``relu_forward``, else ``linear_forward`` or
        ``global_avgpool_forward``, called once on three values).
    ValueError
        The declared dtype is not the one asked for, or the unit roundoff is out of range.

    Notes
    -----
    A probe that raises, is missing or returns something that is not a float array is left to the suite,
    whose check of that method reports it.
    """
    from saf_ref.testing.protocol import describe_backend, has_method

    fn = "load_backend"
    try:
        info = describe_backend(backend)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{fn}: backend {spec!r}: {err}") from None
    declared = info.dtype.name
    if dtype is not None and declared != dtype:
        raise ValueError(
            f"{fn}: backend {spec!r} must declare the dtype it was asked for (--dtype {dtype}), got "
            f"backend.dtype = {declared!r} (does its constructor set dtype?)"
        )
    for method, args in _DTYPE_PROBES:
        if not has_method(backend, method):
            continue
        try:
            with np.errstate(all="ignore"):
                out = getattr(backend, method)(*args(info.dtype))
        except Exception:  # noqa: BLE001 - the suite's check of this method reports the error
            return
        got = getattr(out, "dtype", None)
        if isinstance(out, (np.ndarray, np.generic)) and got.kind == "f" and got != info.dtype:
            raise TypeError(
                f"{fn}: backend {spec!r} declares dtype {declared} but its {method} returned {got.name} "
                f"for {declared} inputs"
            )
        return


def _build_backend(spec: str, device: str | None, dtype: str | None, torch_options: dict) -> Any:
    """The body of :func:`load_backend` (its errors are worded there)."""
    fn = "load_backend"
    kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    if spec == "numpy":
        from saf_ref.testing.numpy_backend import NumpyBackend

        return NumpyBackend(**kwargs)
    if spec == "torch":
        from saf_ref.testing.torch_backend import TorchBackend

        return TorchBackend(**kwargs, **torch_options)
    if spec == "jax":
        from saf_ref.testing.jax_backend import JaxBackend

        return JaxBackend(**kwargs)
    obj = _import_object(spec)
    if not callable(obj):
        if kwargs:
            raise ValueError(f"{fn}: {spec!r} is an instance; it cannot take {sorted(kwargs)}")
        return obj
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # builtins without a signature: call without arguments
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    rejected = sorted(k for k in kwargs if k not in params and not takes_any)
    if rejected:
        raise ValueError(f"{fn}: {spec!r} does not accept {rejected} (its parameters: {list(params)})")
    names = [k for k in ("tf32", "deterministic") if k in params or takes_any]
    extra = {k: torch_options[k] for k in names if k in torch_options}
    return obj(**kwargs, **extra)


def _options(args: argparse.Namespace):
    """The suite options of the command line, checked; an error names the option as typed."""
    from saf_ref.testing.checks import SuiteOptions

    try:
        return SuiteOptions(
            examples=args.examples,
            model_examples=args.model_examples,
            seed=None if args.derandomize else args.seed,
            boundary_examples=not args.no_boundary_examples,
            shrink=args.shrink,
            e4m3_overflow=args.e4m3_overflow,
            narrowing=args.narrowing,
            nan_payloads=args.nan_payloads,
            rel_factor=args.rel_factor,
            strict=args.strict,
            artifacts=args.artifacts,
        )
    except (TypeError, ValueError) as err:
        # SuiteOptions reports its field ("SuiteOptions: rel_factor must be ..."); the user typed a flag.
        field, _, rest = str(err).removeprefix("SuiteOptions: ").partition(" ")
        raise type(err)(f"--{field.replace('_', '-')} {rest}") from None


def _check_json_path(path: str | None) -> None:
    """Refuse a ``--json`` path that cannot be written, before the suite runs."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise OSError(f"--json must be a writable file path in an existing folder, got {path!r}")


def _list_checks(args: argparse.Namespace) -> int:
    from saf_ref.testing.suite import select_checks

    for c in select_checks(args.only, args.skip):
        print(f"{c.name:<30} {c.contract:<9} {', '.join(c.methods):<24} {c.doc}")
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``saf-ref check`` with parsed arguments; return the exit status (0 ok, 1 a check failed)."""
    if args.list:
        return _list_checks(args)
    try:
        from saf_ref.testing.suite import run_suite
    except ImportError as err:  # hypothesis missing
        raise ValueError(
            f"the conformance suite needs hypothesis: pip install 'saf_ref[test]' ({err})"
        ) from None
    tf32 = {"auto": None, "on": True, "off": False}[args.tf32]
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    options = _options(args)  # every option checked before the backend is loaded or anything runs
    _check_json_path(args.json)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    backend = load_backend(
        args.backend, device=args.device, dtype=args.dtype, tf32=tf32, deterministic=args.deterministic
    )

    def progress(result) -> None:
        if not args.quiet:
            mark = {"pass": ".", "known divergence": "d", "fail": "F", "skip": "s"}[result.status]
            print(mark, end="", file=sys.stderr, flush=True)

    report = run_suite(backend, options, only=args.only, skip=args.skip, spec=args.backend, progress=progress)
    if not args.quiet:
        print(file=sys.stderr)
    print(report.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(report.to_json())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m saf_ref.testing.runner BACKEND ...`` (same as ``saf-ref check``)."""
    parser = argparse.ArgumentParser(prog="saf-ref check", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except (TypeError, ValueError, OSError) as err:  # --json unwritable, a bad BACKEND, ...: one line
        print(f"saf-ref check: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
