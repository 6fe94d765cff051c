"""Benchmarks: measure optim/, models/ and search/ side by side with their peers."""
