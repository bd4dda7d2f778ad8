"""Fixtures of the end-to-end tests, from the subsystem fixture modules under tests/."""

from tests.net_fixtures import builtin_net, cni_net  # noqa: F401 - pod and network tests
