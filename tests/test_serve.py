"""The Python API (`tsloc.load`), the server (`tsloc serve`: its answers, batching, bad input) and
`--min-probability`, on the stub model (its class 3 everywhere) and real PIL images."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import numpy as np
import pytest
from PIL import Image

from conftest import png_bytes, run_cli, stub_model
from tsloc.errors import DataError

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tsloc.serving.serve import Batcher, ServeConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return stub_model(tmp_path_factory.mktemp("serve") / "m.pt")


def test_load_answers_paths_bytes_pil_and_arrays_alike(model_file, tmp_path):
    """One image in, one record out; a list in, a list out in order; the record is predict's, its box
    in pixels of the image given; the path only where a path was given."""
    import tsloc
    model = tsloc.load(model_file, device="cpu")
    data = png_bytes(60, 40)
    (tmp_path / "a.png").write_bytes(data)
    pil = Image.open(io.BytesIO(data))
    answers = model.predict([tmp_path / "a.png", data, pil, np.asarray(pil)])
    assert [a["path"] for a in answers] == [str(tmp_path / "a.png"), None, None, None]
    assert all({k: v for k, v in a.items() if k != "path"} == {k: v for k, v in answers[0].items() if k != "path"}
               for a in answers)
    one = model.predict(data)
    assert isinstance(one, dict) and one["class_id"] == 3 and len(one["top_k"]) == 5
    left, top, right, bottom = one["box"]
    assert 0 <= left < right <= 60 and 0 <= top < bottom <= 40
    assert model.info["input_size"] == 64 and len(model.info["classes"]) == 62
    with pytest.raises(DataError, match="image 1: unreadable image"):
        model.predict([data, b"not an image"])
    with pytest.raises(DataError, match="uint8"):
        model.predict(np.zeros((8, 8, 3), np.float32))


def test_the_api_names_every_bad_path_and_can_skip_past_it(model_file, tmp_path):
    import tsloc
    assert dir(tsloc) == ["Model", "__version__", "load"]
    model = tsloc.load(model_file, device="cpu")
    assert repr(model) == "tsloc.Model('m.pt', 62 classes, pytorch)"
    good, broken = tmp_path / "good.png", tmp_path / "broken.png"
    good.write_bytes(png_bytes())
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"{broken}: unreadable image"):
        model.predict([good, broken])
    with pytest.raises(DataError, match=f"{tmp_path / 'gone.png'}: no such file"):
        model.predict(tmp_path / "gone.png")
    answers = model.predict([good, broken, png_bytes(), b""], errors="skip")
    assert [a.get("error", "").split(":")[0] for a in answers] == ["", str(broken), "", "image 3"]
    assert answers[0]["class_id"] == answers[2]["class_id"] == 3 and answers[1]["path"] == str(broken)


def test_min_probability_gives_a_null_class_and_keeps_the_top_k(model_file, tmp_path):
    import tsloc
    model = tsloc.load(model_file, device="cpu")
    sure = model.predict(png_bytes())
    unsure = model.predict(png_bytes(), min_probability=min(1.0, sure["probability"] + 1e-3))
    assert sure["class_id"] == 3 and unsure["class_id"] is None and unsure["class_name"] is None
    assert unsure["top_k"] == sure["top_k"] and unsure["probability"] == sure["probability"]
    (tmp_path / "a.png").write_bytes(png_bytes())
    proc = run_cli("predict", tmp_path / "a.png", "--model", model_file, "--device", "cpu", "--min-probability", "1")
    assert proc.returncode == 0 and json.loads(proc.stdout)["class_name"] is None
    proc = run_cli("predict", tmp_path / "a.png", "--model", model_file, "--min-probability", "1.5")
    assert proc.returncode == 2 and "--min-probability must be from 0 to 1" in proc.stderr


def test_batcher_runs_what_arrives_together_as_one_batch():
    """Eight requests at once: one batch of eight, each its own answer; a lone request waits
    max_wait at most; a failing model answers every request of its batch with the error."""
    calls = []

    def run(items):
        calls.append(list(items))
        if "boom" in items:
            raise RuntimeError("model failed")
        return [x * 10 for x in items]

    async def main():
        batcher = Batcher(run, max_batch=32, max_wait=0.05)
        batcher.start()
        answers = await asyncio.gather(*(batcher(i) for i in range(8)))
        loop = asyncio.get_running_loop()
        start = loop.time()
        lone = await batcher(100)
        waited = loop.time() - start
        failed = await asyncio.gather(batcher("boom"), batcher(1), return_exceptions=True)
        await batcher.stop()
        return answers, lone, waited, failed

    answers, lone, waited, failed = asyncio.run(main())
    assert answers == [i * 10 for i in range(8)] and calls[0] == list(range(8))
    assert lone == 1000 and waited < 1.0
    assert all(isinstance(f, RuntimeError) for f in failed)


def test_batcher_never_exceeds_max_batch():
    sizes = []

    def run(items):
        sizes.append(len(items))
        return items

    async def main():
        batcher = Batcher(run, max_batch=4, max_wait=0.05)
        batcher.start()
        out = await asyncio.gather(*(batcher(i) for i in range(10)))
        await batcher.stop()
        return out

    assert asyncio.run(main()) == list(range(10)) and max(sizes) == 4 and sum(sizes) == 10


def test_the_server_answers_as_the_api_does_and_batches(model_file):
    import tsloc
    expected = tsloc.load(model_file, device="cpu").predict(png_bytes(70, 50))
    with TestClient(create_app(ServeConfig(model=str(model_file), device="cpu", max_wait_ms=50))) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        form = client.post("/v1/predict", files={"file": ("sign.png", png_bytes(70, 50), "image/png")})
        raw = client.post("/v1/predict", content=png_bytes(70, 50), headers={"content-type": "image/png"})
        assert form.status_code == raw.status_code == 200
        assert form.json() == expected | {"path": "sign.png"} and raw.json() == expected | {"path": None}
        info = client.get("/v1/model").json()
        assert info["model"]["input_size"] == 64 and len(info["model"]["classes"]) == 62
        assert info["detector"] is None and info["batching"]["max_batch"] == 32
        page = client.get("/")
        assert page.status_code == 200 and 'id="file"' in page.text and "http" not in page.text.split("<script>")[1]
        spec = client.get("/openapi.json").json()["paths"]
        assert spec.keys() >= {"/v1/predict", "/v1/detect", "/v1/model", "/healthz"}
        body = spec["/v1/predict"]["post"]["requestBody"]["content"]  # /docs offers a file picker
        assert body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary" and "image/*" in body
        assert {"400", "413"} <= spec["/v1/predict"]["post"]["responses"].keys()

        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda k: client.post("/v1/predict", content=png_bytes(30 + k, 30),
                                                          headers={"content-type": "image/png"}), range(16)))
        assert all(a.status_code == 200 and a.json()["class_id"] == 3 for a in answers)
        assert [a.json()["box"][2] <= 30 + k for k, a in enumerate(answers)] == [True] * 16
        runs = client.get("/v1/model").json()["batching"]["batches_run"]
        assert sum(int(size) * n for size, n in runs.items()) == 18 and max(map(int, runs)) > 1, runs


def _bomb() -> bytes:
    import warnings
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.new("L", (12000, 8000)).save(buf, "PNG")  # 96 million pixels in about 100 kB: over Pillow's limit
    return buf.getvalue()


@pytest.mark.parametrize("body, ctype, status, message", [
    (b"", "image/png", 400, "the request body: empty"),
    (b"hello, not an image", "image/png", 400, "the request body: unreadable image (not in an image format"),
    (png_bytes()[:200], "image/png", 400, "the request body: unreadable image"),
    (None, "image/png", 400, "image too large to decode"),
    (b"x" * 5000, "image/png", 413, "over 4096"),
    (b"hello, not an image", "text/plain", 400, "the request body: unreadable image"),
])
def test_bad_requests_are_one_line_of_json_and_the_server_goes_on(model_file, caplog, body, ctype, status, message):
    """Each bad request a 4xx with {"error": one line}; the next good request answers; one log line
    per request."""
    body = _bomb() if body is None else body
    with TestClient(create_app(ServeConfig(model=str(model_file), device="cpu", max_bytes=4096 if status == 413
                                           else 20 * 1024 * 1024))) as client:
        with caplog.at_level(logging.INFO, logger="tsloc.serving.serve"):
            headers = {"content-type": ctype} if ctype else {}
            bad = client.post("/v1/predict", content=body, headers=headers)
            good = client.post("/v1/predict", content=png_bytes(20, 20), headers={"content-type": "image/png"})
    assert bad.status_code == status and set(bad.json()) == {"error"}, bad.text
    assert message in bad.json()["error"] and "\n" not in bad.json()["error"]
    assert good.status_code == 200 and good.json()["class_id"] == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "tsloc.serving.serve"]
    assert len(lines) == 2 and f"POST /v1/predict {status}" in lines[0] and "POST /v1/predict 200" in lines[1]


@pytest.mark.parametrize("headers", [{}, {"content-type": "application/octet-stream"}, {"content-type": "text/plain"}])
def test_an_image_is_known_by_its_bytes_whatever_its_content_type(model_file, headers):
    """What `requests.post(url, data=bytes)` sends (no content type), octet-stream, or a wrong type:
    the bytes are a PNG, so the answer is the image's."""
    with TestClient(create_app(ServeConfig(model=str(model_file), device="cpu"))) as client:
        r = client.post("/v1/predict", content=png_bytes(), headers=headers)
    assert r.status_code == 200 and r.json()["class_id"] == 3, r.text


def test_query_parameters_set_a_requests_own_options_and_unknown_ones_are_refused(model_file):
    with TestClient(create_app(ServeConfig(model=str(model_file), device="cpu", top_k=5))) as client:
        post = lambda query: client.post(f"/v1/predict{query}", content=png_bytes())  # noqa: E731
        assert len(post("").json()["top_k"]) == 5
        assert len(post("?top_k=2").json()["top_k"]) == 2
        assert post("?min_probability=1").json()["class_id"] is None  # the stub's 3 is not that sure
        for query, message in (("?topk=2", "unknown query parameter 'topk' (known: top_k, min_probability)"),
                               ("?top_k=two", "top_k='two': not a number"), ("?top_k=0", "top_k must be at least 1")):
            r = post(query)
            assert r.status_code == 400 and message in r.json()["error"], (query, r.text)
        assert post("?top_k=1").json()["class_id"] == 3  # the server went on


def test_every_error_is_one_line_of_json_and_the_model_states_its_box_unit(model_file, caplog):
    with caplog.at_level(logging.INFO, logger="tsloc.serving.serve"):
        with TestClient(create_app(ServeConfig(model=str(model_file), device="cpu"))) as client:
            missing, wrong = client.get("/v1/nothing"), client.get("/v1/predict")
            described = client.get("/v1/model").json()
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"} and "POST" in wrong.headers["allow"]
    assert described["model"]["box_format"] == "left, top, right, bottom in pixels of the upright image sent"
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving ")]
    assert len(started) == 1 and "m.pt: 62 classes, pytorch" in started[0], started


def test_a_chunked_body_over_the_limit_and_bad_forms_are_refused(model_file):
    with TestClient(create_app(ServeConfig(model=str(model_file), device="cpu", max_bytes=4096))) as client:
        chunked = client.post("/v1/predict", content=(b"x" * 1024 for _ in range(8)), headers={"content-type": "image/png"})
        assert chunked.status_code == 413 and "over 4096" in chunked.json()["error"]
        no_file = client.post("/v1/predict", files={"image": ("a.png", png_bytes(20, 20), "image/png")})
        assert no_file.status_code == 400 and "no file field named 'file'" in no_file.json()["error"]
        big_form = client.post("/v1/predict", files={"file": ("a.png", b"x" * 5000, "image/png")})
        assert big_form.status_code == 413
        named = client.post("/v1/predict", files={"file": ("broken.png", b"broken", "image/png")})
        assert named.status_code == 400 and named.json()["error"].startswith("broken.png: unreadable image")
        assert client.post("/v1/detect", content=png_bytes(), headers={"content-type": "image/png"}).status_code == 404


def test_detect_endpoint_answers_detects_record(model_file, tmp_path):
    from tsloc.scenes import model as det
    import tsloc
    det.save(tmp_path / "d.pt", det.build_detector("none", fpn_channels=32, head_convs=1),
             {"fpn_channels": 32, "head_convs": 1, "frozen_blocks": 4})
    frame = png_bytes(120, 80, seed=4)
    expected = tsloc.load(model_file, detector=tmp_path / "d.pt", device="cpu").detect(frame, min_score=0.0,
                                                                                       min_probability=0.0)
    config = ServeConfig(model=str(model_file), detector=str(tmp_path / "d.pt"), device="cpu", min_score=0.0,
                         detect_min_probability=0.0)
    with TestClient(create_app(config)) as client:
        answer = client.post("/v1/detect", files={"file": ("f.png", frame, "image/png")})
        assert client.get("/v1/model").json()["detector"]["operating_point"]["min_score"] == 0.0
    assert answer.status_code == 200 and answer.json() == expected | {"path": "f.png"}
    assert (answer.json()["width"], answer.json()["height"]) == (120, 80) and answer.json()["detections"]


def test_serve_arguments_are_checked(model_file):
    proc = run_cli("serve", "--model", model_file, "--workers", "0")
    assert proc.returncode == 2 and "--workers must be at least 1" in proc.stderr
    proc = run_cli("serve", "--model", "no-such.onnx")
    assert proc.returncode == 2 and "no-such.onnx: model file not found" in proc.stderr


@pytest.fixture
def live_server(model_file):
    """The app on a real uvicorn server (what `tsloc serve` runs) in a thread, with --max-bytes 64 KiB."""
    import socket
    import threading

    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServeConfig(model=str(model_file), device="cpu", max_bytes=64 * 1024))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1/predict"
    server.should_exit = True
    thread.join(10)


def test_every_client_reads_the_413_of_a_body_over_the_limit(live_server, tmp_path):
    """A 4 MB body against --max-bytes 64 KiB: urllib (raw, multipart, chunked), httpx, requests and curl all
    read the 413 and its one line of JSON. Answered before the body is read and closed, urllib (still
    sending) got a broken pipe instead: the server now reads and drops the rest first."""
    import shutil
    import subprocess
    import urllib.error
    import urllib.request

    import httpx
    big = b"\x89PNG" + b"x" * (4 * 1024 * 1024)

    def by_urllib(data, headers):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(live_server, data=data, headers=headers), timeout=30)
        return err.value.code, json.loads(err.value.read())

    boundary = "tslocboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    answers = {
        "urllib raw": by_urllib(big, {"Content-Type": "image/png"}),
        "urllib multipart": by_urllib(form, {"Content-Type": f"multipart/form-data; boundary={boundary}"}),
        "urllib chunked": by_urllib(iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                                    {"Content-Type": "image/png", "Transfer-Encoding": "chunked"}),
    }
    r = httpx.post(live_server, content=big, headers={"Content-Type": "image/png"}, timeout=30)
    answers["httpx raw"] = r.status_code, r.json()
    import requests
    r = requests.post(live_server, files={"file": ("big.png", big, "image/png")}, timeout=30)
    answers["requests multipart"] = r.status_code, r.json()
    if shutil.which("curl"):
        (tmp_path / "big.png").write_bytes(big)
        for name, args in (("curl raw", ["--data-binary", f"@{tmp_path / 'big.png'}", "-H", "Content-Type: image/png"]),
                           ("curl multipart", ["-F", f"file=@{tmp_path / 'big.png'}"])):
            out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args, live_server], capture_output=True,
                                 text=True, timeout=30).stdout
            body, code = out.rsplit("\n", 1)
            answers[name] = int(code), json.loads(body)
    for client, (status, body) in answers.items():
        assert status == 413 and "65536" in body["error"], (client, status, body)


@pytest.fixture(scope="module")
def german_frame(tmp_path_factory):
    """A synthetic street frame with GTSDB's twin's signs (GTSRB's classes), as a JPEG file."""
    from tsloc.scenes import synthetic
    out = tmp_path_factory.mktemp("german")
    root = synthetic.generate(out, frames=3, seed=4, width=680, height=400, fmt="gtsdb")
    frame = out / "frame.jpg"
    Image.open(root / "00001.ppm").save(frame, quality=92)
    return frame


def test_the_ready_german_pair_answers_with_nothing_trained(german_frame, tmp_path):
    """`--model gtsdb` is a pair: GTSDB's detector and GTSRB's namer, both shipped in the package, through
    `tsloc detect`, `tsloc.load` and the server's /v1/detect alike (ONNX Runtime, no pipeline output)."""
    import tsloc
    from tsloc.serving.ready import ready_detector
    model = tsloc.load("gtsdb", device="cpu")
    assert model.detector is not None and len(model.meta["class_names"]) == 43 and model.meta["class_names"][14] == "Stop"
    assert model.detector.meta["card"]["valid"]["onnx_fp32"] > 0.9  # its card: the validation AP50 it was shipped with
    shipped = model.detector.meta["operating_point"]  # detect's defaults: chosen on GTSDB's validation frames
    assert shipped["chosen_on"]["subset"] == "valid" and shipped["valid"]["precision"] >= shipped["targets"]["precision"]
    assert model.point == {"min_score": shipped["min_score"], "min_probability": shipped["min_probability"],
                           "box": shipped["box"], "vote_iou": shipped.get("vote_iou", 0.0),
                           "chosen": f"{ready_detector('gtsdb')}'s metadata"}
    assert shipped["box_ap"][shipped["box"]] == max(shipped["box_ap"].values())  # the tighter box on validation
    from tsloc.quantize import saturating_weights
    assert saturating_weights(model.file) == saturating_weights(ready_detector("gtsdb")) == []  # 7-bit: any x86 alike
    found = model.detect(german_frame)
    proc = run_cli("detect", german_frame, "--model", "gtsdb", cwd=tmp_path)  # no models/ here: the ready pair
    assert proc.returncode == 0, proc.stderr
    assert "gtsdb.detector.onnx" in proc.stderr and "gtsrb.int8.onnx" in proc.stderr
    assert f"min score {shipped['min_score']:g}, min probability {shipped['min_probability']:g}" in proc.stderr
    record = json.loads(proc.stdout)
    assert record["detections"] == found["detections"] and (record["width"], record["height"]) == (680, 400)
    with TestClient(create_app(ServeConfig(model="gtsdb", device="cpu"))) as client:
        served = client.post("/v1/detect", content=german_frame.read_bytes()).json()
        assert client.get("/v1/model").json()["detector"]["backend"].startswith("onnxruntime")
    assert [d["class"] for d in served["detections"]] == [d["class"] for d in found["detections"]]
