"""Thin command-line experiments on top of the dsrg_jax library."""
