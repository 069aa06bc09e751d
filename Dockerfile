# The image the Helm chart (helm/bulk-import) runs. Build: docker build -t bulk-import .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/bulk-import /bulk-import

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 bulk-import && mkdir /data && chown bulk-import /data
COPY --from=build /bulk-import /usr/local/bin/bulk-import
USER bulk-import
WORKDIR /data
EXPOSE 50051
ENTRYPOINT ["bulk-import"]
CMD ["serve"]
