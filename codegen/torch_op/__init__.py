"""The PyTorch ops: raw kernel calls (``kernel``), the registered op and its autograd (``op``),
the public functional and module API (``functional``, ``modules``), fused linear cross-entropy
(``linear``), vocab-parallel cross-entropy (``vocab_parallel``), and the row losses (focal,
distillation KL): their raw C call (``row_loss_kernel``) and op (``row_loss_op``)."""
