# syntax=docker/dockerfile:1
#
# sqld with the mvsqlite backend: Python 3.11, FoundationDB's client library (libfdb_c)
# and the `foundationdb` binding. docker-compose.yml builds it; alone:
#
#   docker build -t sqld . && docker run --rm sqld --help
#
# FoundationDB 7.3.79 throughout: the client package installed here, the Python binding
# pinned in pyproject.toml (foundationdb==7.3.79) and the server image in
# docker-compose.yml are the same release (7.3 patch releases have not always spoken the
# same protocol). The package is amd64 only, so the image is too.

ARG PYTHON_IMAGE=python:3.11-slim
ARG FDB_VERSION=7.3.79
ARG FDB_CLIENTS_SHA256=52cc22565c42e7eb60c08f395a0626483735c311be0d80b7c035ac8e328e2fff

# The official client package from the FoundationDB release, checked against its SHA-256.
# It is only bind-mounted into the RUN that installs it, so it is in no layer of the image.
FROM scratch AS fdb-clients
ARG FDB_VERSION
ARG FDB_CLIENTS_SHA256
ADD --checksum=sha256:${FDB_CLIENTS_SHA256} \
    https://github.com/apple/foundationdb/releases/download/${FDB_VERSION}/foundationdb-clients_${FDB_VERSION}-1_amd64.deb \
    /foundationdb-clients.deb

# sqld as a wheel; only what the package needs is copied (see also .dockerignore).
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sqld ./sqld
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG FDB_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# libfdb_c (/usr/lib/libfdb_c.so) and fdbcli. apt resolves the package's dependencies
# (adduser, libc6); the lists are removed in the same layer.
RUN --mount=type=bind,from=fdb-clients,source=/foundationdb-clients.deb,target=/tmp/foundationdb-clients.deb \
    set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends /tmp/foundationdb-clients.deb; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/*; \
    test -f /usr/lib/libfdb_c.so; \
    fdbcli --version | grep -F "${FDB_VERSION}"

# sqld with the [mvsqlite] extra, then a check that the binding loads libfdb_c at the API
# version sqld uses (sqld/backends/mvsqlite/fdbreal.py: 730). Versions come from
# pyproject.toml (foundationdb==7.3.79, lower bounds for the rest).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    set -eux; \
    wheel="$(ls /wheels/sqld-*.whl)"; \
    pip install --no-cache-dir "${wheel}[mvsqlite]"; \
    python -c "import fdb; fdb.api_version(730)"; \
    sqld --version

# Not root. /data is where a replica (or the libsql backend) keeps its files; a named
# volume mounted there starts with this owner.
RUN set -eux; \
    groupadd --system --gid 10001 sqld; \
    useradd --system --uid 10001 --gid sqld --home-dir /data --no-create-home --shell /usr/sbin/nologin sqld; \
    mkdir -p /data; \
    chown sqld:sqld /data
USER 10001:10001
WORKDIR /data

# sqld listens on 127.0.0.1:5432 unless told otherwise (--listen-addr / SQLD_LISTEN_ADDR);
# inside a container that has to be 0.0.0.0:5432 to be reachable, as docker-compose.yml says.
EXPOSE 5432
ENTRYPOINT ["sqld"]

# The mvsqlite suite against a real cluster (docker-compose.yml, service `tests`, profile
# tests: `docker compose run --rm tests`): the same image with the test extras and tests/,
# pointed at the compose cluster's file; no container of its own is started from inside.
FROM runtime AS tests
USER root
WORKDIR /src
COPY pyproject.toml ./
COPY tests ./tests
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    set -eux; \
    wheel="$(ls /wheels/sqld-*.whl)"; \
    pip install --no-cache-dir "${wheel}[mvsqlite,test]"; \
    chown -R sqld:sqld /src
USER 10001:10001
ENV SQLD_TEST_FDB_CLUSTER=/var/fdb/fdb.cluster \
    SQLD_TEST_FDB_CONTAINER=0
ENTRYPOINT ["python", "-m", "pytest", "-p", "no:cacheprovider"]
CMD ["tests/mvsqlite", "-q", "-rs"]

# The default target (the last stage): sqld itself, as above.
FROM runtime AS sqld
