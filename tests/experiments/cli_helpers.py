"""Shared assertions for the experiment commands' option checks (demo, chips, format-faults, seeds)."""

from __future__ import annotations

from saf_ref.cli import main


def refused_in_one_line(command: str, argv: list[str], out, capsys) -> str:
    """Run ``saf-ref COMMAND --out OUT ARGV`` and assert the shape every bad option gets: exit status 2,
    one line on stderr starting ``saf-ref COMMAND: error: ``. Returns that line, for the caller to check
    that it names the option."""
    assert main([command, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"saf-ref {command}: error: "), err
    assert len(err.strip().splitlines()) == 1, err
    return err
