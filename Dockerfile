# locus: one image for the worker, the router and the local cluster.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p locus && cp target/release/locus /usr/local/bin/locus

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/locus /usr/local/bin/locus
USER nobody
ENTRYPOINT ["locus"]
CMD ["run", "--host", "0.0.0.0"]
