"""Generate the CRI v1 Python stubs from proto/api.proto at build time.

The proto is mapped to the virtual path ``cri/api/api.proto`` so that the generated gRPC module imports
``cri.api.api_pb2`` (an absolute import that works in the installed package).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def generate(root: Path) -> None:
    from grpc_tools import protoc  # build-time dependency, see pyproject.toml

    out = root
    args = [
        "grpc_tools.protoc",
        f"-Icri/api={root / 'proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        "cri/api/api.proto",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


class CriStubsHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        generate(Path(self.root))


if __name__ == "__main__":
    generate(Path(__file__).resolve().parent)
