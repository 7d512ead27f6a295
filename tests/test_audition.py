"""The audition page in a real browser: Playwright for Python driving Debian's Chromium against a live server.

Upload a WAV, vocode at two rho values, and check what a user sees: two players of the right duration, the
step counts that `/v1/schedules` gives, the output mels drawn, and no console error. `.ci/run` installs
Chromium, so CI runs this test; elsewhere it is skipped when no Chromium is found. Set AUDITION_SCREENSHOT
to a path to keep the screenshot, and AUDITION_WEIGHTS to serve other weights than the tiny test ones. The
README's screenshot:

    AUDITION_WEIGHTS=weights/small AUDITION_SCREENSHOT=bench/results/demo.png pytest tests/test_audition.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from conftest import serving, voiced_tone
from model.audio import HOP, SAMPLE_RATE
from server.app import create_app
from server.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if os.environ.get("CI"):  # CI installs both: a missing one fails the test instead of skipping it
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM:
        pytest.skip("no Chromium here (CI installs it: apt-get install chromium)", allow_module_level=True)

SECONDS = 1.5


@pytest.fixture(scope="module")
def url(tiny_weights: Path):
    weights = Path(os.environ.get("AUDITION_WEIGHTS") or tiny_weights)
    with serving(create_app(Settings(weights=weights, device="cpu"))) as u:
        yield u


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def test_upload_two_rhos_and_hear_both(url: str, browser, tmp_path: Path):
    wav = tmp_path / "speech.wav"
    sf.write(wav, voiced_tone(SECONDS), SAMPLE_RATE)
    frames = int(SECONDS * SAMPLE_RATE) // HOP
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(url + "/")
    page.wait_for_selector("#presets button[data-preset=fast]")
    page.set_input_files("#file", str(wav))
    page.wait_for_function(f"document.getElementById('input-info').textContent.includes('x {frames} mel')")

    for i, choose in enumerate(("#presets button[data-preset=fast]", None), start=1):
        if choose:
            page.click(choose)
        else:  # the slider, on its log scale: rho = 10^-1.3 ~ 0.05
            page.eval_on_selector("#rho-slider", "s => { s.value = '-1.3'; s.dispatchEvent(new Event('input')); }")
        page.wait_for_function("/^\\d+$/.test(document.getElementById('steps-preview').textContent)")
        preview = int(page.text_content("#steps-preview"))
        page.click("#vocode")
        page.wait_for_function(f"document.querySelectorAll('#results .result').length === {i}")
        newest = page.locator("#results .result").first
        rho, steps = newest.get_attribute("data-rho"), int(newest.get_attribute("data-steps"))
        assert steps == preview == httpx.get(f"{url}/v1/schedules", params={"rho": rho}).json()["steps"]
        fast = httpx.get(f"{url}/v1/model").json()["presets"]["fast"]
        assert int(newest.get_attribute("data-refine")) == fast["refine"]  # the preset's, kept for the slider

    page.fill("#projections", "3")
    page.dispatch_event("#projections", "change")
    page.click("#projection")
    page.wait_for_function("document.querySelectorAll('#results .result').length === 3")
    newest = page.locator("#results .result").first
    assert (newest.get_attribute("data-steps"), newest.get_attribute("data-refine")) == ("0", "3")
    assert "projection alone" in newest.text_content()

    page.wait_for_function("[...document.querySelectorAll('#results audio')].every(a => a.duration > 0)")
    durations = page.eval_on_selector_all("#results audio", "els => els.map(a => a.duration)")
    assert durations == pytest.approx([frames * HOP / SAMPLE_RATE] * 3, abs=1e-3)
    page.wait_for_function(f"[...document.querySelectorAll('canvas.out')].every(c => c.width === {frames})")
    rhos = page.eval_on_selector_all("#results .result", "els => els.map(e => e.dataset.rho)")
    assert len(set(rhos)) == 3  # two rhos, and none for projection alone
    assert page.text_content("#error") == ""
    assert not errors, errors
    page.screenshot(path=os.environ.get("AUDITION_SCREENSHOT") or str(tmp_path / "audition.png"), full_page=True)


def test_a_stream_plays_as_it_arrives_with_its_first_audio_time(url: str, browser, tmp_path: Path):
    """Stream an example mel: the page plays the PCM as it comes in, shows the time to first audio beside the total,
    and keeps a player of the whole result."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("#presets button[data-preset=fast]")
    page.click("#load-example")
    page.wait_for_function("document.getElementById('input-info').textContent.includes('mel')")
    frames = int(page.text_content("#input-info").split(" x ")[1].split(" ")[0])
    page.click("#presets button[data-preset=fast]")
    page.click("#stream")
    page.wait_for_function("document.querySelector('#results .result')?.dataset.ttfa !== undefined", timeout=120_000)
    row = page.locator("#results .result").first
    assert int(row.get_attribute("data-played")) == frames * HOP  # every sample went to the audio output
    first, total = (float(row.locator(c).text_content().removesuffix(" s")) for c in (".ttfa", ".total"))
    assert 0 < first <= total
    page.wait_for_function("document.querySelector('#results audio').duration > 0")
    assert page.eval_on_selector("#results audio", "a => a.duration") == pytest.approx(frames * HOP / SAMPLE_RATE,
                                                                                       abs=1e-3)
    assert page.text_content("#error") == "" and not errors, errors


def test_errors_are_readable(url: str, browser, tmp_path: Path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav")
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_selector("#presets button")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("document.getElementById('error').textContent.includes('422')")
    assert "invalid audio" in page.text_content("#error")


def test_page_and_examples_are_served(url: str):
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" in page.text and "http://" not in page.text and "https://" not in page.text  # no CDN
    names = httpx.get(url + "/demo/examples").json()
    assert len(names) == 3
    example = httpx.post(f"{url}/v1/vocode", params={"rho": "fast", "seed": 0},
                         content=httpx.get(f"{url}/demo/examples/{names[0]}").content,
                         headers={"Content-Type": "application/x-npy"}, timeout=120)
    assert example.status_code == 200
    assert httpx.get(url + "/demo/examples/..%2Fapp.py").status_code == 404


def test_a_mel_format_is_offered_and_used_for_the_upload_and_the_audio(url: str, browser, tmp_path: Path):
    wav = tmp_path / "speech.wav"
    sf.write(wav, voiced_tone(SECONDS), SAMPLE_RATE)
    rayhane = httpx.get(f"{url}/v1/model").json()["profiles"]["rayhane"]["contract"]
    frames = 1 + int(SECONDS * SAMPLE_RATE) // rayhane["hop"]  # centred frames
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_selector("#mel-format option[value=rayhane]", state="attached")  # an option is never "visible"
    page.select_option("#mel-format", "rayhane")
    page.set_input_files("#file", str(wav))
    page.wait_for_function(f"document.getElementById('input-info').textContent.includes('x {frames} mel')")
    page.wait_for_selector("#presets button[data-preset=fast]")
    page.click("#presets button[data-preset=fast]")
    page.click("#vocode")
    page.wait_for_function("[...document.querySelectorAll('#results audio')].some(a => a.duration > 0)")
    duration = page.eval_on_selector("#results audio", "a => a.duration")
    assert duration == pytest.approx(frames * rayhane["hop"] / rayhane["sample_rate"], abs=1e-3)
    assert page.text_content("#error") == ""
