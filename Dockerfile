# ftx server image. Build:  docker build -t ftx .
# Run:    docker run -d -v ftx-data:/data -p 7021:7021 ftx
# docs/docker.md has the details (volumes, ownership, compose, podman).

# ---- build stage: the same Debian packages the README's commands install
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      g++ make cmake pkg-config libasio-dev libcli11-dev libssl-dev libspdlog-dev libfmt-dev nlohmann-json3-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY lib lib
COPY apps apps
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DFTX_BUILD_TESTS=OFF \
 && cmake --build /build -j"$(nproc)" \
 && strip /build/ftx

# ---- runtime stage: the binary and its shared libraries only
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl3 libspdlog1.10 libfmt9 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 ftx \
 && useradd --system --uid 10001 --gid ftx --home-dir /data --no-create-home --shell /usr/sbin/nologin ftx \
 && mkdir /data && chown ftx:ftx /data
COPY --from=build /build/ftx /usr/local/bin/ftx
USER ftx:ftx
WORKDIR /data
VOLUME /data
EXPOSE 7021
# The server answers its own protocol's ping; no curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 CMD ["ftx", "ping", "-s", "127.0.0.1:7021"]
# ftx is PID 1 and handles SIGTERM itself: docker stop finishes transfers in flight (5 s at
# most) and exits 0.
ENTRYPOINT ["ftx"]
CMD ["serve", "--root", "/data", "--listen", "0.0.0.0:7021"]
