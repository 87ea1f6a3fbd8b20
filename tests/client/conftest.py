"""sqld.client tests: a real sqld on loopback, reached through SQLD_URL like an application would."""

from __future__ import annotations

import pytest


@pytest.fixture
def sqld_url(sqld_server, monkeypatch):
    url = f"sqld://tester@{sqld_server.host}:{sqld_server.port}"
    monkeypatch.setenv("SQLD_URL", url)
    return url
