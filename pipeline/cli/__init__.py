"""The ``spex`` command line, one module per command group, thin over the library.

:mod:`.main` holds the app, the scene commands (``sensors``, ``info``, ``apg``,
``extract``) and the entry point that turns input errors into one ``error:`` line with
exit status 2; :mod:`.models`, :mod:`.train` and :mod:`.spie` hold the ``models``,
``train``/``eval`` and ``spie`` groups. Heavy libraries are imported inside commands so
that ``spex --help`` starts fast.
"""

from pipeline.cli.main import app, main

__all__ = ["app", "main"]
