"""The web page at ``/`` in a real headless Chromium, against the real service on loopback.

The service runs under uvicorn in a thread over a tiny real catalog built from
``../shared/stl-fashion``; the page is driven like a shopper would: upload a scene, read the
grid, toggle the attention heatmap, upload a non-image, pick a sample scene, on a desktop and a
phone-sized screen. Screenshots go to ``test-artifacts/browser/`` (look at them).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import IN_CI, REPO
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("CTL_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CTL_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
SHOTS = REPO / "test-artifacts" / "browser"
K = 4  # products per category asked for; the tiny catalog holds PER_CATEGORY = 5
MAX_UPLOAD_BYTES = 1_000_000  # small, so a too-large photo is cheap to make
WAIT_S = 20.0
# Without the background-networking flags Chromium's own connections are refused offline.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


@dataclass(frozen=True)
class Server:
    """The running service and what it serves."""

    url: str
    categories: list[str]
    scenes: list[Path]
    artifacts: Path


@pytest.fixture(scope="module")
def browser_paths() -> tuple[Path, Path]:
    """Chromium and chromedriver; .ci/run installs them, elsewhere their absence skips."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        reason = (
            f"no headless browser: {', '.join(missing)} missing "
            "(apt-get install -y chromium chromium-driver)"
        )
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture(scope="module")
def server(stl_dir: Path) -> Iterator[Server]:
    """The real app under uvicorn on a free loopback port, over a tiny real catalog."""
    import uvicorn
    from service_support import copy_artifacts

    from service.app import create_app
    from service.config import Settings

    tmp = Path(tempfile.mkdtemp(prefix="ctl-browser-"))
    artifacts = copy_artifacts(stl_dir, tmp)  # a test here sets product attributes
    scenes_dir = stl_dir / "images" / "scenes"
    settings = Settings(
        data_dir=stl_dir,
        artifacts_dir=artifacts,
        samples_dir=scenes_dir,
        samples_count=4,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        redis_url=None,
    )
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not uv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the service did not start under uvicorn")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url + "categories", timeout=10) as resp:
            categories = [c["name"] for c in json.load(resp)["categories"]]
        yield Server(url, categories, sorted(scenes_dir.glob("*.jpg")), artifacts)
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def driver(browser_paths: tuple[Path, Path]) -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, chromedriver = browser_paths
    SHOTS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="ctl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=DriverService(str(chromedriver)), options=options)
    drv.set_page_load_timeout(WAIT_S)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_script_errors(driver: Any) -> Iterator[None]:
    """Every test also fails on an uncaught JavaScript error in the page."""
    driver.get_log("browser")  # drop what earlier tests left
    yield
    errors = [e["message"] for e in driver.get_log("browser") if e["source"] == "javascript"]
    assert not errors, f"JavaScript errors in the page: {errors}"


# ------------------------------------------------------------------ helpers


def wait_for(drv: Any, script: str, what: str, *args: Any) -> Any:
    """Poll a JS expression (``return ...``) until it is truthy; fail naming ``what``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, WAIT_S, poll_frequency=0.1).until(
            lambda d: d.execute_script(script, *args)
        )
    except TimeoutException:
        message = drv.execute_script("return document.getElementById('message').innerText")
        pytest.fail(f"timed out waiting for {what}; page message: {message!r}")


def open_page(drv: Any, server: Server, *, phone: bool = False) -> None:
    """Load ``/`` (on a 390x844 phone screen when asked) and wait for categories and samples."""
    if phone:
        drv.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
        )
    else:
        drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    drv.get(server.url)
    wait_for(drv, "return document.body.dataset.ready === 'true'", "the page to load")


def screenshot(drv: Any, name: str) -> Path:
    """A full-page PNG under test-artifacts/browser/."""
    metrics = drv.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = drv.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path = SHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def choose_categories(drv: Any, names: list[str]) -> None:
    """Tick exactly ``names`` among the category chips."""
    drv.execute_script(
        "for (const b of document.querySelectorAll('input[name=category]'))"
        " b.checked = arguments[0].includes(b.value);",
        names,
    )


def set_k(drv: Any, k: int) -> None:
    from selenium.webdriver.common.by import By

    box = drv.find_element(By.ID, "k")
    box.clear()
    box.send_keys(str(k))


def upload(drv: Any, path: Path) -> None:
    from selenium.webdriver.common.by import By

    drv.find_element(By.ID, "file").send_keys(str(path))


GRID_STATE = """
return [...document.querySelectorAll('.category-result')].map(s => ({
  category: s.dataset.category,
  ids: [...s.querySelectorAll('.product')].map(p => p.dataset.productId),
  ranks: [...s.querySelectorAll('.rank')].map(r => r.textContent),
  scores: [...s.querySelectorAll('.score')].map(r => parseFloat(r.textContent.replace('d*', ''))),
  loaded: [...s.querySelectorAll('.product img')].map(i => i.complete && i.naturalWidth > 0),
}));
"""

IMAGES_SETTLED = """
const imgs = [...document.querySelectorAll('.product img')];
return imgs.length > 0 && imgs.every(i => i.complete);
"""

HEATMAP_STATE = """
const c = document.getElementById('heatmap');
const photo = document.getElementById('photo').getBoundingClientRect();
const box = c.getBoundingClientRect();
if (c.hidden || c.width === 0) return null;
const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let painted = 0;
for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted++;
return {
  visible: getComputedStyle(c).display !== 'none' && box.width > 0,
  painted: painted / (px.length / 4),
  sameBox: Math.abs(box.width - photo.width) < 1 && Math.abs(box.height - photo.height) < 1
    && Math.abs(box.left - photo.left) < 1 && Math.abs(box.top - photo.top) < 1,
};
"""


def results_for(drv: Any, categories: list[str], k: int) -> list[dict[str, Any]]:
    """Wait until the grid holds ``k`` products per category with every image settled."""
    wait_for(
        drv,
        "const s = [...document.querySelectorAll('.category-result')];"
        "return s.length === arguments[0].length && s.every((x, i) =>"
        " x.dataset.category === arguments[0][i]"
        " && x.querySelectorAll('.product').length === arguments[1]);",
        f"{k} products for each of {categories}",
        categories,
        k,
    )
    wait_for(drv, IMAGES_SETTLED, "the product images")
    grid: list[dict[str, Any]] = drv.execute_script(GRID_STATE)
    return grid


def check_grid(grid: list[dict[str, Any]], k: int) -> None:
    """k distinct products per category, ranked 1..k by rising d*, every image loaded."""
    for section in grid:
        assert len(set(section["ids"])) == k, section
        assert section["ranks"] == [f"#{r}" for r in range(1, k + 1)], section
        assert section["scores"] == sorted(section["scores"]), section
        assert all(section["loaded"]), f"product images that did not load: {section}"


def toggle_heatmap(drv: Any) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    drv.find_element(By.CSS_SELECTOR, "label.switch").click()
    state: dict[str, Any] = wait_for(drv, HEATMAP_STATE, "the heatmap")
    return state


def no_horizontal_scroll(drv: Any) -> bool:
    return bool(
        drv.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    )


# ------------------------------------------------------------------ tests


def test_upload_scene_shows_products_and_heatmap(driver: Any, server: Server) -> None:
    open_page(driver, server)
    category = server.categories[0]
    choose_categories(driver, [category])
    set_k(driver, K)
    upload(driver, server.scenes[10])
    check_grid(results_for(driver, [category], K), K)

    heat = toggle_heatmap(driver)
    assert heat["visible"] and heat["sameBox"], heat
    assert heat["painted"] > 0.05, f"heatmap canvas is (nearly) empty: {heat}"
    screenshot(driver, "desktop-upload-heatmap")

    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "label.switch").click()
    assert driver.execute_script("return document.getElementById('heatmap').hidden")


def test_non_image_upload_is_explained(driver: Any, server: Server, tmp_path: Path) -> None:
    open_page(driver, server)
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a photo\n")
    upload(driver, notes)
    text = wait_for(
        driver,
        "const m = document.getElementById('message'); return !m.hidden && m.innerText;",
        "the error message",
    )
    assert "not a photo" in text and "notes.txt" in text, text
    assert driver.execute_script("return document.querySelectorAll('.product').length") == 0
    screenshot(driver, "desktop-not-an-image")


def test_too_large_upload_is_explained(driver: Any, server: Server, tmp_path: Path) -> None:
    open_page(driver, server)
    big = tmp_path / "huge.png"
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > MAX_UPLOAD_BYTES
    upload(driver, big)
    text = wait_for(
        driver,
        "const m = document.getElementById('message'); return !m.hidden && m.innerText;",
        "the error message",
    )
    assert "too large" in text, text
    screenshot(driver, "desktop-too-large")


def test_category_gone_from_catalog_is_explained(driver: Any, server: Server) -> None:
    """A category the page still offers but the catalog no longer has (as after a reload)."""
    open_page(driver, server)
    driver.execute_script(
        "const chip = document.querySelector('.chip').cloneNode(true);"
        "chip.querySelector('input').value = 'Hats';"
        "chip.querySelector('span').textContent = 'Hats';"
        "document.getElementById('categories').append(chip);"
    )
    choose_categories(driver, ["Hats"])
    upload(driver, server.scenes[3])
    text = wait_for(
        driver,
        "const m = document.getElementById('message'); return !m.hidden && m.innerText;",
        "the error message",
    )
    assert "“Hats” is not in the catalog" in text, text
    assert server.categories[0] in text, f"the valid categories are not listed: {text}"
    chips = driver.execute_script(
        "return [...document.querySelectorAll('input[name=category]')].map(b => b.value)"
    )
    assert chips == server.categories
    screenshot(driver, "desktop-unknown-category")


def test_sample_scene_with_several_categories(driver: Any, server: Server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(driver, server)
    categories = server.categories[:2]
    choose_categories(driver, categories)
    set_k(driver, K)
    samples = driver.find_elements(By.CSS_SELECTOR, "#samples .sample")
    assert len(samples) == 4
    samples[1].click()
    check_grid(results_for(driver, categories, K), K)
    assert "selected" in samples[1].get_attribute("class")

    Select(driver.find_element(By.ID, "heatmap-category")).select_by_value(categories[1])
    heat = toggle_heatmap(driver)
    assert heat["painted"] > 0.05, heat
    screenshot(driver, "desktop-sample-two-categories")


def test_phone_screen(driver: Any, server: Server) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, server, phone=True)
    assert driver.execute_script("return window.innerWidth") == 390
    category = server.categories[0]
    choose_categories(driver, [category])
    set_k(driver, K)
    driver.find_elements(By.CSS_SELECTOR, "#samples .sample")[0].click()
    check_grid(results_for(driver, [category], K), K)
    heat = toggle_heatmap(driver)
    assert heat["visible"] and heat["sameBox"], heat
    assert no_horizontal_scroll(driver), "the page scrolls sideways on a phone"
    screenshot(driver, "phone-sample-heatmap")
    upload(driver, Path(__file__))
    wait_for(driver, "return !document.getElementById('message').hidden", "the error message")
    assert no_horizontal_scroll(driver)
    screenshot(driver, "phone-not-an-image")


def _requests(server: Server, endpoint: str, method: str) -> float:
    """Requests the service has counted for one route (from /metrics)."""
    with urllib.request.urlopen(server.url + "metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ctl_http_requests_total{") and (
            f'endpoint="{endpoint}"' in line and f'method="{method}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_switching_categories_asks_about_the_stored_scene(driver: Any, server: Server) -> None:
    """One upload (POST /scenes); every later category is a GET, without the photo again."""
    from selenium.webdriver.common.by import By

    open_page(driver, server)
    first, second = server.categories[:2]
    choose_categories(driver, [first])
    set_k(driver, K)
    uploads = _requests(server, "/scenes", "POST")
    questions = _requests(server, "/scenes/{scene_id}/complete-the-look", "GET")
    upload(driver, server.scenes[12])
    check_grid(results_for(driver, [first], K), K)
    choose_categories(driver, [second])
    driver.find_element(By.ID, "go").click()
    check_grid(results_for(driver, [second], K), K)
    assert _requests(server, "/scenes", "POST") == uploads + 1, "the photo was sent again"
    assert _requests(server, "/scenes/{scene_id}/complete-the-look", "GET") == questions + 2
    assert _requests(server, "/complete-the-look", "POST") == 0


CARDS = """
const shown = (e) => (e.hidden ? null : e.innerText);
return [...document.querySelectorAll('.product')].map(p => ({
  id: p.dataset.productId,
  title: shown(p.querySelector('.product-title')),
  price: shown(p.querySelector('.price')),
  out: !p.querySelector('.stock-badge').hidden,
}));
"""


def test_titles_prices_and_the_in_stock_switch(driver: Any, server: Server) -> None:
    """A shop's titles and prices are shown; an out-of-stock product only with the switch off."""
    from selenium.webdriver.common.by import By

    from index.store import IndexStore

    open_page(driver, server)
    category = server.categories[0]
    choose_categories(driver, [category])
    set_k(driver, K)
    upload(driver, server.scenes[14])
    ids = results_for(driver, [category], K)[0]["ids"]
    store = IndexStore.for_artifacts(server.artifacts)
    store.attributes.update(
        {
            ids[0]: {"title": "Red boot", "price": 49.9, "currency": "EUR", "in_stock": False},
            ids[1]: {"title": "Blue bag", "price": 12.0},
        }
    )
    try:

        def followed() -> bool:
            with urllib.request.urlopen(f"{server.url}products/{ids[0]}", timeout=10) as resp:
                return json.load(resp)["in_stock"] is False

        deadline = time.monotonic() + WAIT_S
        while not followed():
            assert time.monotonic() < deadline, "the service never saw the new attributes"
            time.sleep(0.1)
        driver.find_element(By.ID, "go").click()
        wait_for(
            driver,
            "return !document.querySelector(`.product[data-product-id='${arguments[0]}']`)"
            " && document.querySelectorAll('.product').length === arguments[1]",
            "the out-of-stock product to leave the grid",
            ids[0],
            K,
        )
        cards = {c["id"]: c for c in driver.execute_script(CARDS)}
        assert cards[ids[1]]["title"] == "Blue bag" and "12.00" in cards[ids[1]]["price"]
        assert not cards[ids[1]]["out"]
        screenshot(driver, "desktop-in-stock-only")

        driver.find_element(By.CSS_SELECTOR, "label.stock-switch").click()
        wait_for(
            driver,
            "return !!document.querySelector(`.product[data-product-id='${arguments[0]}']`)",
            "the out-of-stock product back with the switch off",
            ids[0],
        )
        cards = {c["id"]: c for c in driver.execute_script(CARDS)}
        red = cards[ids[0]]
        assert red["title"] == "Red boot" and "49.90" in red["price"] and red["out"], red
        screenshot(driver, "desktop-out-of-stock-shown")
    finally:
        store.attributes.update({ids[0]: {}, ids[1]: {}}, replace=True)
        if not driver.find_element(By.ID, "in-stock").is_selected():
            driver.find_element(By.CSS_SELECTOR, "label.stock-switch").click()
