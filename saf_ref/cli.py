"""The ``saf-ref`` command line (also ``python -m saf_ref``).

Subcommands
-----------
``bits VALUE... --format NAME``
    Show how values are stored: the bit pattern with its fields marked, and a table of what each
    single-bit flip turns the value into (value, relative change, class).
``formats``
    List the number formats with their bit layout and range.
``demo``
    The main job: train plain, SAF and robust-quantization models on shipped data, sweep bit-error
    rates, print a table and write results.json, results.csv and results.png.
``attack``
    Adversarial bit flips against the demo's models, budget by budget, with random flips as the
    baseline (:mod:`saf_ref.experiments.attack_sweep`).
``chips``
    The demo's models on persistent low-voltage chip faults: accuracy against supply voltage over
    chips and placements, and the energy saved at 1 % / 2 % accuracy loss
    (:mod:`saf_ref.experiments.chips`).
``seeds``
    The saturated-weight-transform claim at its own operating point on a ResNet-20, every model on the
    same fault patterns (:mod:`saf_ref.experiments.seeds`).
``check BACKEND``
    Run the oracle kit's conformance suite on a backend (``numpy``, ``torch``, ``module:Name`` or
    ``file.py:Name``) and print a report; see :mod:`saf_ref.testing`.

Each subcommand is a small function ``_cmd_<name>(args) -> int``, or, for ``attack``, ``chips``,
``seeds`` and ``check``, the ``run_from_args(args) -> int`` of the module that also declares its options
(:func:`_add_module_command`), so that tests can call :func:`main` with an argument list and read stdout.

Exit status: 0 success; 1 ``check`` found a failing check; 2 a bad option or a failure the user can fix
(a missing or unwritable file, a refused CIFAR pickle, a backend that does not import), reported as one
line ``saf-ref COMMAND: error: ...`` on stderr, never a traceback; 130 interrupted (Ctrl-C), with a line
saying what was kept.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import re
import sys
from collections.abc import Sequence

from saf_ref import __version__

# -------------------------------------------------------------------------------------------- bits


def _format_from_args(args: argparse.Namespace):
    """The format (or quantizer) the ``bits`` subcommand shows, built from the parsed options."""
    from saf_ref.bits import Quantizer, get_format

    if args.quantizer is None:
        return get_format(args.format)
    return Quantizer(
        args.quantizer,
        scheme=args.scheme,
        code=args.code,
        rounding=args.rounding,
        clip=args.clip,
        max_abs=args.max_abs,
        margin=args.margin,
    )


def _bit_string(code: int, fields) -> tuple[str, str]:
    """The word's bits MSB first, grouped by field, and a line of field letters under them."""
    bits_line, names_line = [], []
    for field in fields.values():  # fields are listed most significant first
        value = (code >> field.lsb) & ((1 << field.width) - 1)
        bits_line.append(format(value, f"0{field.width}b"))
        names_line.append(field.name[0] * field.width)
    return " ".join(bits_line), " ".join(names_line)


def _show_value(x: float, args: argparse.Namespace, out) -> None:
    from saf_ref.bits.teaching import flip_table

    fmt = _format_from_args(args)
    table = flip_table(x, fmt)
    bits_line, names_line = _bit_string(table.code, table.fields)
    width = max(len(bits_line), 8)
    print(f"{x!r} stored as {table.format_name} ({table.nbits} bits): {table.value!r}", file=out)
    print(f"  code   0x{table.code:0{(table.nbits + 3) // 4}X}", file=out)
    msb = table.nbits - 1
    print(f"  bits   {bits_line:>{width}}   (bit {msb} on the left, bit 0 on the right)", file=out)
    print(f"  field  {names_line:>{width}}   ({', '.join(table.fields)})", file=out)
    print("", file=out)
    header = f"  {'bit':>3}  {'field':<9} {'code':>8}  {'value after flip':>24}  {'rel. change':>12}  class"
    print(header, file=out)
    print("  " + "-" * (len(header) - 2), file=out)
    for row in table.rows:
        rel = "" if row.relative_change is None else f"{row.relative_change:12.4g}"
        print(
            f"  {row.bit:>3}  {row.field:<9} 0x{row.code:0{(table.nbits + 3) // 4}X}".ljust(26)
            + f"  {row.value!r:>24}  {rel:>12}  {row.value_class}",
            file=out,
        )
    print("", file=out)


def _cmd_bits(args: argparse.Namespace) -> int:
    values = []
    for text in args.values:  # every value checked before anything is printed
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(f"VALUE must be a decimal number such as 0.1 or -3e-5, got {text!r}") from None
    _format_from_args(args)  # a bad --format or quantizer option fails here, before any output
    for x in values:
        _show_value(x, args, sys.stdout)
    return 0


def _cmd_formats(args: argparse.Namespace) -> int:
    from saf_ref.bits import IEEE_FORMATS, get_format

    print(f"{'name':<15} {'bits':>4}  {'layout (MSB first)':<32} {'max finite':>14}  {'min subnormal':>14}")
    for name in (*IEEE_FORMATS, "q2.5"):
        fmt = get_format(name)
        layout = " | ".join(f"{f.name} {f.width}" for f in fmt.fields.values())
        hi = getattr(fmt, "max_finite", None) or fmt.max_value
        lo = getattr(fmt, "min_subnormal", None) or fmt.step
        print(f"{fmt.name:<15} {fmt.nbits:>4}  {layout:<32} {hi:>14.6g}  {lo:>14.6g}")
    print("\nAny two's complement fixed-point format qM.N works too (1 sign, M integer, N fraction bits).")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from saf_ref.experiments.demo import check_out, config_from_args, run_demo

    cfg = config_from_args(args)  # every option checked before any work
    check_out(args.out, args.force, "saf-ref demo", "--out", "--force")
    result = run_demo(cfg, args.out, force=args.force)
    if result.interrupted:
        done, total = len({(r["subject"], r["trial"]) for r in result.trials}), len(result.clean) * cfg.trials
        print(
            f"saf-ref demo: interrupted: {done} of {total} (model, trial) units completed; "
            f"partial results in {os.path.join(args.out, 'results.json')} and run.json",
            file=sys.stderr,
        )
        return 130
    return 0


# ------------------------------------------------------------------------------------------ parser


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_module_command(sub, name: str, module: str, **parser_options) -> None:
    """Add subcommand ``name`` whose options and work live in ``module``: its ``add_arguments(parser)``
    declares the options and its ``run_from_args(args) -> int`` runs the command."""
    mod = importlib.import_module(module)
    parser = sub.add_parser(name, **parser_options)
    mod.add_arguments(parser)
    parser.set_defaults(func=mod.run_from_args)


def _cmd_check(args: argparse.Namespace) -> int:
    """``saf-ref check``: the runner's command; with ``--coverage`` also the boundary classes that ran
    (read back from the JSON report, written to a temporary file unless ``--json`` names one)."""
    from saf_ref.testing import runner

    if not args.coverage or args.list:
        return runner.run_from_args(args)
    import json
    import tempfile

    from saf_ref.testing.suite import coverage_text

    with tempfile.TemporaryDirectory(prefix="saf_ref_check_") as tmp:
        path = args.json or os.path.join(tmp, "report.json")
        status = runner.run_from_args(argparse.Namespace(**{**vars(args), "json": path}))
        with open(path, encoding="utf-8") as f:
            print(coverage_text(json.load(f)))
    return status


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="saf-ref",
        description=(
            "saf_ref: a pure-NumPy, deterministic reference implementation of fault-tolerant neural "
            "networks (bit-exact formats, fault models, NumPy ResNets, saturated weight transforms)."
        ),
        epilog="Run 'saf-ref COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"saf_ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bits = sub.add_parser(
        "bits",
        help="show a value's stored bits and what every single-bit flip does to it",
        description=(
            "Encode each VALUE in a number format, print its bit pattern with the fields marked "
            "(bit 0 = least significant bit), and a table of what flipping each bit turns it into."
        ),
        epilog="examples:  saf-ref bits 0.1 --format float16\n"
        "           saf-ref bits 1.5 --format q2.5\n"
        "           saf-ref bits 0.03 --quantizer 8 --scheme symmetric --max-abs 0.1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bits.add_argument("values", nargs="+", metavar="VALUE", help="decimal value(s), e.g. 0.1 or -3e-5")
    # argparse reads "-3e-5" as an option unless it looks like a negative number to this parser; its default
    # pattern knows only -2 and -0.5, so teach it exponents, inf and nan (as float() writes them).
    bits._negative_number_matcher = _NEGATIVE_NUMBER
    bits.add_argument(
        "--format",
        default="float32",
        help="float64, float32, float16, bfloat16, float8_e4m3fn, float8_e5m2 or qM.N (default: float32)",
    )
    quant = bits.add_argument_group("per-tensor quantizer (instead of --format)")
    quant.add_argument("--quantizer", type=int, metavar="NBITS", help="use a quantizer with NBITS bits")
    quant.add_argument("--scheme", default="symmetric", choices=("symmetric", "asymmetric"))
    quant.add_argument("--code", default="offset_binary", choices=("offset_binary", "twos_complement"))
    quant.add_argument("--rounding", default="nearest_even", choices=("nearest_even", "toward_zero"))
    quant.add_argument("--max-abs", type=float, default=None, help="fixed range bound q (symmetric)")
    quant.add_argument("--clip", type=float, default=None, help="clip weights to [-clip, clip]")
    quant.add_argument("--margin", type=float, default=0.0, help="range margin (reference code: 1e-3)")
    bits.set_defaults(func=_cmd_bits)

    formats = sub.add_parser("formats", help="list the number formats and their bit layouts")
    formats.set_defaults(func=_cmd_formats)

    from saf_ref.experiments.demo import add_model_arguments

    demo = sub.add_parser(
        "demo",
        help="the main job: train plain, SAF and robust-quantized models, sweep bit-error rates, report",
        description=(
            "Train a baseline, SAF models (tanh, arctan) and 8-bit robust-quantization models (plain, "
            "weight clipping, RandBET) on shipped data; store the float models in float32, float16 and "
            "q2.5 and the quantized ones in 8 bits; inject random bit errors at rates from 1e-7 upwards "
            "(nested patterns, several trials); print a table and write results.json, results.csv and "
            "results.png to --out. Needs no network."
        ),
        epilog="Every option is checked before training. Completed trials are journaled to "
        "--out/trials.jsonl as they finish, so a failure or Ctrl-C loses none. Exit status: 0 done, "
        "2 bad option or unusable file (one line on stderr), 130 interrupted (partial results written "
        "to --out).",
    )
    demo.add_argument(
        "--out",
        default="demo_results",
        help="output directory; must not hold results (default: demo_results)",
    )
    demo.add_argument("--force", action="store_true", help="overwrite the results already in --out")
    demo.add_argument(
        "--quick", action="store_true", help="a one-minute version (fewer epochs, trials, rates)"
    )
    add_model_arguments(demo)
    demo.add_argument("--epochs", type=int, help="training epochs per model, >= 1 (default: 12; --quick: 6)")
    demo.add_argument(
        "--trials", type=int, help="fault patterns per bit-error rate, >= 1 (default: 20; --quick: 4)"
    )
    demo.add_argument(
        "--rates", type=float, nargs="+", metavar="P", help="distinct bit-error rates in [0, 1] to sweep"
    )
    demo.add_argument(
        "--eval-limit", type=int, metavar="N", help="evaluate on the first N >= 1 test images only"
    )
    demo.add_argument(
        "--quant-setting",
        help="the 8-bit models' setting: reference (group norm with scale 1 + weight, every tensor "
        "clipped, quantized and exposed, as Stutz et al.'s code; the default) or weights (batch norm, only "
        "conv/linear weights clipped, as before)",
    )
    demo.add_argument(
        "--curriculum-loss",
        metavar="TAU",
        help="RandBET's per-batch curriculum threshold (Stutz et al.): bit errors on for the next step when "
        "the clean loss is below 1.15 TAU and the mean of clean and perturbed losses at most TAU; 'none': "
        "errors on every step (default: 0.3)",
    )
    demo.add_argument("--seed", type=int, help="seed of training and of the campaign (default: 0)")
    demo.add_argument("--workers", type=int, help="worker processes for the sweep (default: all cores)")
    demo.add_argument("--checkpoints", help="directory to save trained models to, and load them from")
    demo.add_argument("--quiet", action="store_true", help="no progress output (the table still prints)")
    demo.set_defaults(func=_cmd_demo)

    _add_module_command(
        sub,
        "attack",
        "saf_ref.experiments.attack_sweep",
        help="chosen bit flips (progressive bit search) against the demo's models, random flips as baseline",
        description=(
            "Train (or load with --checkpoints) the demo's models, attack each with the progressive bit "
            "search on a batch of training images, replay every budget's flips on the test split, and "
            "compare with random flips at the same budgets; print a table and write results.json, "
            "results.csv, run.json and results.png to --out. Needs no network."
        ),
        epilog="Every option is checked before training. Exit status: 0 done, 2 bad option or unusable "
        "file (one line on stderr), 130 interrupted (the models attacked so far are written to --out).",
    )

    _add_module_command(
        sub,
        "chips",
        "saf_ref.experiments.chips",
        help="the demo's models on persistent low-voltage chip faults: accuracy and energy against voltage",
        description=(
            "Train (or load with --checkpoints, shared with saf-ref demo) 8- and 4-bit robust-quantization, "
            "clipping and RandBET models and a SAF model; sample chips (persistent stuck-at cells failing "
            "below their own voltage) and placements of the weights in memory; sweep the supply voltage; "
            "report accuracy against voltage and the energy saved at <= 1% and <= 2% accuracy loss. Writes "
            "results.json, results.csv, savings.csv and two plots to --out. Needs no network."
        ),
        epilog="Every option is checked before training. Exit status: 0 done, 2 bad option or unusable "
        "file (one line on stderr), 130 interrupted (finished units written to --out).",
    )

    _add_module_command(
        sub,
        "seeds",
        "saf_ref.experiments.seeds",
        help="the SAF claim at its operating point on a ResNet-20, on fault patterns shared by every model",
        description=(
            "Train (or load with --checkpoints) a plain ResNet-20 and SAF models (tanh, arctan) on the "
            "shipped MNIST subset, convert the plain one to SAF with a few epochs of fine-tuning, store "
            "them in float32, float16 and q2.5 with only the weights or every parameter exposed, and "
            "evaluate all of them on the same fault patterns; print the table and the claim check (at a "
            "rate where the float32 baseline is at chance, how far each SAF model is from its clean "
            "accuracy) and write results.json, paired.json, claim.txt and run.json to --out. Needs no "
            "network."
        ),
        epilog="Every option is checked before training. Exit status: 0 done, 2 bad option or unusable "
        "file (one line on stderr), 130 interrupted (completed patterns written to --out).",
    )

    _add_module_command(
        sub,
        "format-faults",
        "saf_ref.experiments.formats",
        help="one model in float16, bfloat16, FP8, MXFP8/6/4, INT8: weight and activation faults, SDC rates",
        description=(
            "Train (or load with --checkpoints, shared with saf-ref demo) the demo's baseline and SAF (tanh) "
            "models; store each in every weight format and flip random bits at the same rates; flip random "
            "bits of the baseline's activations, layer by layer, in every activation format; classify every "
            "example against the golden run (masked, SDC, detected). Prints two tables and writes "
            "results.json, run.json, weights.csv, activations.csv and vulnerability.png to --out. Needs no "
            "network."
        ),
        epilog="Every option is checked before training. Exit status: 0 done, 2 bad option or unusable "
        "file (one line on stderr), 130 interrupted (partial results written to --out).",
    )

    _add_module_command(
        sub,
        "check",
        "saf_ref.testing.runner",
        help="check a backend (numpy, torch, module:Name, file.py:Name) against saf_ref: the oracle kit",
        description=(
            "Run the conformance suite of saf_ref.testing on BACKEND: codecs, fault injection, quantizer, "
            "transforms, layers and their gradients, SGD and whole ResNets, each against its tolerance "
            "contract. Prints a report; exit status 1 if a check fails."
        ),
        epilog="examples:  saf-ref check torch --dtype float64\n"
        "           saf-ref check torch --device cuda --e4m3-overflow saturate --json report.json\n"
        "           saf-ref check examples/my_backend/backend.py:MyBackend",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check = sub.choices["check"]
    check.add_argument(
        "--coverage", action="store_true", help="also print which boundary classes of each check ran"
    )
    check.set_defaults(func=_cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except (TypeError, ValueError, OSError, pickle.UnpicklingError) as err:  # one clear line, no traceback
        print(f"saf-ref {args.command}: error: {_message(err, args.command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: the conventional 128 + SIGINT, and what was kept
        note = f": {_message(err, args.command)}" if str(err) else ""
        print(f"saf-ref {args.command}: interrupted{note}", file=sys.stderr)
        return 130


def _message(err: BaseException, command: str) -> str:
    """The error's text on one line, without a repeat of ``saf-ref COMMAND:`` (option checks carry it)."""
    return " ".join(str(err).split()).removeprefix(f"saf-ref {command}: ")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
