"""``python -m sqld``: the same as the ``sqld`` command."""

from sqld.cli import main

main()
