# syntax=docker/dockerfile:1
# The feedback-stream worker (and the `feedback-stream` CLI: topics, produce, ...).
#   docker build -t feedback-stream:0.1.0 .
#   docker run --rm -e FEEDBACK_BOOTSTRAP_SERVERS=kafka:9092 feedback-stream:0.1.0 worker

# --- build: install the package and its pinned dependencies into a venv ----------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler only in this stage: a dependency without a wheel for the platform
# (e.g. faust-streaming's optional Cython extensions) still builds.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what `pip install .` needs (see .dockerignore): tests and ops stay out.
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY models ./models
COPY tools ./tools
RUN pip install .

# --- runtime: same base, no build context, non-root ------------------------------
FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 feedback \
    && useradd --system --uid 10001 --gid feedback --home-dir /app --create-home feedback \
    && mkdir -p /app/var && chown feedback:feedback /app/var
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FEEDBACK_WEB_HOST=0.0.0.0 \
    FEEDBACK_WEB_PORT=6066 \
    FEEDBACK_STATE_DIR=/app/var
WORKDIR /app
USER feedback
EXPOSE 6066
# /readyz answers 200 once the worker is ready (broker reachable, partitions
# assigned, table recovered), 503 otherwise. slim has no curl: use Python itself.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FEEDBACK_WEB_PORT', '6066'), timeout=3)"]
ENTRYPOINT ["feedback-stream"]
CMD ["worker"]
