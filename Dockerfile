# syntax=docker/dockerfile:1
#
# obsgate container image.
#
#   docker build -t obsgate:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/my-config:/etc/obsgate:ro" obsgate:0.1.0
#
# The image holds the binary only: no config, no policy file, no token. Mount a directory with
# gateway.yaml and its policy files at /etc/obsgate (Kubernetes: deploy/kubernetes/, a ConfigMap).
# tests/deploy_files.rs checks this file against deploy/kubernetes/ and Cargo.toml.

ARG RUST_VERSION=1.95

# ---- build ------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Dependencies first, in a layer of their own that only Cargo.toml and Cargo.lock invalidate:
# stub sources (an empty lib, an empty main, and an empty file for every [[bench]] the manifest
# names, which cargo needs to find before it builds anything) compiled against the locked
# dependency set. The registry download cache is a BuildKit cache mount shared by both builds.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && for b in $(sed -n '/^\[\[bench\]\]/,/^name/ s/^name *= *"\(.*\)"/\1/p' Cargo.toml); do \
         echo 'fn main() {}' > "benches/$b.rs"; \
       done \
    && cargo build --release --locked --bin obsgate \
    && rm -rf src

# The real sources. The binary embeds openapi/admin-api.json (include_str!).
COPY src src
COPY openapi openapi
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    touch src/lib.rs src/main.rs \
    && cargo build --release --locked --bin obsgate \
    && ./target/release/obsgate --version \
    && mkdir -p /out/var/lib/obsgate \
    && cp target/release/obsgate /out/obsgate

# ---- run --------------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc_s and CA certificates (for https:// backends and object stores),
# nothing else: no shell, no package manager. The binary needs libc, libm and libgcc_s only.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="obsgate" \
      org.opencontainers.image.description="Authenticating reverse proxy for Grafana Mimir, Loki, Tempo and Pyroscope" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /out/obsgate /obsgate
# store.data_dir for the local admin store: writable by the runtime user (an emptyDir or a volume
# is mounted here in Kubernetes, where the root filesystem is read-only)
COPY --from=builder --chown=65532:65532 /out/var/lib/obsgate /var/lib/obsgate

# numeric, so that Kubernetes' runAsNonRoot can verify it
USER 65532:65532
# server.listen (data plane, admin API, /ready, /live, /metrics)
EXPOSE 8080
# obsgate stops on SIGTERM: stops accepting, lets requests finish for server.shutdown_grace
STOPSIGNAL SIGTERM
ENTRYPOINT ["/obsgate"]
CMD ["serve", "--config", "/etc/obsgate/gateway.yaml"]
