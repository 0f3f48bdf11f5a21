# Build the wheel (with the compiled core) in a full image, run it in a slim one.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN VAULT_OBSERVE_REQUIRE_EXTENSIONS=1 pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 vault-observe && mkdir -p /run/vault-observe \
    && chown vault-observe /run/vault-observe
USER vault-observe
ENTRYPOINT ["vault-observe"]
CMD ["--socket-path", "/run/vault-observe/audit.sock", "--stdout"]
