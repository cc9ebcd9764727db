# batchgate container image: built in the Rust image, run in a slim one as a non-root user.
#   docker build -t batchgate .
#   docker run -p 8080:8080 -p 9091:9091 -v "$PWD/my.toml:/etc/batchgate/batchgate.toml:ro" batchgate
# The config must listen on 0.0.0.0 (not loopback) and keep pid_file and upgrade_sock under
# /tmp (writable); deploy/kubernetes/configmap.yaml is such a config. Reload in place with
# `docker kill -s HUP <container>`.

# The MSRV (Cargo.toml rust-version): what CI proves the build with.
FROM rust:1.85-slim-bookworm AS build
# pingora's zlib-ng is built with cmake; zstd-sys and ring need a C compiler.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin batchgate

FROM debian:bookworm-slim
# CA roots for HTTPS upstreams (the system roots are used unless ca_file is set).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin batchgate
COPY --from=build /src/target/release/batchgate /usr/local/bin/batchgate
COPY deploy/kubernetes/batchgate.toml /etc/batchgate/batchgate.toml
USER 10001
# 8080: the proxy; 9091: the admin listener (/metrics, /healthz, /readyz), kept separate.
EXPOSE 8080 9091
ENTRYPOINT ["/usr/local/bin/batchgate"]
CMD ["run", "-c", "/etc/batchgate/batchgate.toml"]
