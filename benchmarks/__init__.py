"""Benchmarks of the course (``make bench``): not part of the package learners import."""
