# The one-shot build job: features, train, export and index from a mounted data directory into
# the artifacts volume (`ctl quickstart --no-serve`; steps whose output is current are skipped).
# Build from the repository root: docker build -f docker/job.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CTL_DATA_DIR=/data CTL_WORK_DIR=/work CTL_ARTIFACTS_DIR=/artifacts

WORKDIR /app
# The locked training set first, so code changes do not reinstall it.
COPY requirements/train.txt ./requirements/
RUN pip install -r requirements/train.txt
COPY pyproject.toml README.md cli.py ./
COPY service ./service
COPY model ./model
COPY index ./index
COPY training ./training
RUN pip install --no-deps .

# The same uid as the API image, so the API can write new index versions into the volume.
RUN useradd --create-home --uid 10001 ctl && mkdir -p /work /artifacts && chown ctl /work /artifacts
USER ctl
VOLUME ["/work", "/artifacts"]
CMD ["ctl", "quickstart", "--no-serve", "--data", "/data", "--work", "/work", "--artifacts", "/artifacts"]
