# The one-shot build job: features, train, export and index from a mounted data directory into
# the artifacts volume (`ctl quickstart --no-serve`; steps whose output is current are skipped).
# Build from the repository root: docker build -f docker/job.Dockerfile .
# BASE_IMAGE as in api.Dockerfile; the wheels come from docker/wheels/train/ (docker/build-local --job).
ARG BASE_IMAGE=python:3.11-slim

# Stage 1: the locked training set into /opt/venv (kept apart from the code, so code changes do
# not reinstall it), and the project as a wheel; the wheels themselves stay in this stage.
FROM ${BASE_IMAGE} AS deps
ARG PIP_NO_INDEX=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_FIND_LINKS=/wheels \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/wheels/train /wheels
COPY requirements/train.txt ./requirements/
RUN python3 -m venv /opt/venv && pip install -r requirements/train.txt
COPY pyproject.toml README.md cli.py ./
COPY runtime ./runtime
COPY model ./model
COPY index ./index
COPY service ./service
COPY batch ./batch
COPY training ./training
RUN pip wheel --no-deps --wheel-dir /dist .

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH \
    CTL_DATA_DIR=/data CTL_WORK_DIR=/work CTL_ARTIFACTS_DIR=/artifacts
COPY --from=deps /opt/venv /opt/venv
COPY --from=deps /dist /tmp/dist
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist

# The same uid as the API image, so the API can write new index versions into the volume.
RUN useradd --create-home --uid 10001 ctl && mkdir -p /work /artifacts && chown ctl /work /artifacts
USER ctl
WORKDIR /home/ctl
VOLUME ["/work", "/artifacts"]
CMD ["ctl", "quickstart", "--no-serve", "--data", "/data", "--work", "/work", "--artifacts", "/artifacts"]
