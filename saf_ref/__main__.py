"""``python -m saf_ref``: the same as the ``saf-ref`` console script."""

from saf_ref.cli import main

raise SystemExit(main())
