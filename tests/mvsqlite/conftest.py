"""A real FoundationDB for the mvsqlite tests: SQLD_TEST_FDB_CLUSTER, or one started through testcontainers."""

from __future__ import annotations

import os
import socket
import time

import pytest

FDB_IMAGE = "foundationdb/foundationdb:7.3.79"  # the release of the binding and of the compose file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_library_missing() -> str | None:
    """Why the binding cannot reach a cluster from this host, or None."""
    from sqld.backends.mvsqlite.fdbreal import _load_binding

    try:
        _load_binding()
    except RuntimeError as exc:
        return str(exc)
    return None


def _docker_missing() -> str | None:
    try:
        import docker
        import testcontainers  # noqa: F401
    except ImportError as exc:
        return f"the testcontainers package is not installed ({exc}): pip install -e '.[test]'"
    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:  # noqa: BLE001 - no engine, no socket, no permission: all the same here
        return f"no Docker engine to start {FDB_IMAGE} in ({type(exc).__name__}: {exc})"
    return None


def _start_container(tmp_dir):
    """``foundationdb/foundationdb`` as a one-process cluster on a loopback port; its cluster file."""
    from testcontainers.core.container import DockerContainer

    port = _free_port()
    # The image's entrypoint (fdb.bash) runs fdbserver listening on 0.0.0.0:$FDB_PORT with
    # the public address 127.0.0.1:$FDB_PORT in "host" networking mode, and writes
    # $FDB_CLUSTER_FILE_CONTENTS to its cluster file: a one-process cluster coordinating
    # itself. Publishing that port on the host's loopback, same number, makes the public
    # address the host's too: the host's client and fdbcli in the container use one file.
    contents = f"docker:docker@127.0.0.1:{port}"
    container = (DockerContainer(FDB_IMAGE)
                 .with_env("FDB_NETWORKING_MODE", "host")
                 .with_env("FDB_PORT", str(port))
                 .with_env("FDB_CLUSTER_FILE_CONTENTS", contents)
                 .with_bind_ports(port, ("127.0.0.1", port)))
    container.start()
    try:
        configure = ["fdbcli", "--timeout", "10", "--exec", "configure new single ssd"]
        deadline = time.monotonic() + 120
        while True:
            status = container.exec(["fdbcli", "--timeout", "5", "--exec", "status minimal"]).output.decode(
                errors="replace")
            if "The database is available" in status:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"FoundationDB in {FDB_IMAGE} did not become available: {status}")
            container.exec(configure)  # a new cluster has no database yet; refused once it has
            time.sleep(1)
    except BaseException:
        container.stop()
        raise
    cluster_file = tmp_dir / "fdb.cluster"
    cluster_file.write_text(contents + "\n")
    return container, str(cluster_file)


@pytest.fixture(scope="session")
def real_fdb_cluster(tmp_path_factory):
    """The cluster file of a real FoundationDB: SQLD_TEST_FDB_CLUSTER's, or that of a container
    started here (once per run) when Docker and libfdb_c are both on this machine. Skips
    saying which is missing (SQLD_TEST_FDB_CONTAINER=0: never start one)."""
    given = os.environ.get("SQLD_TEST_FDB_CLUSTER")
    missing = _client_library_missing()
    if missing:
        pytest.skip(f"no real FoundationDB: {missing}")
    if given:
        yield given
        return
    if os.environ.get("SQLD_TEST_FDB_CONTAINER") == "0":
        pytest.skip("no real FoundationDB: SQLD_TEST_FDB_CLUSTER is not set and SQLD_TEST_FDB_CONTAINER=0")
    missing = _docker_missing()
    if missing:
        pytest.skip(f"no real FoundationDB: SQLD_TEST_FDB_CLUSTER is not set and {missing}")
    container, cluster_file = _start_container(tmp_path_factory.mktemp("fdb"))
    try:
        yield cluster_file
    finally:
        container.stop()
