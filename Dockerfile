# locus: one image for the worker, the router and the local cluster.
#
# `docker compose up` builds it from this file (the Rust base image is pulled). Where no
# base image can be pulled, scripts/image.sh builds the same image, tag locus:latest, from
# a binary built on the host: it runs the runtime stage below as written, with the build
# stage's /out taken from the host instead.

# build: a static (musl) binary, so that the runtime image needs no libc, shell or curl.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2 x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p locus --target x86_64-unknown-linux-musl \
    && mkdir -p /out/data \
    && cp target/x86_64-unknown-linux-musl/release/locus /out/locus \
    && strip /out/locus

# runtime: the binary (the built-in policies are embedded in it) and a data directory
# for the Hugging Face model cache, owned by the unprivileged user that runs locus.
FROM scratch
COPY --from=build /out/locus /locus
COPY --from=build --chown=65532:65532 /out/data /data
ENV HOME=/data HF_HOME=/data/huggingface
VOLUME /data
USER 65532:65532
EXPOSE 8000 8001
# `locus probe` asks LOCUS_HEALTH_URL (default the router's http://127.0.0.1:8000/health);
# a worker's container sets it to its own port.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 CMD ["/locus", "probe"]
ENTRYPOINT ["/locus"]
CMD ["run", "--host", "0.0.0.0"]
