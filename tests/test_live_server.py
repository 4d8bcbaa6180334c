"""`pneumocam serve` as a real process on 127.0.0.1: a headless-browser upload and an OpenAPI fuzz."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import RSNA_SAMPLE, free_port, require, wait_for_http

CHROMIUM = os.environ.get("PNEUMOCAM_CHROMIUM", "/usr/bin/chromium")


def serving(model: str):
    """`pneumocam serve MODEL` on a free port of 127.0.0.1, yielding its URL; stopped after, with no traceback."""
    pytest.importorskip("uvicorn", reason="the web service needs pneumocam[serve]")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "pneumocam.cli", "serve", model, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/v1/health", process)
    yield url
    process.terminate()
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def live_server(tiny_checkpoint):
    yield from serving(str(tiny_checkpoint))


@contextlib.contextmanager
def browser_page():
    """A page of a real headless Chromium (skipped where it or playwright is missing)."""
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium not found at {CHROMIUM} (Debian package 'chromium'; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.mark.slow
def test_browser_uploads_a_real_dicom_and_sees_probability_and_overlay(live_server, tmp_path):
    dicom = sorted((require(RSNA_SAMPLE) / "stage_2_train_images").glob("*.dcm"))[0]
    with browser_page() as page:
        page.goto(live_server + "/")
        page.set_input_files("#file", str(dicom))
        page.wait_for_selector("#result", state="visible", timeout=60_000)
        probability = float(page.inner_text("#probability"))
        assert 0 <= probability <= 1
        cam_src = page.get_attribute("#cam", "src")
        assert cam_src.startswith("data:image/png;base64,")
        assert page.evaluate("document.getElementById('cam').naturalWidth") == 224
        assert page.inner_text("#error") == ""
        # the colour bar with its ticks and units, an opacity slider and an on/off switch for the map
        bar = page.evaluate("getComputedStyle(document.getElementById('bar')).backgroundImage")
        assert "linear-gradient" in bar
        assert page.locator("#ticks span").count() == 5 and "threshold" in page.inner_text("#scale-label")
        page.fill("#opacity", "0.3")
        page.dispatch_event("#opacity", "input")
        assert page.evaluate("document.getElementById('cam').style.opacity") == "0.3"
        page.uncheck("#show")
        assert page.evaluate("document.getElementById('cam').style.opacity") == "0"
        page.check("#show")
        # kept for a person to look at: PNEUMOCAM_SCREENSHOT=page.png python -m pytest tests/test_live_server.py
        page.screenshot(path=os.environ.get("PNEUMOCAM_SCREENSHOT", str(tmp_path / "page.png")), full_page=True)


@pytest.fixture(scope="module")
def bundled_server():
    yield from serving("pneumocam-cxr")


@pytest.mark.slow
def test_browser_view_choice_picks_that_views_threshold(bundled_server):
    """A PNG/JPEG states no view: the page's choice sends ?view= and the answer names the threshold it used; a
    new choice asks again for the same film."""
    from pneumocam.commands.demo import real_examples

    with urllib.request.urlopen(bundled_server + "/v1/model") as response:
        model = json.load(response)
    pa, overall = model["thresholds_by_view"]["PA"], model["threshold"]
    film = real_examples()[0]  # a JPEG the package ships: no header, so no view of its own
    with browser_page() as page:
        page.goto(bundled_server + "/")
        page.select_option("#view", "PA")
        page.set_input_files("#file", str(film))
        page.wait_for_selector("#result", state="visible", timeout=60_000)
        assert f"threshold {pa:.3f}, the threshold for PA films" in page.inner_text("#verdict")
        page.select_option("#view", "")
        page.wait_for_function("document.getElementById('verdict').textContent.includes('view unknown')",
                               timeout=60_000)
        assert f"threshold {overall:.3f}, the overall (view unknown) threshold" in page.inner_text("#verdict")
        assert page.inner_text("#error") == ""


@pytest.mark.slow
def test_openapi_fuzz_gives_no_server_errors(live_server, tmp_path):
    schemathesis = Path(sys.executable).with_name("schemathesis")  # installed beside the interpreter
    if not schemathesis.exists():
        pytest.skip("schemathesis is not installed (it is in the dev extra)")
    result = subprocess.run(
        # the error answers are in the schema (413, 415, 422, ...): their codes, content type and body are checked too
        [str(schemathesis), "run", f"{live_server}/openapi.json", "--checks",
         "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
         "negative_data_rejection",
         "--max-examples", "25", "--seed", "1", "--request-timeout", "30", "--phases", "examples,coverage,fuzzing"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
