"""CDI (Container Device Interface): devices named ``vendor.com/class=name`` in a container's request,
resolved through the spec files of the configured directories and applied to its OCI spec.

``Registry`` finds devices (cri/containers/cdi/registry.py), ``requested`` reads the names a container
asks for (the CRI field and ``cdi.k8s.io/*`` annotations), ``inject`` edits the OCI spec.
"""

from __future__ import annotations

from cri.containers.cdi.inject import inject
from cri.containers.cdi.names import QualifiedName, requested
from cri.containers.cdi.registry import Device, Registry

__all__ = ["Device", "QualifiedName", "Registry", "inject", "requested"]
