"""``python -m pipeline.cli``: the same as the ``spex`` command."""

from pipeline.cli.main import main

main()
