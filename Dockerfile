# AMQP publishing gateway: gunicorn (gevent workers) serving the Flask app.
#   docker build -t amqp-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 -e GATEWAY_RMQ_CONN_STR_main='amqp://user:pass@rabbitmq:5672/%2F' amqp-gateway:0.1.0
# Kubernetes manifests: deploy/ (docs/deploy.md). make image-test builds and runs this file.

# The base image (any Debian-like Python 3.11 with venv; make image-test builds a stand-in
# locally, as no registry may be reachable there).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# gunicorn-h1c (gunicorn's C HTTP parser) is built from source: a compiler in this stage only.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
# The locked, hashed runtime set first (its layer is cached while only the app changes),
# then the app itself with --no-deps: nothing outside the lock gets in.
COPY requirements/runtime.txt ./requirements/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/venv/bin/pip install --no-deps . && /opt/venv/bin/pip check

FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_BIND=0.0.0.0:8080 \
    GATEWAY_CONFIG=/srv/gateway/config/container.cfg
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/gateway
COPY gunicorn.conf.py ./
COPY config ./config
USER 10001:10001
EXPOSE 8080 5555
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
