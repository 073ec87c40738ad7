# syntax=docker/dockerfile:1
# confab in a container. See docs/operations.md ("Containers").
#
#   docker build -t confab --build-arg CONFAB_GIT_REVISION=$(git rev-parse --short=12 HEAD) .
#   docker run --rm -p 8080:8080 -v confab-data:/var/lib/confab confab
#
# Configure with CONFAB__SECTION__KEY environment variables, or mount a file
# and point CONFAB_CONFIG at it:
#   docker run … -v $PWD/config.toml:/etc/confab/config.toml:ro \
#              -e CONFAB_CONFIG=/etc/confab/config.toml confab
# The environment variables set below beat the file's values: override them
# with -e when the file should decide.

# ---- build ------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
# The git revision shown by `confab --version` and confab_build_info
# (.git is not sent to the build; without this it says "unknown").
ARG CONFAB_GIT_REVISION=""
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin confab \
    && install -m 0755 target/release/confab /usr/local/bin/confab

# ---- run --------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: rediss:// and TLS to Postgres. curl: the HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/confab \
       --shell /usr/sbin/nologin confab \
    && install -d -o confab -g confab -m 0700 /var/lib/confab
COPY --from=build /usr/local/bin/confab /usr/local/bin/confab

ENV CONFAB__SERVER__BIND=0.0.0.0:8080 \
    CONFAB__STORAGE__DATA_DIR=/var/lib/confab
USER confab
WORKDIR /var/lib/confab
# Embedded mode keeps its SQLite database and generated JWT secret here.
VOLUME ["/var/lib/confab"]
EXPOSE 8080

# /healthz: the process is alive and serving. (Not /readyz: that turns 503
# while Postgres or Redis is down, and restarting confab would not help.)
# Assumes plain HTTP on port 8080; change it if you enable [server.tls].
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1

# SIGTERM (docker stop): close sockets with 1001, flush, exit 0. Give it more
# time than Docker's default 10 s: docker stop -t 30, or stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/confab"]
CMD ["serve"]
