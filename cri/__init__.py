"""Calyx: a Kubernetes container runtime serving CRI v1."""

__version__ = "0.1.0"
