"""The cache is a real Redis: values and TTL expiry."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

pytestmark = pytest.mark.integration


def test_set_with_ttl_get_and_expiry(redis_url):
    client = redis.Redis.from_url(redis_url)
    key = f"smoke:{uuid.uuid4().hex}"
    assert client.set(key, b"value", px=300)
    assert client.get(key) == b"value"
    assert 0 < client.pttl(key) <= 300
    deadline = time.monotonic() + 5
    while client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get(key) is None
