# One image for every Cardline process; docker-compose.yml picks the role by command
# (`db upgrade`, `relay`, `worker`, `station --id ...`, `demo --seed-only`, `status`).
# Health checks are set per service in docker-compose.yml (`python -m ops.healthcheck`),
# since what "healthy" means depends on the role.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CARDLINE_DATA_DIR=/data

# DejaVu Sans: the font of card faces and PIN letters. pcscd's client library and CUPS's
# for the real station drivers (the image serves every role, stations on real readers and
# printers included, so it installs the pcsc and cups extras); swig, gcc and the -dev
# packages only to build pyscard and pycups, removed again after the install below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-dejavu-core libpcsclite1 libcups2 \
       opensc-pkcs11 \
    && rm -rf /var/lib/apt/lists/*

# A non-root user that owns /data, so a fresh named volume mounted there is writable.
RUN groupadd --system --gid 10001 cardline \
    && useradd --system --uid 10001 --gid cardline --create-home \
        --home-dir /home/cardline --shell /usr/sbin/nologin cardline \
    && install -d -o cardline -g cardline -m 0750 /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY db ./db
COPY producers ./producers
COPY workers ./workers
COPY stations ./stations
COPY ops ./ops
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc swig libpcsclite-dev libcups2-dev \
    && pip install --no-cache-dir '.[pcsc,cups]' \
    && apt-get purge -y --auto-remove gcc swig libpcsclite-dev libcups2-dev \
    && rm -rf /var/lib/apt/lists/* build ./*.egg-info

USER cardline
ENTRYPOINT ["cardline"]
CMD ["--help"]
