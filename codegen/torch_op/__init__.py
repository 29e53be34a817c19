"""The PyTorch side of gradsmith: the generated kernels called on torch tensors."""
