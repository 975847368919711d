# syntax=docker/dockerfile:1
# Multi-stage build of vecodex-operator: a Rust builder with a cached dependency layer, then
# a distroless, non-root runtime image holding only the binary.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
# make builds jemalloc, the operator's allocator, from C source (the slim image has gcc only).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first: this layer is rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin vecodex-operator \
    && rm -rf src

COPY src ./src
# Touch so cargo sees the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin vecodex-operator \
    && cp target/release/vecodex-operator /vecodex-operator

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="vecodex-operator" \
      org.opencontainers.image.description="Kubernetes operator for Vecodex vector-search clusters" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /vecodex-operator /usr/local/bin/vecodex-operator
# 65532 is distroless' "nonroot" user.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/vecodex-operator"]
CMD ["run"]
