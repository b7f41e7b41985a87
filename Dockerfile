# contender gateway image: ONNX Runtime and a CPU libtorch from PyPI wheels,
# the release binary (ONNX + TorchScript), and the example model repository.
#   docker build -t contender .
#   docker run -p 8000:8000 contender
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV CONTENDER_CACHE_DIR=/opt/contender
RUN scripts/setup-onnxruntime.sh && scripts/setup-libtorch.sh \
 && cargo build --release --locked --features torchscript --bin contender

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 contender
COPY --from=build /opt/contender/onnxruntime-1.31.1 /opt/contender/onnxruntime-1.31.1
# The binary's rpath points here (scripts/setup-libtorch.sh, build.rs).
COPY --from=build /opt/contender/libtorch-2.13.0-cpu/lib /opt/contender/libtorch-2.13.0-cpu/lib
COPY --from=build /src/target/release/contender /usr/local/bin/contender
COPY contender.toml /etc/contender/contender.toml
COPY models /etc/contender/models
ENV CONTENDER_CACHE_DIR=/opt/contender \
    CONTENDER_CONFIG=/etc/contender/contender.toml
USER contender
EXPOSE 8000
STOPSIGNAL SIGTERM
ENTRYPOINT ["contender"]
CMD ["serve"]
