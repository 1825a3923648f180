"""The fast lane: which forms it takes, and that its answers are FastAPI's answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from service_support import post_scene, scene, serve, settings_for, tiny_artifacts
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from service.fastlane import FastLane, SimpleForm, parse_form

JPEG = b"\xff\xd8 not really \r\n-- a jpeg \xff\xd9"


def _form(data: dict[str, Any] | None = None, image: bool = True) -> tuple[bytes, bytes]:
    """(Content-Type, body) of the multipart form that httpx sends."""
    files = {"image": ("scene.jpg", JPEG, "image/jpeg")} if image else None
    request = httpx.Request("POST", "http://x/complete-the-look", data=data, files=files)
    return request.headers["content-type"].encode(), request.read()


def test_parses_what_clients_send() -> None:
    content_type, body = _form({"category": "Shoes", "k": "7", "explain": "true"})
    assert parse_form(content_type, body, 10) == SimpleForm(JPEG, "scene.jpg", "Shoes", 7, True)
    content_type, body = _form({"category": "Handbags, Wallets & Cases"})
    assert parse_form(content_type, body, 10) == SimpleForm(
        JPEG, "scene.jpg", "Handbags, Wallets & Cases", 10, False
    )


def test_parses_a_browser_style_form() -> None:
    """Quoted boundary, header case and a trailing CRLF, as browsers and curl vary them."""
    b = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    head = (
        f'--{b}\r\ncontent-disposition: form-data; name="image"; filename="me.jpg"\r\n'
        "content-type: image/jpeg\r\n\r\n"
    )
    tail = f'\r\n--{b}\r\nContent-Disposition: form-data; name="category"\r\n\r\nShoes'
    body = head.encode() + JPEG + tail.encode() + f"\r\n--{b}--\r\n".encode()
    content_type = f'multipart/form-data; boundary="{b}"'.encode()
    assert parse_form(content_type, body, 10) == SimpleForm(JPEG, "me.jpg", "Shoes", 10, False)


def _replace(old: bytes, new: bytes) -> tuple[bytes, bytes]:
    content_type, body = _form({"category": "Shoes", "k": "3"})
    assert old in body
    return content_type, body.replace(old, new, 1)


DECLINED = {
    "no image": _form({"category": "Shoes"}, image=False),
    "no category": _form({"k": "3"}),
    "unknown field": _form({"category": "Shoes", "note": "x"}),
    "repeated field": _form({"category": ["Shoes", "Hats"]}),
    "k not digits": _form({"category": "Shoes", "k": "3.0"}),
    "k empty": _form({"category": "Shoes", "k": ""}),
    "k negative": _form({"category": "Shoes", "k": "-1"}),
    "explain not true/false": _form({"category": "Shoes", "explain": "yes"}),
    "image without filename": _replace(b'; filename="scene.jpg"', b""),
    "field with a filename": _replace(b'name="category"', b'name="category"; filename="c.txt"'),
    "extra part header": _replace(b"Content-Type: image/jpeg", b"Content-Transfer-Encoding: 8bit"),
    "category not UTF-8": _replace(b"Shoes", b"Sh\xffes"),
}


@pytest.mark.parametrize("kind", list(DECLINED))
def test_declines_anything_else(kind: str) -> None:
    content_type, body = DECLINED[kind]
    assert parse_form(content_type, body, 10) is None


def test_declines_broken_framing() -> None:
    content_type, body = _form({"category": "Shoes"})
    delimiter = b"--" + content_type.split(b"boundary=")[1]
    assert parse_form(content_type, body, 10) is not None
    assert parse_form(content_type, b"preamble\r\n" + body, 10) is None
    assert parse_form(content_type, body + b"epilogue", 10) is None
    assert parse_form(content_type, body[:-20], 10) is None  # no closing delimiter
    assert parse_form(b"multipart/form-data", body, 10) is None  # no boundary
    assert parse_form(b"application/x-www-form-urlencoded", body, 10) is None
    # A delimiter inside a part that is not followed by CRLF is for the full parser to judge.
    smuggled = body.replace(JPEG, JPEG + b"\r\n" + delimiter + b"X")
    assert parse_form(content_type, smuggled, 10) is None


def _full_parse(content_type: bytes, body: bytes) -> list[tuple[str, object]]:
    """The fields as FastAPI's multipart parser reads them (files as (filename, bytes))."""

    async def parse() -> list[tuple[str, object]]:
        async def stream() -> Any:
            yield body

        headers = Headers({"content-type": content_type.decode("latin-1")})
        form = await MultiPartParser(headers, stream()).parse()
        items: list[tuple[str, object]] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                items.append((name, (value.filename, await value.read())))
            else:
                items.append((name, value))
        return items

    return asyncio.run(parse())


# Bytes that look like framing: CRLFs, dashes, quotes, and the form's own boundary (<B>).
_TRICKY = st.lists(
    st.sampled_from(
        [
            *(b"\r\n", b"--", b"\r\n--<B>", b"--<B>", b'"', b"\r\n\r\n", b"x", b"\xff", b" "),
            b'Content-Disposition: form-data; name="k"\r\n\r\n5',
            b'\r\n--<B>\r\nContent-Disposition: form-data; name="explain"\r\n\r\ntrue',
        ]
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(
    image=st.binary(max_size=64) | _TRICKY.map(lambda b: b.replace(b"<B>", b"")),
    category=st.text(max_size=12).filter(lambda c: "\r" not in c and "\n" not in c),
    k=st.none() | st.integers(0, 999),
    explain=st.none() | st.booleans(),
    cut=st.integers(0, 400),
    at_delimiter=st.booleans(),
    insert=_TRICKY,
)
def test_agrees_with_the_full_parser(
    image: bytes,
    category: str,
    k: int | None,
    explain: bool | None,
    cut: int,
    at_delimiter: bool,
    insert: bytes,
) -> None:
    """Well-formed forms parse to exactly their fields; whatever the lane takes after a
    mutation of the bytes, FastAPI's own parser reads the same way."""
    data: dict[str, str] = {"category": category}
    if k is not None:
        data["k"] = str(k)
    if explain is not None:
        data["explain"] = str(explain).lower()
    request = httpx.Request(
        "POST", "http://x/", data=data, files={"image": ("s.jpg", image, "image/jpeg")}
    )
    content_type, body = request.headers["content-type"].encode(), request.read()
    boundary = content_type.split(b"boundary=")[1]
    expected = SimpleForm(image, "s.jpg", category, 10 if k is None else k, bool(explain))
    if b"--" + boundary not in image:  # else not well formed: httpx does not check
        assert parse_form(content_type, body, 10) == expected
    if at_delimiter:  # where a part ends, so that whole parts get inserted too
        ends = [i for i in range(len(body)) if body.startswith(b"\r\n--" + boundary, i)]
        cut = ends[cut % len(ends)]
    mutated = body[:cut] + insert.replace(b"<B>", boundary) + body[cut:]
    form = parse_form(content_type, mutated, 10)
    if form is not None:
        fields = dict(_full_parse(content_type, mutated))
        assert fields["image"] == (form.filename, form.image)
        assert fields["category"] == form.category
        assert int(str(fields.get("k", 10))) == form.k
        assert str(fields.get("explain", "false")) == str(form.explain).lower()
        assert len(_full_parse(content_type, mutated)) == len(fields), "a repeated field"


@pytest.fixture(scope="module")
def client(stl_dir: Path) -> Iterator[TestClient]:
    with serve(settings_for(tiny_artifacts(stl_dir), stl_dir)) as c:
        yield c


@pytest.fixture
def lane(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, for each request the fast lane parsed, whether it answered it itself."""
    answered: list[bool] = []
    respond = FastLane._respond

    async def spy(self: FastLane, scope: Any, form: SimpleForm) -> Any:
        response = await respond(self, scope, form)
        answered.append(response is not None)
        return response

    monkeypatch.setattr(FastLane, "_respond", spy)
    return answered


def _requests(client: TestClient, status: int) -> float:
    labels = f'endpoint="/complete-the-look",method="POST",status="{status}"'
    series = f"ctl_http_requests_total{{{labels}}}"
    lines = [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith(series)]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_answers_match_fastapis(client: TestClient, stl_dir: Path, lane: list[bool]) -> None:
    category = client.get("/categories").json()["categories"][0]["name"]
    before = _requests(client, 200)
    for n, lane_first in ((11, True), (12, False)):
        data = scene(stl_dir, n)
        # An unknown extra field makes the lane decline; FastAPI ignores the field.
        extra: list[dict[str, str]] = [{}, {"x": "1"}] if lane_first else [{"x": "1"}, {}]
        first, second = (post_scene(client, data, category, 4, explain="true", **e) for e in extra)
        assert first.status_code == second.status_code == 200
        a, b = first.json(), second.json()
        assert (a.pop("cached"), b.pop("cached")) == (False, True)
        assert a == b
    assert lane == [True, True], "the lane answered both well-formed requests"
    assert _requests(client, 200) == before + 4, "lane answers are counted under their route"


def test_a_bad_image_gets_fastapis_error(
    client: TestClient, stl_dir: Path, lane: list[bool]
) -> None:
    category = client.get("/categories").json()["categories"][0]["name"]
    truncated = scene(stl_dir, 13)[:3000]
    r = post_scene(client, truncated, category)
    assert r.status_code == 422 and "truncated" in r.json()["detail"]
    assert lane == [True]
    r = post_scene(client, b"plain text", category)
    assert r.status_code == 415 and "not an image" in r.json()["detail"]


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [({"category": "Hats"}, 422, "valid categories"), ({"k": "101"}, 422, "between 1 and 100")],
)
def test_invalid_values_are_left_to_fastapi(
    client: TestClient,
    stl_dir: Path,
    lane: list[bool],
    fields: dict[str, str],
    status: int,
    words: str,
) -> None:
    category = client.get("/categories").json()["categories"][0]["name"]
    before = _requests(client, status)
    r = client.post(
        "/complete-the-look",
        files={"image": ("s.jpg", scene(stl_dir, 0), "image/jpeg")},
        data={"category": category, "k": "3", **fields},
    )
    assert r.status_code == status and words in r.json()["detail"]
    assert lane == [False], "the lane parsed the form but left the answer to FastAPI"
    assert _requests(client, status) == before + 1


def test_without_room_in_the_upload_budget_the_lane_leaves_the_request_to_fastapi(
    client: TestClient, stl_dir: Path, lane: list[bool]
) -> None:
    category = client.get("/categories").json()["categories"][0]["name"]
    budget = client.app.state.upload_budget  # type: ignore[attr-defined]
    data = scene(stl_dir, 14)
    spare = budget.capacity - budget.held - len(data)  # room for the file, not for 2x the body
    assert budget.try_take(spare)
    try:
        r = post_scene(client, data, category)
    finally:
        budget.give(spare)
    assert r.status_code == 200, r.text
    assert lane == [], "the lane buffered a body the budget had no room for"
    assert budget.held == 0
