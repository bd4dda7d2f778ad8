"""Registry fixtures (import them into a test module or a conftest.py):

- ``image_registry``: a plain-HTTP registry holding every test image (critest.images), session-wide.
- ``basic_registry`` / ``token_registry``: the same content behind htpasswd basic auth or token auth.
- ``scratch_registry``: an empty plain registry for one test (to corrupt, kill or fill as it likes).

Registries are started once per session where that is safe to share, and stopped by PID at the end.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from critest.images import calyx_images, critest_images, push_all
from tests.registry import Registry, TokenServer, htpasswd_file

USERS = {"alice": "wonderland"}
REFRESH_TOKENS = {"refresh-alice": "alice"}


@dataclass
class LoopbackRegistry:
    registry: Registry
    digests: dict[str, str] = field(default_factory=dict)  # "repo:tag" -> manifest digest
    token_server: TokenServer | None = None

    @property
    def host(self) -> str:
        return self.registry.host

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"


@pytest.fixture(scope="session")
def registry_base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cxreg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def image_registry(registry_base: Path) -> Iterator[LoopbackRegistry]:
    storage = registry_base / "storage"
    storage.mkdir()
    registry = Registry(registry_base, storage).start()
    try:
        digests = push_all(registry.host, calyx_images() + critest_images())
        # The same busybox under public/ for anonymous token pulls.
        digests.update(push_all(registry.host, [replace(calyx_images()[0], repo="public/busybox")]))
        yield LoopbackRegistry(registry, digests)
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def basic_registry(image_registry: LoopbackRegistry, registry_base: Path) -> Iterator[LoopbackRegistry]:
    path = htpasswd_file(registry_base / "htpasswd", USERS)
    registry = Registry(
        registry_base,
        image_registry.registry.storage,
        {"htpasswd": {"realm": "calyx-basic", "path": str(path)}},
    ).start()
    try:
        yield LoopbackRegistry(registry, image_registry.digests)
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def token_registry(image_registry: LoopbackRegistry, registry_base: Path) -> Iterator[LoopbackRegistry]:
    tokens = TokenServer(registry_base, USERS, REFRESH_TOKENS)
    registry = Registry(registry_base, image_registry.registry.storage, tokens.auth_config())
    try:
        registry.start()
        yield LoopbackRegistry(registry, image_registry.digests, tokens)
    finally:
        registry.stop()
        tokens.close()


@pytest.fixture
def scratch_registry(short_tmp: Path) -> Iterator[LoopbackRegistry]:
    storage = short_tmp / "reg-storage"
    storage.mkdir()
    registry = Registry(short_tmp, storage).start()
    try:
        yield LoopbackRegistry(registry)
    finally:
        registry.stop()
