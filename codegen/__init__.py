"""Turn the kernel spec of ``gradsmith.derive`` into NumPy, C and CUDA source, and load what
was emitted."""
