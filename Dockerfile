# syntax=docker/dockerfile:1
# The afterview image: one static-ish binary on a slim Debian, run as a non-root user.
#   docker build -t afterview .
#   docker run --rm -p 8000:8000 -e AFTERVIEW_AUTH_TOKENS='<token>=<user>' afterview
# The same image runs `serve`, `worker` and the CLI verbs (see docker-compose.yml, docs/deploy.md).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p afterview \
 && install -m 0755 target/release/afterview /afterview

FROM debian:bookworm-slim
# fonts-wqy-zenhei: patients' names and notes in Chinese, Japanese and Korean print in reports
# (found there without configuration; AFTERVIEW_REPORT_FONTS names others).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates fonts-wqy-zenhei \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/afterview --create-home \
      --shell /usr/sbin/nologin afterview
COPY --from=build /afterview /usr/local/bin/afterview
USER 10001:10001
WORKDIR /var/lib/afterview
# Embedded defaults keep their SQLite files and blobs here; with PostgreSQL and S3 configured
# nothing is written to it.
ENV AFTERVIEW_DATA_DIR=/var/lib/afterview \
    AFTERVIEW_BIND=0.0.0.0:8000
VOLUME ["/var/lib/afterview"]
EXPOSE 8000
# Readiness of `serve` (broker, result backend, metadata and blob stores); bash's /dev/tcp
# saves shipping curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["afterview"]
CMD ["serve"]
