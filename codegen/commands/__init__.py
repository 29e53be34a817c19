"""One module per ``gradsmith`` sub-command: ``add_arguments(parser)`` and ``run(args) -> int``."""
