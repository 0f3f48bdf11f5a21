# Build the wheel (with the compiled core) in a full image, run it in a slim one.
# Both stages use the same pinned base, so the wheel's Python and glibc match the runtime.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN VAULT_OBSERVE_REQUIRE_EXTENSIONS=1 pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
# /run/vault-observe holds the socket; /var/lib/vault-observe the --checkpoint of follow mode.
# A named volume mounted on either starts with this owner and mode.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && groupadd --system --gid 10001 vault-observe \
    && useradd --system --uid 10001 --gid vault-observe --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin vault-observe \
    && install -d -o vault-observe -g vault-observe -m 0755 /run/vault-observe \
    && install -d -o vault-observe -g vault-observe -m 0750 /var/lib/vault-observe
USER 10001:10001
# /metrics and /healthz (--metrics-address)
EXPOSE 9464
# The image has no curl: the health check is Python's urllib. It needs the daemon to serve
# /healthz; with another --metrics-address, set VAULT_OBSERVE_HEALTH_URL to match.
ENV VAULT_OBSERVE_HEALTH_URL=http://127.0.0.1:9464/healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request as u; u.urlopen(os.environ['VAULT_OBSERVE_HEALTH_URL'], timeout=4); sys.exit(0)"]
ENTRYPOINT ["vault-observe"]
CMD ["--socket-path", "/run/vault-observe/audit.sock", "--metrics-address", "0.0.0.0:9464", "--stdout"]
