"""The web service through FastAPI's test client: real uploads, bad uploads, auth, limits."""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import RSNA_SAMPLE, SHARED_DATA, bomb_png, require

pytest.importorskip("fastapi", reason="the web service needs pneumocam[serve]")
from fastapi.testclient import TestClient  # noqa: E402

from pneumocam.config import ServeConfig
from pneumocam.deploy import Predictor, create_app
from pneumocam.explain import EVIDENCE_SPAN, ShownMap, overlay_layer


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return Predictor.from_checkpoint(tiny_checkpoint)


def _client(app) -> TestClient:
    """A test client addressing the server as a browser on this machine does (Host: localhost)."""
    return TestClient(app, base_url="http://localhost")


@pytest.fixture(scope="module")
def client(predictor):
    return _client(create_app(predictor, ServeConfig(max_upload_mb=2)))


def _post(client, name, data, **kwargs):
    return client.post("/v1/predict", files={"file": (name, data, "application/octet-stream")}, **kwargs)


def _decodes(b64: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
        img.verify()
        return img.size


def test_real_rsna_dicoms_and_kermany_jpeg(predictor):
    client = _client(create_app(predictor, ServeConfig(max_upload_mb=32)))
    files = sorted((require(RSNA_SAMPLE) / "stage_2_train_images").glob("*.dcm"))[:3]
    files.append(sorted(require(SHARED_DATA / "kermany_sample" / "val" / "PNEUMONIA").glob("*.jpeg"))[0])
    offline = {Path(p.source).name: p for p in predictor.predict_files(files)[0]}
    for path in files:
        response = _post(client, path.name, path.read_bytes(), params={"pictures": "all"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["probability"] == pytest.approx(offline[path.name].probability, abs=1e-6)  # what predict says
        assert body["predicted"] == offline[path.name].predicted and body["threshold"] == 0.5
        assert body["cam_scale"]["scale"] == "absolute" and body["cam_scale"]["ticks"][2]["label"] == "0.5"
        with Image.open(io.BytesIO(base64.b64decode(body["cam_layer_png_base64"]))) as layer:
            sent = np.asarray(layer.convert("RGBA"), dtype=np.float32) / 255
        shown = ShownMap.of(offline[path.name], "absolute")
        drawn = overlay_layer(shown)  # what the page blends
        # the server's CAM may differ from predict's in the 6th digit: a pixel that close to the edge between two
        # of the colormap's 256 colours may take the next one
        bins = (np.clip(np.asarray(shown.values) / EVIDENCE_SPAN, -1, 1) + 1) / 2 * 256
        on_edge = (np.abs(bins - np.round(bins)) < 1e-3) & (bins > 0.5) & (bins < 255.5)  # not at the clipped ends
        assert sent.shape == (224, 224, 4) and np.abs(sent - drawn)[~on_edge].max() <= 1.5 / 255
        assert on_edge.mean() < 0.01
        assert "label" not in body  # the model's call is "predicted"; "label" means the truth
        assert body["ood"] is None and body["ood_reason"] == ""  # an uncalibrated checkpoint has no detector
        assert _decodes(body["cam_png_base64"]) == (224, 224) and _decodes(body["image_png_base64"]) == (224, 224)


def test_the_answer_carries_the_cams_cells_and_only_the_pictures_asked_for(client, predictor):
    path = sorted((require(RSNA_SAMPLE) / "stage_2_train_images").glob("*.dcm"))[0]
    plain = _post(client, path.name, path.read_bytes()).json()
    assert not {"cam_png_base64", "cam_layer_png_base64", "image_png_base64"} & set(plain)
    cells = np.asarray(plain["cam_cells"])
    offline = predictor.predict_files([path])[0][0]
    assert cells.shape == (7, 7) and cells.mean() + float(predictor.net.fc.bias) == pytest.approx(offline.logit,
                                                                                                   abs=1e-4)
    overlay = _post(client, path.name, path.read_bytes(), params={"pictures": "overlay"}).json()
    assert _decodes(overlay["cam_png_base64"]) == (224, 224) and "image_png_base64" not in overlay
    assert overlay["probability"] == plain["probability"] and overlay["cam_cells"] == plain["cam_cells"]
    both = _post(client, path.name, path.read_bytes(), params={"pictures": "layer, image"}).json()
    assert {"cam_layer_png_base64", "image_png_base64"} <= set(both) and "cam_png_base64" not in both


def test_an_unknown_picture_is_a_422_naming_the_choices(client):
    response = _post(client, "x.png", b"\x89PNG\r\n\x1a\n", params={"pictures": "overlay,heatmap"})
    assert response.status_code == 422 and "'heatmap'" in response.json()["detail"]
    assert "overlay, layer, image or all" in response.json()["detail"]


def _truncated_dicom(tmp_path) -> bytes:
    from pneumocam.data import write_dicom_jpeg

    write_dicom_jpeg(tmp_path / "x.dcm", (np.arange(4096) % 200).reshape(64, 64).astype(np.uint8), "p")
    data = (tmp_path / "x.dcm").read_bytes()
    return data[: len(data) - 200]


@pytest.mark.parametrize(
    ("name", "make", "status", "message"),
    [
        ("empty.png", lambda tmp: b"", 400, "empty"),
        ("notes.png", lambda tmp: b"just some text, not an image", 415, "unsupported file type"),
        ("cut.dcm", _truncated_dicom, 422, "cannot read the uploaded DCM"),
        ("huge.png", lambda tmp: b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 1024 * 1024), 413, "larger than"),
        ("bomb.png", lambda tmp: bomb_png(), 413, "too large"),
    ],
)
def test_bad_uploads_get_a_clear_4xx(client, tmp_path, name, make, status, message):
    response = _post(client, name, make(tmp_path))
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_a_well_formed_request_with_a_malformed_dicom_gets_422_and_the_readers_reason(client):
    import pydicom.data

    bad = Path(pydicom.data.__file__).parent / "test_files" / "badVR.dcm"
    response = _post(client, "badVR.dcm", bad.read_bytes())
    assert response.status_code == 422
    assert "malformed file" in response.json()["detail"] and "1A" in response.json()["detail"]


def test_missing_file_field_and_wrong_content_type(client):
    assert client.post("/v1/predict", data={"other": "x"}).status_code == 422
    assert client.post("/v1/predict", content=b"raw", headers={"content-type": "text/plain"}).status_code in (400, 422)


def test_token_is_required_when_configured(predictor):
    client = _client(create_app(predictor, ServeConfig(), token="s3cret"))
    image = io.BytesIO()
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(image, format="PNG")
    assert _post(client, "a.png", image.getvalue()).status_code == 401
    assert _post(client, "a.png", image.getvalue(), headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert _post(client, "a.png", image.getvalue(), headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/health").status_code == 200


def test_page_health_model_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "<input" in page.text and "/v1/predict" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets
    assert client.get("/v1/health").json() == {"status": "ok"}
    model = client.get("/v1/model").json()
    assert model["threshold"] == 0.5 and len(model["data_fingerprint"]) == 64 and model["api_version"] == 3
    assert model["detects_out_of_range"] is False and model["calibration"]["temperature"] == 1.0
    spec = client.get("/openapi.json").json()
    assert "/v1/predict" in spec["paths"] and {"413", "415", "422"} <= set(spec["paths"]["/v1/predict"]["post"]
                                                                          ["responses"])
    assert [p["name"] for p in spec["paths"]["/v1/predict"]["post"]["parameters"]] == ["pictures", "view"]
    assert client.get("/docs").status_code == 404  # Swagger UI's assets come from a CDN: off unless asked for


def test_api_docs_on_request(predictor):
    docs = _client(create_app(predictor, ServeConfig(api_docs=True))).get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_uploads_leave_no_temporary_files(client, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    image = io.BytesIO()
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(image, format="PNG")
    assert _post(client, "a.png", image.getvalue()).status_code == 200
    assert _post(client, "b.png", b"\x89PNG\r\n\x1a\nbroken").status_code == 422
    assert list(tmp_path.iterdir()) == []


def test_logs_carry_no_file_names(client, caplog):
    import logging

    image = io.BytesIO()
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(image, format="PNG")
    with caplog.at_level(logging.INFO, logger="pneumocam.deploy.server"):
        _post(client, "DOE_JOHN_1970.png", image.getvalue())
    assert caplog.records and not any("DOE_JOHN" in r.getMessage() for r in caplog.records)


def test_the_bundled_model_answers_calibrated_and_flags_what_is_not_a_chest_x_ray():
    client = _client(create_app(Predictor.from_checkpoint("pneumocam-cxr")))
    example = sorted((Path(__file__).resolve().parents[1] / "src" / "pneumocam" / "examples").glob("*.jpeg"))[0]
    xray = _post(client, example.name, example.read_bytes()).json()
    assert xray["ood"] is False and "specificity >= 0.85" in xray["threshold_rule"] and xray["threshold"] < 0.5
    assert xray["threshold_basis"] == "overall (view unknown)"  # a JPEG carries no ViewPosition
    stated = _post(client, example.name, example.read_bytes(), params={"view": "pa"}).json()  # unless ?view= says
    assert (stated["view"], stated["threshold_basis"]) == ("PA", "view PA") and stated["threshold"] < xray["threshold"]
    # and the probability through the PA films' own calibration, which /v1/model lists
    model = client.get("/v1/model").json()
    overall, pa = model["calibration"], model["calibration_by_view"]["PA"]
    logit = (np.log(xray["probability"] / (1 - xray["probability"])) - overall["intercept"]) * overall["temperature"]
    expected = 1 / (1 + np.exp(-(logit / pa["temperature"] + pa["intercept"])))
    assert stated["probability"] == pytest.approx(expected, abs=1e-5) and stated["probability"] != xray["probability"]
    bad = _post(client, example.name, example.read_bytes(), params={"view": "P-A"})
    assert bad.status_code == 422 and "?view='P-A' is not a view position" in bad.json()["detail"]
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)).save(noise, "PNG")
    flagged = _post(client, "noise.png", noise.getvalue())
    assert flagged.status_code == 200 and flagged.json()["ood"] is True  # flagged, not refused
    assert "does not look like" in flagged.json()["ood_reason"]


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(predictor):
    import asyncio

    import httpx

    app = create_app(predictor, ServeConfig(max_batch=8, max_wait_ms=200))
    images = [np.clip(np.random.default_rng(i).normal(0.5, 0.2, (224, 224)), 0, 1).astype(np.float32)
              for i in range(6)]
    expected = [p.probability for p in predictor.predict_arrays(images, cam=False)]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            async def post(image):
                buffer = io.BytesIO()
                np.save(buffer, image)
                return await client.post("/v1/predict", files={"file": ("x.npy", buffer.getvalue())})
            return await asyncio.gather(*(post(image) for image in images))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 6
    assert [r.json()["probability"] for r in responses] == pytest.approx(expected, abs=1e-5)
    assert max(app.state.batcher.batch_sizes) > 1 and sum(app.state.batcher.batch_sizes) == 6


def _encoded(width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format=fmt)
    return buffer.getvalue()


def _npy_header_only(shape: tuple, dtype: str = "<f8") -> bytes:
    """A .npy whose header asks for `shape` and whose data is missing: only a reader that allocates first fails
    with MemoryError; one that reads the header first refuses it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 64


def _dicom_with_wrong_rows(tmp_path) -> bytes:
    import pydicom

    from pneumocam.data import write_dicom_jpeg

    write_dicom_jpeg(tmp_path / "x.dcm", (np.arange(4096) % 200).reshape(64, 64).astype(np.uint8), "p")
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    ds.Rows = 16  # the header says 64 x 16; the JPEG inside is 64 x 64
    ds.save_as(tmp_path / "y.dcm")
    return (tmp_path / "y.dcm").read_bytes()


@pytest.mark.parametrize(
    ("name", "make", "status", "message"),
    [
        ("thin.png", lambda tmp: _encoded(20_000, 40), 413, "too large"),
        ("wide.png", lambda tmp: _encoded(40, 60_000), 413, "too large"),
        ("strip.png", lambda tmp: _encoded(5_000, 40), 422, "too elongated"),
        ("thin.jpg", lambda tmp: _encoded(40, 20_000, "JPEG"), 413, "too large"),
        ("thin.tif", lambda tmp: _encoded(20_000, 40, "TIFF"), 413, "too large"),
        ("huge.npy", lambda tmp: _npy_header_only((1, 2_000_000)), 413, "too large"),
        ("cube.npy", lambda tmp: _npy_header_only((60_000, 60_000)), 413, "too large"),
        ("three.npy", lambda tmp: _npy_header_only((2, 64, 64)), 422, "2-D"),
        ("text.npy", lambda tmp: _npy_header_only((64, 64), "<U8"), 422, "numeric"),
        ("rows.dcm", _dicom_with_wrong_rows, 422, "the embedded image is 64x64"),
    ],
)
def test_what_a_decode_would_allocate_is_judged_from_the_header(client, tmp_path, name, make, status, message):
    response = _post(client, name, make(tmp_path))
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_messages_name_no_server_path(client):
    import tempfile

    response = _post(client, "broken.jpg", b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 10)
    detail = response.json()["detail"]
    assert response.status_code == 422 and "cannot read the uploaded JPG file" in detail
    assert tempfile.gettempdir() not in detail and "pneumocam-upload" not in detail and "the upload" in detail


def test_the_bundled_models_description_carries_no_machine_path():
    import json

    model = _client(create_app(Predictor.from_checkpoint("pneumocam-cxr"))).get("/v1/model").json()
    text = json.dumps(model)
    pretrained = model["config"]["pretrained"]  # the model it was fine-tuned from, its machine path cut
    assert pretrained.startswith(".../") and pretrained.endswith("/checkpoints/last.ckpt")
    assert "/work/" not in text and "/home/" not in text


def test_a_chunked_body_is_stopped_at_the_limit(predictor):
    """Spoken to as uvicorn does (ASGI): a body without Content-Length in 256 kB pieces; the server must answer
    413 having read little more than the 2 MB limit, not the 12.5 MB sent."""
    import asyncio
    import json

    app = create_app(predictor, ServeConfig(max_upload_mb=2))
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n\x89PNG\r\n\x1a\n'
    pieces = [head] + [b"\0" * 256 * 1024] * 50 + [b"\r\n--b--\r\n"]
    read, sent = [], []

    async def receive():
        if len(read) < len(pieces):
            read.append(pieces[len(read)])
            return {"type": "http.request", "body": read[-1], "more_body": len(read) < len(pieces)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "root_path": "", "query_string": b"",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
             "headers": [(b"host", b"localhost"), (b"transfer-encoding", b"chunked"),
                         (b"content-type", b"multipart/form-data; boundary=b")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and "larger than 2 MB" in json.loads(sent[1]["body"])["detail"]
    assert sum(map(len, read)) < 2 * 1024 * 1024 + 64 * 1024 + 256 * 1024  # the limit, the form's margin, a piece


def test_out_of_memory_while_decoding_is_a_413(predictor, monkeypatch):
    client = _client(create_app(predictor))

    def exhausted(path):
        raise MemoryError

    monkeypatch.setattr(predictor, "load_with_view", exhausted)
    response = _post(client, "a.png", _encoded(64, 64))
    assert response.status_code == 413 and "memory" in response.json()["detail"]


@pytest.mark.parametrize(("host", "status"), [("localhost", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200),
                                              ("attacker.example", 421), ("attacker.example:8000", 421)])
def test_on_loopback_without_a_token_only_requests_addressed_to_this_machine(predictor, host, status):
    client = _client(create_app(predictor))
    assert client.get("/v1/health", headers={"host": host}).status_code == status


def test_with_a_token_or_on_another_address_any_host_is_served(predictor):
    with_token = _client(create_app(predictor, token="s3cret"))
    assert with_token.get("/v1/health", headers={"host": "pneumocam.hospital.example"}).status_code == 200
    public = _client(create_app(predictor, ServeConfig(host="0.0.0.0")))
    assert public.get("/v1/health", headers={"host": "pneumocam.hospital.example"}).status_code == 200
