"""``python -m dicomlake``: the same as the ``dicomlake`` command."""

from dicomlake.cli import main

main()
