"""Single-use streaming tokens."""

from __future__ import annotations

import pytest

from calyx_base.errors import ResourceExhausted
from cri.streaming.tokens import MAX_PENDING, TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_used_once_and_only_for_its_kind() -> None:
    cache = TokenCache(60, Clock())
    token = cache.insert("exec", "request")
    assert len(token) >= 32
    assert cache.consume("exec", token) == "request"
    assert cache.consume("exec", token) is None
    other = cache.insert("attach", "request")
    assert cache.consume("exec", other) is None
    assert cache.consume("attach", other) is None  # a wrong-kind attempt burns it


def test_tokens_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = TokenCache(60, clock)
    early, late = cache.insert("exec", 1), cache.insert("exec", 2)
    clock.now += 59.9
    assert cache.consume("exec", early) == 1
    clock.now += 0.2
    assert cache.consume("exec", late) is None


def test_tokens_are_random_and_unused_ones_are_bounded() -> None:
    clock = Clock()
    cache = TokenCache(60, clock)
    tokens = {cache.insert("exec", i) for i in range(MAX_PENDING)}
    assert len(tokens) == MAX_PENDING
    with pytest.raises(ResourceExhausted):
        cache.insert("exec", "one too many")
    clock.now += 61  # expired ones are pruned on the next insert
    cache.insert("exec", "fits again")
    assert len(cache) == 1
