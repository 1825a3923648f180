# The API image: ONNX Runtime + FAISS + FastAPI, no torch (the locked serving set, CPU builds).
# Build from the repository root: docker build -f docker/api.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CTL_ARTIFACTS_DIR=/artifacts CTL_HOST=0.0.0.0 CTL_PORT=8000

WORKDIR /app
COPY requirements/serve.txt ./requirements/
RUN pip install -r requirements/serve.txt
COPY pyproject.toml README.md cli.py ./
COPY service ./service
COPY model ./model
COPY index ./index
# training/ (torch) stays out: the API needs only service/, index/ and model/runtime.py.
RUN pip install --no-deps . && python -c "import service.app, sys; assert 'torch' not in sys.modules"

# The same uid as the job image, which writes the artifacts volume first.
RUN useradd --create-home --uid 10001 ctl && mkdir -p /artifacts && chown ctl /artifacts
USER ctl
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["ctl", "serve", "--artifacts", "/artifacts", "--host", "0.0.0.0", "--port", "8000"]
