# The image the Helm chart (helm/bulk-import) runs. Build: docker build -t bulk-import .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/bulk-import /bulk-import

# Small and non-root: the binary (linked against glibc only: rustls, bundled SQLite) and an
# unprivileged user, uid and gid 10001, which the chart's securityContext names (runAsUser,
# runAsGroup, fsGroup: keep them in step). /data holds the SQLite file; in Kubernetes it is a
# volume that fsGroup makes writable.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 bulk-import \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /data \
      --shell /usr/sbin/nologin bulk-import \
 && mkdir /data && chown 10001:10001 /data
COPY --from=build /bulk-import /usr/local/bin/bulk-import
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /data
EXPOSE 50051 9090
ENTRYPOINT ["bulk-import"]
CMD ["serve"]
