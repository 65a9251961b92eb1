"""The ``backend`` fixture: the same behaviour suite on every L2 topology.

``fakeredis`` (in process), ``redis`` (the session's private redis-server,
see tests/conftest.py) and ``cluster`` / ``cluster-hashtag`` (the session's
private 3-master Redis Cluster, with each ``cluster_multikey`` strategy; see
tests/support/cluster.py), ``tls`` (TLS with a client certificate), ``acl``
(each namespace as an ACL user restricted to its keys and channel) and
``sentinel`` (master + replica + three sentinels; see tests/support/topology.py).
A topology is one entry of ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support import topology
from support.backends import Backend

from resync_hierarchy.testing.cluster import RedisClusterHarness

_real = pytest.mark.redis
BACKENDS = [
    pytest.param("fakeredis", id="fakeredis"),
    pytest.param("redis", id="redis", marks=_real),
    pytest.param("cluster", id="cluster", marks=_real),
    pytest.param("cluster-hashtag", id="cluster-hashtag", marks=_real),
    pytest.param("tls", id="tls", marks=_real),
    pytest.param("acl", id="acl", marks=_real),
    pytest.param("sentinel", id="sentinel", marks=_real),
]


def _topology_backend(request: pytest.FixtureRequest, kind: str) -> Backend:
    if kind == "tls":
        tls = request.getfixturevalue("tls_setup")
        tls.server.reset()
        certs = tls.certs
        url = tls.server.tls_url(certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
        return Backend(url, raw_url=tls.server.url)
    if kind == "acl":
        server = request.getfixturevalue("acl_setup").server
        server.reset()
        return Backend(
            server.url, raw_url=server.url, url_for=lambda ns: topology.acl_url(server, ns)
        )
    deployment = request.getfixturevalue("sentinel_setup").deployment
    deployment.flush()
    return Backend(deployment.url(), raw_url=deployment.master.url)


def _backend_for(request: pytest.FixtureRequest, kind: str) -> Backend:
    if kind in ("tls", "acl", "sentinel"):
        return _topology_backend(request, kind)
    if kind == "fakeredis":
        return Backend("fakeredis")
    if kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        return Backend(url)
    if kind in ("cluster", "cluster-hashtag"):
        cluster: RedisClusterHarness = request.getfixturevalue("redis_cluster")
        cluster.flush()
        multikey = "hashtag" if kind == "cluster-hashtag" else "split"
        return Backend(cluster.url, cluster_multikey=multikey)
    raise AssertionError(f"unknown backend {kind!r}")


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    b = _backend_for(request, request.param)
    try:
        yield b
    finally:
        await b.close()
