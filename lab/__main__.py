"""``python -m atlantic.lab up|down|env|shell|exec``: the lab command without the daemon's CLI."""

from atlantic.lab.cli import lab_app

lab_app(prog_name="python -m atlantic.lab")
