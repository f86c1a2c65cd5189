"""``python -m offloader``: the ``offloader`` command."""

from ._cli import main

raise SystemExit(main())
