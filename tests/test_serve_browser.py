"""The web front in a real browser: `tvp serve --demo` driven by headless Chromium through Playwright.

Needs the system Chromium (Debian: `apt-get install chromium`; or set TVP_CHROMIUM to a binary)
and the `playwright` package; no browser is downloaded. Skipped when either is missing (failed when
TVP_REQUIRE_BROWSER is set, as in CI). Run with
`pytest -m browser tests/test_serve_browser.py`; TVP_SCREENSHOTS=DIR also saves screenshots.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tvprompt.serve.archive import pack_dir

from .service_utils import Server, env, make_prompt

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (the test extra)")


def _chromium() -> str | None:
    return os.environ.get("TVP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tvprompt.data.shapeworld import write_dataset
    from tvprompt.serve.demo import demo_models

    if not _chromium():
        if os.environ.get("TVP_REQUIRE_BROWSER"):  # CI: a missing browser is a failure, not a skip
            pytest.fail("no Chromium found (apt-get install chromium, or set TVP_CHROMIUM)")
        pytest.skip("no Chromium found (apt-get install chromium, or set TVP_CHROMIUM)")
    if not demo_models():
        pytest.skip("this checkout ships no model zoo")
    root = tmp_path_factory.mktemp("browser")
    store = root / "store"
    write_dataset("shape", 24, root / "data" / "shapes", distribution="downstream", seed=3, split_mix=True)
    out = subprocess.run([sys.executable, "-m", "tvprompt", "serve", "token", "create", "--owner", "alice", "--store",
                          str(store)],
                         capture_output=True, text=True, env=env(), check=True)
    srv = Server(root, cli_args=["--demo", "--store", str(store), "--data-root", str(root / "data")])
    srv.start(timeout=300)
    srv.root, srv.token = root, out.stdout.strip()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(server):
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.problems = problems
    yield page
    context.close()


def _shot(page, name: str) -> None:
    folder = os.environ.get("TVP_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False)


def _image(tmp_path: Path) -> Path:
    from tvprompt.data.shapeworld import generate_sample

    sample = generate_sample("shape", 7, distribution="downstream", seed=5)
    path = tmp_path / "shape.png"
    image = sample.image if isinstance(sample.image, Image.Image) else Image.fromarray(sample.image)
    image.save(path)
    return path


def test_gallery_lists_and_filters_the_demo_prompts(page, server):
    page.goto(server.url + "/")
    page.wait_for_selector(".card")
    assert page.locator(".card").count() == 3
    assert page.locator("#count").inner_text() == "3 of 3 prompts"
    names = sorted(page.locator(".card h3").all_inner_texts())
    assert names == ["colors-tvp v1", "shapes-tvp v1", "shapes-vp v1"]
    first = page.locator(".card").first
    assert "zoo:llava-p8" in first.inner_text() and "val accuracy" in first.inner_text()
    assert page.locator(".card img").first.evaluate("img => img.complete && img.naturalWidth") == 64
    _shot(page, "gallery")
    page.fill("#search", "colors")
    assert page.locator(".card").count() == 1 and "colors-tvp" in page.locator(".card").inner_text()
    page.fill("#search", "")
    page.select_option("#filter-method", "vp")
    assert page.locator(".card h3").all_inner_texts() == ["shapes-vp v1"]
    page.select_option("#filter-method", "")
    page.select_option("#filter-task", "shapeworld_shape")
    assert page.locator(".card").count() == 2
    assert page.problems == []


def test_prompt_page_try_it_and_ask(page, server, tmp_path):
    page.goto(server.url + "/")
    page.click(".card:has-text('shapes-tvp')")
    page.wait_for_selector("#prompt-card")
    assert page.locator("#prompt-title").inner_text() == "shapes-tvp v1"
    card = page.locator("#prompt-card").inner_text()
    assert "shapeworld_shape" in card and "demo" in card and "circle" in card
    rows = page.locator("#transfer tbody tr")
    models = sorted(m["id"] for m in httpx.get(server.url + "/models").json())
    assert sorted(r.split("\t")[0] for r in rows.all_inner_texts()) == models
    prompt_id = page.url.split("#/p/")[1]
    assert page.locator("#download-zip").get_attribute("href") == f"/prompts/{prompt_id}/download"

    # try it: original and prompted side by side, the PNG downloadable and equal to the API's
    image = _image(tmp_path)
    page.set_input_files("#try-file", str(image))
    page.wait_for_selector("#try-download:not([hidden])")  # (wait_for_function would need 'unsafe-eval')
    original = page.locator("#try-original").evaluate("i => i.decode().then(() => i.naturalWidth)")
    assert original == Image.open(image).width
    prompted = page.locator("#try-prompted").evaluate("i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])")
    assert prompted == [64, 64]
    with page.expect_download() as download:
        page.click("#try-download")
    got = Path(download.value.path()).read_bytes()
    want = httpx.post(f"{server.url}/prompts/{prompt_id}/apply", files={"image": ("s.png", image.read_bytes())}).content
    assert got == want and Image.open(io.BytesIO(got)).size == (64, 64)

    # ask: every hosted model, without and with the prompt, as the API answers
    assert page.input_value("#ask-question") == "What shape is in the image?"
    page.click("#ask-run")
    page.wait_for_selector("#ask-table tbody tr")
    _shot(page, "prompt")
    table = page.locator("#ask-table tbody tr")
    assert table.count() == len(models)
    api = httpx.post(f"{server.url}/prompts/{prompt_id}/ask", files={"image": ("s.png", image.read_bytes())},
                     data={"question": "What shape is in the image?"}, timeout=60).json()
    for answer in api["answers"]:
        row = page.locator(f"#ask-table tr[data-model='{answer['model']}'] .answer").all_inner_texts()
        assert row == [answer["without_prompt"]["answer"], answer["with_prompt"]["answer"]]
    assert page.problems == []


def test_push_and_train_with_a_token_and_user_strings_stay_text(page, server, tmp_path):
    page.goto(server.url + "/#/account")
    assert page.locator("#push").count() == 0  # nothing to push without a token
    page.fill("#token", server.token)
    page.click("#token-save")
    page.wait_for_selector("#push")
    assert page.evaluate("sessionStorage.getItem('tvp-token')") == server.token
    assert page.evaluate("document.cookie") == ""

    # a prompt whose task and source are HTML: shown as text, never run
    evil = "<img src=x onerror=alert(1)>"
    prompt = make_prompt(tmp_path / "evil", task=evil, sources=[{"model_id": "<b>bold</b>"}])
    (tmp_path / "evil.zip").write_bytes(pack_dir(prompt))
    page.set_input_files("#push-file", str(tmp_path / "evil.zip"))
    page.fill("#push-name", "evil")
    page.click("#push-run")
    page.wait_for_selector("#pushed-link")
    assert page.locator("#pushed-link").inner_text() == "evil v1"
    page.click("#pushed-link")
    page.wait_for_selector("#prompt-card")
    card = page.locator("#prompt-card").inner_text()
    assert evil in card and "<b>bold</b>" in card
    assert page.locator("#prompt-card img").count() == 1 and page.locator("#prompt-card b").count() == 0
    page.goto(server.url + "/#/")
    page.wait_for_selector(".card")
    assert page.locator(".card:has-text('evil') img").count() == 1

    # a training job on the server's data root, watched to the end
    page.goto(server.url + "/#/account")
    page.wait_for_selector("#jobs")
    page.select_option("#job-method", "vp")
    page.fill("#job-sources", "zoo:llava-p8")
    page.fill("#job-task", "shapeworld_shape")
    page.fill("#job-dataset", "shapes/manifest.jsonl")
    page.fill("#job-steps", "2")
    page.fill("#job-name", "from-the-page")
    page.click("#job-run")
    page.wait_for_selector("#job-watch .job")
    page.wait_for_selector("#job-watch .job[data-state='succeeded'], #job-watch .job[data-state='failed']",
                           timeout=240_000)
    job = page.locator("#job-watch .job")
    assert job.get_attribute("data-state") == "succeeded", job.inner_text()
    assert "step 2 / 2" in job.inner_text()
    page.click("#job-watch .job-prompt")
    page.wait_for_selector("#prompt-card")
    assert page.locator("#prompt-title").inner_text() == "from-the-page v1"
    assert page.problems == []


def test_docs_render_offline_with_authorize(page, server):
    loaded: list[str] = []
    page.on("requestfinished", lambda r: loaded.append(r.url))
    page.goto(server.url + "/docs")
    page.wait_for_selector(".swagger-ui .info")
    assert page.locator("button.authorize").count() == 1
    page.goto(server.url + "/redoc")
    page.wait_for_selector("redoc [role=navigation], .api-content", timeout=30_000)
    # everything loaded came from this server (ReDoc's "by Redocly" logo points at a CDN: the CSP blocks it)
    assert any(u.endswith("redoc.standalone.js") for u in loaded)
    assert all(u.startswith(server.url) or u.startswith(("blob:", "data:")) for u in loaded), loaded
    page.problems[:] = [m for m in page.problems if "cdn.redoc.ly" not in m]
    assert page.problems == []


def test_request_a_prompt_for_my_task(page, server, tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "mine.zip", "w") as zf:
        for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            for i in range(4):
                buf = io.BytesIO()
                Image.new("RGB", (40, 40), colour).save(buf, format="PNG")
                zf.writestr(f"{label}/{i}.png", buf.getvalue())
    page.goto(server.url + "/#/request")
    assert page.locator("#request").count() == 0  # needs a token
    page.evaluate(f"sessionStorage.setItem('tvp-token', {server.token!r})")
    page.reload()
    page.wait_for_selector("#request")
    page.set_input_files("#request-file", str(tmp_path / "mine.zip"))
    page.fill("#request-name", "red-or-blue")
    page.fill("#request-instruction", "Is this <b>red</b> or blue?")
    page.select_option("#request-method", "vp")
    page.fill("#request-models", "zoo:llava-p8")
    page.fill("#request-steps", "2")
    page.click("#request-run")
    page.wait_for_selector("#dataset-list tr")
    listed = page.locator("#dataset-list").inner_text()
    assert "red-or-blue" in listed and "blue, red" in listed
    page.wait_for_selector("#request-watch .job[data-state='succeeded'], #request-watch .job[data-state='failed']",
                           timeout=240_000)
    job = page.locator("#request-watch .job")
    assert job.get_attribute("data-state") == "succeeded", job.inner_text()
    page.wait_for_selector("#request-result")
    assert page.locator("#request-result").inner_text().startswith("Validation accuracy: ")
    with page.expect_download() as download:
        page.click("#request-download")
    assert {"prompt_config.json", "prompt.safetensors"} <= set(zipfile.ZipFile(download.value.path()).namelist())
    page.click("#dataset-list tr:has-text('red-or-blue') button")
    page.wait_for_selector("#dataset-list:has-text('none yet')")
    assert page.problems == []
