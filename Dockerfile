# xdsd container image: docker build -t xdsd:0.1.0 .
# Runs as a non-root user; the Deployment in deploy/control-plane also makes the root
# filesystem read-only and drops every capability.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY xdsd ./xdsd
RUN python -m venv /opt/xdsd \
    && /opt/xdsd/bin/pip install . \
    && /opt/xdsd/bin/xdsd --version

FROM python:3.11-slim
RUN groupadd --system --gid 10001 xdsd \
    && useradd --system --uid 10001 --gid xdsd --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin xdsd
COPY --from=build /opt/xdsd /opt/xdsd
ENV PATH=/opt/xdsd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# 15010 plaintext xDS (off unless asked), 15012 TLS xDS + CA, 15014 metrics/probes, 15017 webhooks
EXPOSE 15010 15012 15014 15017
ENTRYPOINT ["xdsd", "serve"]
CMD ["--help"]
