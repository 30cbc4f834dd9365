# syntax=docker/dockerfile:1
# The control-plane image: the `portcullis` binary plus the filter module it serves to sidecars
# (`/filter.wasm` on the public port, the default WasmPlugin.url).
#
#   docker build -t ghcr.io/portcullis/portcullis:0.1.0 .
#   docker run --rm -p 4444:4444 -v portcullis-data:/var/lib/portcullis \
#     -e PORTCULLIS_ISSUER=http://localhost:4444 ghcr.io/portcullis/portcullis:0.1.0 serve
#
# The admin API (clients, keys, introspection) listens on loopback inside the container: it
# has no authentication of its own. Reach it with `docker exec`, or publish it deliberately to
# a trusted interface only, e.g. `-e PORTCULLIS_ADMIN_ADDR=0.0.0.0:4445 -p 127.0.0.1:4445:4445`.
# The Kubernetes manifests set --admin-addr=0.0.0.0:4445 and guard the port with mesh policy
# (istio/mesh-security.yaml).
#
# Set PORTCULLIS_ISSUER (or --issuer): the default, http://<public-addr>, would be
# http://0.0.0.0:4444 here. The default command is Kubernetes mode (istio/deployment.yaml).
#
# Runtime is distroless `cc`: glibc and libgcc only, no shell, no package manager. The binary is
# dynamically linked against glibc (rusqlite's bundled SQLite and AWS-LC, which signs tokens,
# are compiled in with the image's C compiler; TLS is rustls with ring, so no OpenSSL is needed).

ARG RUST_VERSION=1

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip1
COPY . .
# Cache mounts keep the registry and target dir between builds; the results are copied out of
# the cached target dir within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    cargo build --release --locked -p portcullis-cli --bin portcullis; \
    make wasm; \
    install -D -m 0755 target/release/portcullis /out/usr/local/bin/portcullis; \
    install -D -m 0644 dist/filter.wasm /out/usr/share/portcullis/filter.wasm; \
    install -d -m 0755 /out/var/lib/portcullis

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/portcullis /usr/local/bin/portcullis
COPY --from=build /out/usr/share/portcullis/filter.wasm /usr/share/portcullis/filter.wasm
COPY --from=build --chown=65532:65532 /out/var/lib/portcullis /var/lib/portcullis
USER 65532:65532
ENV PORTCULLIS_DATA_DIR=/var/lib/portcullis \
    PORTCULLIS_WASM_FILE=/usr/share/portcullis/filter.wasm \
    PORTCULLIS_PUBLIC_ADDR=0.0.0.0:4444 \
    PORTCULLIS_ADMIN_ADDR=127.0.0.1:4445
EXPOSE 4444
VOLUME ["/var/lib/portcullis"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--kubernetes"]
