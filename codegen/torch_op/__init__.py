"""The PyTorch ops: raw kernel calls (``kernel``), the registered op and its autograd (``op``),
the public functional and module API (``functional``, ``modules``), fused linear cross-entropy
(``linear``) and vocab-parallel cross-entropy (``vocab_parallel``)."""
