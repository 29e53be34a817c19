"""The PyTorch op: raw kernel calls (``kernel``), the registered op and its autograd (``op``),
the public functional and module API (``functional``, ``modules``)."""
