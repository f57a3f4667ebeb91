# shardproxy: a Redis sharding proxy. Mount the config at /etc/shardproxy/proxy.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin shardproxy

USER shardproxy
EXPOSE 6380 9380
# Listen/admin must bind 0.0.0.0 in the mounted config to be reachable from outside the container.
ENTRYPOINT ["shardproxy"]
CMD ["serve", "-c", "/etc/shardproxy/proxy.yaml"]
