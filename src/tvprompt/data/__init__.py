"""Datasets: readers, splits, batching, and the procedural ShapeWorld generator."""
