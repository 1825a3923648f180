# The API image: ONNX Runtime + FAISS + FastAPI, no torch (the locked serving set, CPU builds).
# Build from the repository root: docker build -f docker/api.Dockerfile .
# BASE_IMAGE: any Python 3.11 image; the default is the public one. Where no registry is
# reachable, docker/build-local builds a Debian one and the wheels (docker/compose.local.yml).
ARG BASE_IMAGE=python:3.11-slim

# Stage 1: the locked serving set into /opt/venv, and the project as a wheel. pip takes the
# wheels in docker/wheels/serve/ first (empty unless docker/build-local filled it); PIP_NO_INDEX=1
# forbids the index. The wheels stay in this stage: the image carries only what they install.
FROM ${BASE_IMAGE} AS deps
ARG PIP_NO_INDEX=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_FIND_LINKS=/wheels \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/wheels/serve /wheels
COPY requirements/serve.txt ./requirements/
RUN python3 -m venv /opt/venv && pip install -r requirements/serve.txt
COPY pyproject.toml README.md cli.py ./
COPY runtime ./runtime
COPY index ./index
COPY service ./service
# model/ and training/ (torch) stay out: the API needs only runtime/, index/ and service/.
RUN pip wheel --no-deps --wheel-dir /dist .

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH \
    CTL_ARTIFACTS_DIR=/artifacts CTL_HOST=0.0.0.0 CTL_PORT=8000
COPY --from=deps /opt/venv /opt/venv
COPY --from=deps /dist /tmp/dist
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist \
    && python -c "import service.app, sys; assert 'torch' not in sys.modules"

# The same uid as the job image, which writes the artifacts volume first.
RUN useradd --create-home --uid 10001 ctl && mkdir -p /artifacts && chown ctl /artifacts
USER ctl
WORKDIR /home/ctl
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["ctl", "serve", "--artifacts", "/artifacts", "--host", "0.0.0.0", "--port", "8000"]
