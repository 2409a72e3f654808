"""Layers and models built on dedl.solvers."""
