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
``check BACKEND``
    Run the oracle kit's conformance suite on a backend (``numpy``, ``torch``, ``module:Name`` or
    ``file.py:Name``) and print a report; see :mod:`saf_ref.testing`.

Each subcommand is a small function ``_cmd_<name>(args) -> int`` so that tests can call :func:`main`
with an argument list and read stdout.
"""

from __future__ import annotations

import argparse
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
    for text in args.values:
        try:
            x = float(text)
        except ValueError:
            raise ValueError(f"VALUE must be a decimal number such as 0.1 or -3e-5, got {text!r}") from None
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
    from saf_ref.experiments.demo import config_from_args, run_demo

    run_demo(config_from_args(args), args.out)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from saf_ref.testing.runner import run_from_args

    return run_from_args(args)


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    )
    demo.add_argument("--out", default="demo_results", help="output directory (default: demo_results)")
    demo.add_argument(
        "--quick", action="store_true", help="a one-minute version (fewer epochs, trials, rates)"
    )
    demo.add_argument("--dataset", choices=("digits", "mnist5k", "cifar10"), help="default: digits")
    demo.add_argument("--data-path", help="CIFAR-10 archive or folder (for --dataset cifar10)")
    demo.add_argument("--model", help="small_cnn (default), resnet20, resnet18_cifar, resnet18")
    demo.add_argument("--width", type=int, help="channels of the first stage (default: 8)")
    demo.add_argument("--epochs", type=int, help="training epochs per model")
    demo.add_argument("--trials", type=int, help="fault patterns per bit-error rate")
    demo.add_argument("--rates", type=float, nargs="+", metavar="P", help="bit-error rates to sweep")
    demo.add_argument("--eval-limit", type=int, help="evaluate on the first N test images only")
    demo.add_argument("--seed", type=int, help="seed of training and of the campaign (default: 0)")
    demo.add_argument("--workers", type=int, help="worker processes for the sweep (default: all cores)")
    demo.add_argument("--checkpoints", help="directory to save trained models to, and load them from")
    demo.add_argument("--quiet", action="store_true", help="no progress output (the table still prints)")
    demo.set_defaults(func=_cmd_demo)

    from saf_ref.testing.runner import add_arguments as add_check_arguments

    check = sub.add_parser(
        "check",
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
    add_check_arguments(check)
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
    except (TypeError, ValueError) as err:  # bad input: one clear line, no traceback
        print(f"saf-ref {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
