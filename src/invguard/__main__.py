"""``python -m invguard``: the same as the ``invguard`` command."""

from invguard.cli import main

main()
