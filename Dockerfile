# syntax=docker/dockerfile:1
# Builds the `coffer` binary and ships it alone, with CA certificates, in a distroless image.
#   docker build -t coffer:local .
#   docker run --rm -e DATABASE_URL=postgres://... -p 50051:50051 -p 8080:8080 -p 9090:9090 coffer:local
# There is no container engine where this repository is developed and tested: this file is kept
# correct by reading it (and docker-compose.yml by `docker-compose config` in .ci/run). Build it
# with BuildKit (the default since Docker 23), which the cache mounts below need.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The query macros read the committed .sqlx/ data, so the build needs no database; protox
# compiles the protos in Rust, so no protoc either. The cache mounts keep the registry and the
# target directory between builds; the binary is copied out of the mount, which does not
# survive the step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    SQLX_OFFLINE=true cargo build --release --locked --bin coffer \
    && cp target/release/coffer /usr/local/bin/coffer

# distroless/cc: glibc, libgcc_s and libm (all the binary links: TLS is rustls, the allocator is
# mimalloc, both compiled in), CA certificates (TLS to Postgres, OTLP collectors and providers),
# tzdata and an /etc/passwd with the nonroot user. No shell and no package manager, so there is
# nothing in the image to exploit or patch but those libraries; `docker exec coffer coffer
# tenant create acme` still works, as it runs the binary directly. debian:bookworm-slim with
# ca-certificates would also do, at the price of apt, dpkg and a shell in every container.
# Both stages are Debian 12, so the binary finds the glibc it was linked against.
# distroless publishes no version tags: `nonroot` follows Debian 12's security updates. To
# freeze the base, pin its digest (cc-debian12:nonroot@sha256:…, from `docker buildx imagetools
# inspect`), which cannot be looked up from where this file is written.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/coffer /usr/local/bin/coffer
# distroless's nonroot user, by number: Kubernetes' runAsNonRoot can only verify a numeric
# user (a name would need the image's /etc/passwd), and deploy/kubernetes runs as the same.
USER 65532:65532
WORKDIR /home/nonroot
# gRPC (with grpc.health.v1), the public webhook sidecar, admin HTTP (/healthz, /readyz,
# /metrics).
EXPOSE 50051 8080 9090
# Inside a container the listeners must bind every interface; the defaults bind loopback.
ENV COFFER_GRPC_ADDR=0.0.0.0:50051 \
    COFFER_HTTP_ADDR=0.0.0.0:8080 \
    COFFER_ADMIN_ADDR=0.0.0.0:9090 \
    COFFER_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/coffer"]
# `serve` applies the migrations before it listens; `coffer migrate` does only that.
CMD ["serve"]
