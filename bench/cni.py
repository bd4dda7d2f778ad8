"""A CNI conflist of the run's own: the Debian bridge and host-local plugins, a bridge name and subnet
unique to one runtime, no masquerade (benchmark traffic never leaves the host), IPAM state in the
run's temp dir."""

from __future__ import annotations

import json
from pathlib import Path

CNI_BIN_DIR = "/usr/lib/cni"


def write_conflist(conf_dir: Path, name: str, bridge: str, subnet: str, ipam_dir: Path) -> Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }
    path = conf_dir / "10-bench.conflist"
    path.write_text(json.dumps(conflist, indent=2))
    return path
