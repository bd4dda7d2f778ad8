"""Containers: OCI specs from CRI configs, run by runc under conmon (subsystem.py builds the parts by job;
lifecycle.py, with create.py, is the entry of the container RPCs)."""
