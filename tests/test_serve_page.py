"""The page `tsloc serve` shows at /, as a user sees it: headless Chromium (Debian's, driven by
Playwright) with every request off this server refused, an image chosen in the file input, the
answer drawn. `python tests/test_serve_page.py MODEL IMAGE OUT.png` takes the screenshot in docs/."""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from browser import chromium
from conftest import stub_model


@contextmanager
def running(app):
    """A real uvicorn server for `app` on a free port of 127.0.0.1, in a thread: its base URL."""
    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def try_page(base: str, image: Path, screenshot: Path | None = None, mode: str = "predict") -> dict:
    """Open the page, choose `image`, wait for the drawn answer: what the page shows, and every
    request it made elsewhere (refused)."""
    from playwright.sync_api import sync_playwright
    elsewhere = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1000, "height": 700})

        def gate(route):
            if route.request.url.startswith(base):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()
        page.route("**/*", gate)
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('about').textContent.startsWith('Model')", timeout=30000)
        page.check(f"input[name=mode][value={mode}]")
        page.set_input_files("#file", str(image))
        page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=30000)
        shown = page.evaluate("""() => {
            const c = document.getElementById('canvas'), ctx = c.getContext('2d');
            const px = ctx.getImageData(0, 0, c.width, c.height).data;
            let red = 0;
            for (let i = 0; i < px.length; i += 4) if (px[i] > 240 && px[i + 1] < 40 && px[i + 2] < 90) red++;
            return {state: document.body.dataset.state, error: document.getElementById('error').textContent,
                    name: document.getElementById('answer-name').textContent, about: document.getElementById('about').textContent,
                    rows: [...document.querySelectorAll('#topk tbody tr')].map(r => r.cells[1].textContent),
                    answer: JSON.parse(document.getElementById('answer').textContent || 'null'),
                    canvas: [c.width, c.height], red_pixels: red};
        }""")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return shown | {"elsewhere": elsewhere}


@pytest.mark.slow  # starts a browser and a server
def test_the_page_draws_the_answer_to_a_chosen_image(tmp_path):
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium for the page test")
        pytest.skip("no chromium")
    pytest.importorskip("playwright")
    from PIL import Image

    from tsloc.serving.serve import ServeConfig, create_app
    import tsloc
    model = stub_model(tmp_path / "m.pt")
    image = tmp_path / "sign.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image)
    expected = tsloc.load(model, device="cpu").predict(image)
    with running(create_app(ServeConfig(model=str(model), device="cpu"))) as base:
        shown = try_page(base, image, tmp_path / "page.png")
    assert shown["state"] == "done" and not shown["error"], shown
    assert shown["elsewhere"] == []
    assert shown["answer"] == expected | {"path": "sign.png"}
    assert shown["name"].startswith(expected["class_name"]) and shown["rows"] == [t["class_name"] for t in expected["top_k"]]
    assert "62 classes" in shown["about"]
    assert shown["canvas"][0] >= 200 and shown["red_pixels"] > 100  # the image drawn, the box over it
    assert (tmp_path / "page.png").stat().st_size > 10_000
    Image.open(image).save(tmp_path / "sign.ppm")  # the data sets' format, which browsers do not decode
    with running(create_app(ServeConfig(model=str(model), device="cpu"))) as base:
        ppm = try_page(base, tmp_path / "sign.ppm")
    assert ppm["state"] == "done" and ppm["answer"] == expected | {"path": "sign.ppm"}, ppm
    assert ppm["canvas"] == shown["canvas"] and ppm["red_pixels"] > 100


@pytest.mark.slow  # starts a browser and a server
def test_the_page_draws_the_signs_found_in_a_street_frame(tmp_path):
    """With a detector served, "a street frame" goes to /v1/detect and every detection is drawn."""
    if chromium() is None:
        pytest.skip("no chromium")
    pytest.importorskip("playwright")
    from PIL import Image

    import tsloc
    from tsloc.scenes import model as det
    from tsloc.serving.serve import ServeConfig, create_app
    model, detector = stub_model(tmp_path / "m.pt"), tmp_path / "d.pt"
    det.save(detector, det.build_detector("none", fpn_channels=32, head_convs=1),
             {"fpn_channels": 32, "head_convs": 1, "frozen_blocks": 4})
    frame = tmp_path / "frame.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 320, 3), dtype=np.uint8)).save(frame)
    expected = tsloc.load(model, detector=detector, device="cpu").detect(frame, min_score=0.0, min_probability=0.0)
    config = ServeConfig(model=str(model), detector=str(detector), device="cpu", min_score=0.0, detect_min_probability=0.0)
    with running(create_app(config)) as base:
        shown = try_page(base, frame, mode="detect")
    assert shown["state"] == "done" and shown["answer"] == expected | {"path": "frame.jpg"}, shown
    assert expected["detections"] and shown["name"] == f"{len(expected['detections'])} sign(s) found"
    assert len(shown["rows"]) == len(expected["detections"]) and shown["red_pixels"] > 100
    assert "A detector is served too" in shown["about"] and shown["canvas"] == [480, 300]


@pytest.mark.slow  # starts a browser and a server
def test_the_openapi_page_draws_offline(tmp_path):
    """FastAPI's /docs page (Swagger UI) from the server's own files: every endpoint listed, nothing
    fetched elsewhere."""
    if chromium() is None:
        pytest.skip("no chromium")
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    from tsloc.serving.serve import ServeConfig, create_app
    elsewhere = []
    with running(create_app(ServeConfig(model=str(stub_model(tmp_path / "m.pt")), device="cpu"))) as base:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base)
                       else (elsewhere.append(route.request.url), route.abort()))
            page.goto(base + "/docs")
            page.wait_for_selector(".opblock", timeout=30000)
            paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
            browser.close()
    assert {"/v1/predict", "/v1/detect", "/v1/model", "/healthz"} <= {p.replace("\u200b", "") for p in paths}, paths
    assert elsewhere == []


if __name__ == "__main__":  # the screenshot in docs/: python tests/test_serve_page.py belgiumtsc IMAGE docs/serve_page.png
    from tsloc.serving.serve import ServeConfig, create_app
    with running(create_app(ServeConfig(model=sys.argv[1]))) as base:
        print(try_page(base, Path(sys.argv[2]), Path(sys.argv[3])))
