"""Flax training examples for optax_lambc (one shared library in ``lib``)."""
