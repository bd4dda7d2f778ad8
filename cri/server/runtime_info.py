"""RPCs about the runtime itself: Version, Status, RuntimeConfig, UpdateRuntimeConfig."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import grpc

import cri
from calyx_base.errors import InvalidArgument
from cri import configdocs
from cri.api import api_pb2 as pb
from cri.config import Config
from cri.runtime import Runtime

RUNTIME_NAME = "calyx"
KUBE_API_VERSION = "0.1.0"  # fixed by CRI: the version of the kubelet runtime API
RUNTIME_API_VERSION = "v1"


def user_namespaces_supported() -> bool:
    """Pods may ask for a user namespace (userns_options mode POD, made by sandbox/userns.py) when the
    kernel lets root create them; kubelet and critest read this per runtime handler."""
    try:
        return int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
    except (OSError, ValueError):
        return False


class RuntimeInfoRPCs:
    runtime: Runtime
    config: Config

    def Version(self, request: pb.VersionRequest, context: grpc.ServicerContext) -> pb.VersionResponse:
        return pb.VersionResponse(
            version=KUBE_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=cri.__version__,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        status = pb.RuntimeStatus(
            conditions=[
                pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
                for c in self.runtime.conditions()
            ]
        )
        info: dict[str, str] = {}
        if request.verbose:
            info["config"] = json.dumps(configdocs.redacted(configdocs.to_dict(self.config)), sort_keys=True)
            info["podCIDR"] = self.runtime.pod_cidr.get()
            # What CRI has no feature field for: CDI devices and image volumes (Mount.image).
            info["features"] = json.dumps(
                {"cdiSpecDirs": self.config.runtime.cdi_spec_dirs, "imageVolumes": True}
            )
        # runc 1.1 applies "rro" with mount_setattr (tests/e2e/test_container_security.py checks it).
        features = pb.RuntimeHandlerFeatures(
            recursive_read_only_mounts=True, user_namespaces=user_namespaces_supported()
        )
        # The default handler is listed under the empty name too, as containerd does: kubelet (for pods
        # without a RuntimeClass) and critest look its features up under "".
        names = ["", *sorted(self.config.runtime.handlers)]
        handlers = [pb.RuntimeHandler(name=name, features=features) for name in names]
        # The Strict supplemental-groups policy is honoured (cri/containers/users.py).
        runtime_features = pb.RuntimeFeatures(supplemental_groups_policy=True)
        return pb.StatusResponse(
            status=status, info=info, runtime_handlers=handlers, features=runtime_features
        )

    def RuntimeConfig(
        self, request: pb.RuntimeConfigRequest, context: grpc.ServicerContext
    ) -> pb.RuntimeConfigResponse:
        driver = pb.SYSTEMD if self.config.cgroup.driver == "systemd" else pb.CGROUPFS
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: grpc.ServicerContext
    ) -> pb.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            for part in cidr.split(","):
                try:
                    ipaddress.ip_network(part.strip(), strict=False)
                except ValueError:
                    raise InvalidArgument(f"pod CIDR {part.strip()!r} is not a network") from None
            self.runtime.pod_cidr.set(cidr)
        return pb.UpdateRuntimeConfigResponse()
