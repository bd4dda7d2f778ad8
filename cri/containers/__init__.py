"""Containers: OCI specs from CRI configs, run by runc under conmon (see manager.py for the entry)."""
