# shardproxy: a Redis sharding proxy. Mount the config at /etc/shardproxy/proxy.yaml.
# The builder stage compiles the request path (mypyc, setup.py) into a wheel; the runtime stage is
# slim and installs that wheel, without a compiler.
FROM python:3.11-slim AS builder

RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/shardproxy-*.whl

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels shardproxy \
    && rm -rf /wheels \
    && shardproxy --version | grep -q '(compiled)' \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin shardproxy

USER shardproxy
EXPOSE 6380 9380
# Listen/admin must bind 0.0.0.0 in the mounted config to be reachable from outside the container.
ENTRYPOINT ["shardproxy"]
CMD ["serve", "-c", "/etc/shardproxy/proxy.yaml"]
