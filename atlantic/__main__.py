"""``python -m atlantic`` is the ``atlantic`` command."""

from atlantic.client.main import main

main()
