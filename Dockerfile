# syntax=docker/dockerfile:1.7
#
# CPU images of the two ICAE services, one build target per service:
#
#   docker build --target encoder-svc -t REGISTRY/icae/encoder-svc:0.1.0 .
#   docker build --target decoder-svc -t REGISTRY/icae/decoder-svc:0.1.0 .
#
# The CUDA images come from Dockerfile.cuda (same targets). See docs/deploy.md.
#
# builder: Rust toolchain + a Python venv with PyTorch 2.13.0 (the libtorch that tch 0.26
#          links against; CPU wheel), builds both services with LIBTORCH_USE_PYTORCH=1.
# runtime: Debian slim + the two binaries, libtorch's shared libraries copied from the
#          wheel's torch/lib, CA certificates; non-root (UID 10001), no shell needed at run time.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# torch must be exactly the version tch 0.26 expects. The CPU index avoids PyPI's default
# Linux wheel, which is a CUDA build with several GB of NVIDIA libraries.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's versions follow the release; pinning each would break on every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    LIBTORCH_USE_PYTORCH=1 \
    CARGO_TERM_COLOR=never
RUN python3 -m venv "${VIRTUAL_ENV}" \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && python -c 'import torch; print("torch", torch.__version__)'

WORKDIR /src
# The whole build context, filtered by .dockerignore: every workspace member (and any crate
# added later) is there without listing crates here.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p encoder-svc -p decoder-svc \
    && install -D -m 0755 target/release/encoder-svc /out/bin/encoder-svc \
    && install -D -m 0755 target/release/decoder-svc /out/bin/decoder-svc

# libtorch's shared libraries, laid out as in site-packages so that the wheel's relative
# RUNPATHs ($ORIGIN/../../torch.libs, ...) still resolve. libtorch_python is for Python only.
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && mkdir -p /out/libtorch/torch \
    && cp -a "${site}/torch/lib" /out/libtorch/torch/lib \
    && if [ -d "${site}/torch.libs" ]; then cp -a "${site}/torch.libs" /out/libtorch/torch.libs; fi \
    && rm -f /out/libtorch/torch/lib/libtorch_python.so \
    && for bin in /out/bin/*; do \
         libs="$(LD_LIBRARY_PATH=/out/libtorch/torch/lib ldd "${bin}")"; \
         case "${libs}" in *"not found"*) echo "${bin}: ${libs}" >&2; exit 1 ;; esac; \
       done

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libgomp1 libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 icae \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin icae
COPY --from=builder /out/libtorch /opt/libtorch
# HOME=/tmp: the root filesystem is read-only in Kubernetes; /tmp is an emptyDir there.
# The listen addresses default to all interfaces inside a container.
ENV LD_LIBRARY_PATH=/opt/libtorch/torch/lib \
    HOME=/tmp \
    ICAE_HOST=0.0.0.0 \
    ICAE_METRICS_HOST=0.0.0.0 \
    ICAE_DEVICE=cpu
LABEL org.opencontainers.image.title="icae-serve" \
      org.opencontainers.image.description="In-context Autoencoder serving (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /tmp

FROM runtime AS encoder-svc
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=builder /out/bin/encoder-svc /usr/local/bin/encoder-svc
# Fail the build, not the pod, if a shared library is missing.
RUN libs="$(ldd /usr/local/bin/encoder-svc)" \
    && case "${libs}" in *"not found"*) echo "${libs}" >&2; exit 1 ;; esac
ENV ICAE_PORT=50051 \
    ICAE_METRICS_PORT=9091
# gRPC, Prometheus /metrics
EXPOSE 50051 9091
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/encoder-svc"]

FROM runtime AS decoder-svc
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=builder /out/bin/decoder-svc /usr/local/bin/decoder-svc
# Fail the build, not the pod, if a shared library is missing.
RUN libs="$(ldd /usr/local/bin/decoder-svc)" \
    && case "${libs}" in *"not found"*) echo "${libs}" >&2; exit 1 ;; esac
ENV ICAE_PORT=50052 \
    ICAE_METRICS_PORT=9092
# gRPC, Prometheus /metrics
EXPOSE 50052 9092
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/decoder-svc"]
