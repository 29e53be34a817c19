"""The math: definitions, checked derivations, proofs, their LaTeX, and the kernel spec."""
