# llm-do service container image.
#   docker build -t llm-do .
#   docker run --rm -p 127.0.0.1:8000:8000 llm-do
# or use docker-compose.yml (see docs/docker.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LLM_DO_DATA_DIR=/srv/data

# Unprivileged user that runs the service.
RUN groupadd --system --gid 10001 llmdo \
    && useradd --system --uid 10001 --gid llmdo --home-dir /srv --no-create-home \
       --shell /usr/sbin/nologin llmdo

# Install the package (and its pinned dependencies) from pyproject.toml.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY app/ ./app/
RUN pip install --no-cache-dir . \
    && rm -rf /build

WORKDIR /srv
COPY --chown=llmdo:llmdo workers/ /srv/workers/
# The example workers' sandboxes (roots are relative to /srv, the workers folder's parent).
COPY --chown=llmdo:llmdo files/ /srv/files/
RUN mkdir -p /srv/data && chown llmdo:llmdo /srv/data

USER llmdo

EXPOSE 8000

# slim images have no curl: probe /healthz with the Python standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

# Binding 0.0.0.0 inside the container is intended; publish the port on 127.0.0.1 only.
# `llm-do serve` refuses a non-loopback address without LLM_DO_API_TOKEN: pass one with
# `docker run -e LLM_DO_API_TOKEN=...` (docker-compose.yml requires it).
CMD ["llm-do", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "/srv/workers"]
