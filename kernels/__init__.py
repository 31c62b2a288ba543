"""Numba scoring kernels: log-softmax, token NLL and divergence over (N, V) logits."""
