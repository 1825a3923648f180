"""``ctl download`` against a local HTTP server that misbehaves in every way the STL URLs do."""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from training.download import image_url, infer_domain, main
from training.stl import STLData


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (24, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


GOOD = {
    "a1b2c3scene1": jpeg_bytes((200, 10, 10)),
    "a1b2c3scene2": jpeg_bytes((10, 200, 10)),
    "d4e5f6prod1": jpeg_bytes((10, 10, 200), (16, 16)),
}


def truncated_jpeg() -> bytes:
    """A JPEG whose header opens but whose pixels are cut off (so only a full decode fails)."""
    buf = io.BytesIO()
    Image.effect_noise((64, 48), 50).convert("RGB").save(buf, "JPEG")  # ~2 kB, header < 700 B
    return buf.getvalue()[:1000]


TRUNCATED = truncated_jpeg()


class Server:
    """A local image host: good files, 404s, a flaky 503, a slow answer and corrupt bodies."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.paths: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                sig = self.path.rsplit("/", 1)[-1].removesuffix(".jpg")
                with server._lock:
                    server.hits[sig] += 1
                    server.paths.append(self.path)
                    hits = server.hits[sig]
                if sig in GOOD:
                    self._send(200, GOOD[sig])
                elif sig == "f1a2b3flaky":  # fails once, then works
                    self._send(503, b"busy") if hits == 1 else self._send(200, GOOD["d4e5f6prod1"])
                elif sig == "5a5a5aslow":  # answers nothing until the test ends
                    server.release.wait(5)
                elif sig == "c0c0c0junk":
                    self._send(200, b"<html>not an image</html>")
                elif sig == "c1c1c1trunc":
                    self._send(200, TRUNCATED)
                else:
                    self._send(404, b"not found")

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/400x"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


def write_release(root: Path, name: str = "fashion.json") -> tuple[Path, Path]:
    """A released pairs file and categories file, outside the output directory."""
    root.mkdir(parents=True, exist_ok=True)
    pairs = [
        ("a1b2c3scene1", "d4e5f6prod1"),
        ("a1b2c3scene1", "f1a2b3flaky"),
        ("a1b2c3scene2", "c0c0c0junk"),
        ("a1b2c3scene2", "c1c1c1trunc"),
        ("0000ffmissing", "d4e5f6prod1"),
        ("5a5a5aslow", "0000eegone"),
        ("../../escape", "d4e5f6prod1"),
    ]
    pairs_file = root / name
    pairs_file.write_text(
        "".join(
            json.dumps({"product": p, "scene": s, "bbox": [0.1, 0.6, 0.5, 0.9]}) + "\n"
            for s, p in pairs
        ),
        encoding="utf-8",
    )
    cats_file = root / name.replace(".json", "-cat.json")
    cats = {p: "Apparel|Shoes" for _, p in pairs}
    cats_file.write_text(json.dumps(cats), encoding="utf-8")
    return pairs_file, cats_file


def run(server: Server, pairs: Path, cats: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "--pairs", str(pairs), "--categories", str(cats), "--out", str(out),
            "--base-url", server.url, "--workers", "4", "--timeout", "0.3",
            "--retries", "1", "--backoff", "0.01", "--log-every", "0", *extra,
        ]
    )  # fmt: skip


def read_failures(out: Path) -> dict[str, dict[str, object]]:
    lines = (out / "download-failures.jsonl").read_text(encoding="utf-8").splitlines()
    return {rec["sig"]: rec for rec in map(json.loads, lines)}


def test_image_url_follows_the_stl_pattern() -> None:
    sig = "0123456789abcdef"
    assert image_url("http://i.pinimg.com/400x/", sig) == (
        "http://i.pinimg.com/400x/01/23/45/0123456789abcdef.jpg"
    )


def test_infer_domain() -> None:
    assert infer_domain(Path("/x/home.json")) == "home"
    assert infer_domain(Path("fashion.json")) == "fashion"
    assert infer_domain(Path("pairs.json")) == "fashion"


def test_download_counts_every_failure_and_resumes(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs, cats = write_release(tmp_path / "release")
    out = tmp_path / "data"
    assert run(server, pairs, cats, out) == 0

    summary = capsys.readouterr().out
    assert "download: 10 files: ok 4, skipped 0 (already present), failed 6" in summary
    for line in ("http_404: 2", "timeout: 1", "not_an_image: 2", "bad_signature: 1"):
        assert f"failed {line}" in summary

    failures = read_failures(out)
    assert {sig: rec["reason"] for sig, rec in failures.items()} == {
        "0000ffmissing": "http_404",
        "0000eegone": "http_404",
        "5a5a5aslow": "timeout",
        "c0c0c0junk": "not_an_image",
        "c1c1c1trunc": "not_an_image",
        "../../escape": "bad_signature",
    }
    assert failures["5a5a5aslow"]["attempts"] == 2  # retried once
    assert failures["0000ffmissing"]["url"] == f"{server.url}/00/00/ff/0000ffmissing.jpg"
    # 404 and corrupt files are final; the timeout and the 503 were retried; bad sigs never sent.
    assert server.hits["0000ffmissing"] == 1 and server.hits["c0c0c0junk"] == 1
    assert server.hits["5a5a5aslow"] == 2 and server.hits["f1a2b3flaky"] == 2
    assert not any("escape" in p for p in server.paths)
    assert "/400x/a1/b2/c3/a1b2c3scene1.jpg" in server.paths

    # The STLData layout, with exactly the images that decode.
    data = STLData.load(out)
    assert (out / "fashion.json").read_bytes() == pairs.read_bytes()
    assert data.available_scenes() == {"a1b2c3scene1", "a1b2c3scene2"}
    assert data.available_products() == ["d4e5f6prod1", "f1a2b3flaky"]
    assert [(p.scene, p.product) for p in data.pairs_with_images()] == [
        ("a1b2c3scene1", "d4e5f6prod1"),
        ("a1b2c3scene1", "f1a2b3flaky"),
    ]
    assert data.scene_path("a1b2c3scene1").read_bytes() == GOOD["a1b2c3scene1"]
    assert not list(out.rglob(".*")), "temp files of atomic writes were left behind"
    assert data.scene_path("a1b2c3scene1").stat().st_mode & 0o777 == 0o644

    # Resume: a file broken on disk is fetched again, valid ones are skipped without a request.
    data.scene_path("a1b2c3scene2").write_bytes(b"broken")
    hits_before = server.hits.copy()
    assert run(server, pairs, cats, out) == 0
    assert "ok 1, skipped 3 (already present), failed 6" in capsys.readouterr().out
    assert server.hits["a1b2c3scene1"] == hits_before["a1b2c3scene1"]
    assert server.hits["d4e5f6prod1"] == hits_before["d4e5f6prod1"]
    assert server.hits["a1b2c3scene2"] == hits_before["a1b2c3scene2"] + 1
    assert data.scene_path("a1b2c3scene2").read_bytes() == GOOD["a1b2c3scene2"]
    assert set(read_failures(out)) == set(failures)


def test_limit_and_home_domain(server: Server, tmp_path: Path) -> None:
    pairs, cats = write_release(tmp_path / "release", "home.json")
    out = tmp_path / "home-data"
    assert run(server, pairs, cats, out, "--limit", "1") == 0
    assert (out / "home.json").is_file() and (out / "home-cat.json").is_file()
    assert sorted(p.name for p in out.rglob("*.jpg")) == ["a1b2c3scene1.jpg", "d4e5f6prod1.jpg"]
    assert read_failures(out) == {}
    assert sum(server.hits.values()) == 2


def test_missing_input_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cats = tmp_path / "cat.json"
    cats.write_text("{}", encoding="utf-8")
    missing = tmp_path / "nope.json"
    args = ["--pairs", str(missing), "--categories", str(cats), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert f"--pairs {missing}: no such file" in caplog.text


def test_bad_flags_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--pairs", "p", "--categories", "c", "--out", "o", "--workers", "0"])
