"""Benchmarks: rnnfast against PyTorch on the same shapes, in the same process."""
