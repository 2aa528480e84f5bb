"""``python -m atlantic`` is the ``atlantic`` command."""

from atlantic.client.cli import main

main()
