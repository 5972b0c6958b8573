"""``python -m ops.cli``: the ``cardline`` command."""

from ops.cli import main

main()
