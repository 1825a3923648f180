"""The serving-info gauge under several workers (``ctl serve --workers``): only the versions
some live worker serves, and no warning per change. Each worker is a process of its own here,
as under uvicorn: prometheus_client picks its multi-process mode when it is imported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

WORKER = """
import os, sys
from service.metrics import ServiceMetrics

metrics = ServiceMetrics()
for pair in sys.argv[2:]:
    metrics.serving(*pair.split("/"))
if sys.argv[1] == "killed":
    os._exit(0)  # no cleanup, as a worker killed and restarted by uvicorn
sys.stdout.write(metrics.exposition().decode())
"""


def _worker(directory: Path, fate: str, *pairs: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", WORKER, fate, *pairs],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


def test_serving_info_shows_only_the_served_versions_without_warnings(tmp_path: Path) -> None:
    _worker(tmp_path, "killed", "m1/i1")  # a worker that died serving m1 / i1
    live = _worker(tmp_path, "live", "m1/i1", "m1/i2")  # its replacement, then a catalog change
    served = re.findall(r"^ctl_serving_info\{(.*)\} (\S+)$", live.stdout, re.M)
    assert served == [('index_version="i2",model_version="m1"', "1.0")], live.stdout
    assert "Removal of labels" not in live.stderr, live.stderr
