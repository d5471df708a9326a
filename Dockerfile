# Builds the `coffer` binary and ships it in a small Debian image.
#   docker build -t coffer .
#   docker run --rm -e DATABASE_URL=postgres://... -p 50051:50051 -p 9090:9090 coffer

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The query macros read the committed .sqlx/ data, so the build needs no database. protox
# compiles the protos in Rust, so no protoc either.
RUN SQLX_OFFLINE=true cargo build --release --locked

FROM debian:bookworm-slim
# ca-certificates: TLS to Postgres, OTLP collectors and providers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --create-home --home-dir /var/lib/coffer --shell /usr/sbin/nologin coffer
COPY --from=builder /src/target/release/coffer /usr/local/bin/coffer
USER coffer
WORKDIR /var/lib/coffer
# gRPC, the public webhook sidecar (COFFER_HTTP_ADDR), admin HTTP.
EXPOSE 50051 8080 9090
# Inside a container the listeners must bind every interface; the defaults bind loopback.
ENV COFFER_GRPC_ADDR=0.0.0.0:50051 \
    COFFER_HTTP_ADDR=0.0.0.0:8080 \
    COFFER_ADMIN_ADDR=0.0.0.0:9090 \
    COFFER_LOG_FORMAT=json
ENTRYPOINT ["coffer"]
CMD ["serve"]
