"""The web page in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium, never a download).

The page chats (thinking on, an image attached), makes an image and repaints part of it, and the test
watches the answer resolve and the image sharpen step by step, then checks the final answer against the
pipeline. The server's model sleeps 20 ms per forward pass so that a screenshot can catch the states in
between. Screenshots go to a temporary folder, or to `$MMADA_SCREENSHOTS` when set:

    MMADA_SCREENSHOTS=docs python -m pytest tests/test_serve_browser.py    # refresh docs/serve_*.png
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmada import MMaDAPipeline
from mmada.serving import ServeConfig
from serve_helpers import MODEL, decode_png, live_server, png_bytes, questions, vqa_example

CHROMIUM = Path("/usr/bin/chromium")
STEP_DELAY_S = 0.02
VIEWPORT = {"width": 1000, "height": 640}

# Every state the page shows, recorded in the page as it happens (polling could miss fast steps).
RECORDER = """
window.__states = {chat: [], t2i: [], inpaint: []};
new MutationObserver(() => {
  const chat = document.querySelector('.msg.assistant:last-of-type .body');
  const log = window.__states.chat;
  if (chat && log[log.length - 1] !== chat.textContent) log.push(chat.textContent);
  for (const name of ['t2i', 'inpaint']) {
    const img = document.getElementById(name + '-image');
    const seen = window.__states[name];
    if (img && img.src && seen[seen.length - 1] !== img.src) seen.push(img.src);
  }
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
"""


@pytest.fixture(scope="module")
def slow_pipe():
    pipe = MMaDAPipeline.from_pretrained(MODEL)
    pipe.model.register_forward_pre_hook(lambda module, args: time.sleep(STEP_DELAY_S))
    return pipe


@pytest.fixture(scope="module")
def page(slow_pipe):
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: `apt-get install -y chromium` (.ci/run and "
                    "scripts/install.sh do it); the browser test never downloads a browser")
    from playwright.sync_api import sync_playwright

    with live_server(slow_pipe, ServeConfig()) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        page.add_init_script(RECORDER)
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent.length > 0")
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("MMADA_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _states(page, name):
    return page.evaluate(f"window.__states.{name}")


def test_chat_resolves_token_by_token(page, slow_pipe, shots, tmp_path):
    assert page.inner_text("#model") == MODEL
    question = questions(1)[0]
    page.check("#thinking")
    page.fill("#chat-input", question)
    page.click("#chat-send")
    page.wait_for_function("window.__states.chat.some(s => s.includes('░') && s.replace(/░/g, '').length > 20)")
    page.screenshot(path=str(shots / "serve_chat.png"))  # mid-denoising: the answer forming everywhere at once
    page.wait_for_selector(".msg.assistant[data-final='true']", timeout=30_000)
    states = _states(page, "chat")
    answer = page.inner_text(".msg.assistant:last-of-type .body")
    assert answer == slow_pipe.chat([{"role": "user", "content": question}], thinking=True).text
    masked = [s for s in states if "░" in s]
    assert len(masked) >= 5 and len({s.count("░") for s in masked}) >= 5  # fewer masks step after step
    steps = int(page.inner_text(".msg.assistant:last-of-type .meta").split(" steps")[0])
    assert len(masked) <= steps <= 64  # 16 steps a block; blocks after the answer's end are skipped

    example = vqa_example()  # a second turn about an image: the upload goes as a data: URL
    path = tmp_path / "scene.png"
    path.write_bytes(png_bytes(Image.fromarray(example.image)))
    page.uncheck("#thinking")
    page.click("#chat-clear")
    page.set_input_files("#chat-image", str(path))
    page.wait_for_selector("#chat-image-preview:not([hidden])")
    page.fill("#chat-input", example.question)
    page.click("#chat-send")
    page.wait_for_selector(".msg.assistant[data-final='true']", timeout=30_000)
    answer = page.inner_text(".msg.assistant:last-of-type .body")
    assert answer == slow_pipe.understand(Image.fromarray(example.image), example.question).text
    page.screenshot(path=str(shots / "serve_chat_image.png"))


def test_text_to_image_sharpens_step_by_step(page, slow_pipe, shots):
    page.click("button[data-tab='t2i']")
    page.fill("#t2i-prompt", "a green triangle to the left of a yellow circle")
    page.fill("#t2i-seed", "4")
    page.click("#t2i-send")
    page.wait_for_function("document.querySelectorAll('#t2i-steps-strip img').length >= 5")
    page.wait_for_selector("#t2i-image[data-final='true']", timeout=30_000)
    page.screenshot(path=str(shots / "serve_t2i.png"))
    sources = _states(page, "t2i")
    assert len(sources) == 12 and len(set(sources)) >= 6  # 11 partial images + the final one, changing
    assert page.locator("#t2i-steps-strip img").count() == 11
    final = decode_png(sources[-1].split(",", 1)[1])
    assert final.size == (slow_pipe.resolution, slow_pipe.resolution)
    direct = slow_pipe.text_to_image("a green triangle to the left of a yellow circle",
                                     generator=torch.Generator().manual_seed(4))[0]
    assert np.array_equal(np.asarray(final.convert("RGB")), np.asarray(direct))


def test_inpainting_repaints_the_drawn_region(page, shots):
    page.click("button[data-tab='inpaint']")
    page.click("#inpaint-use-last")
    page.wait_for_function("""(() => { const c = document.getElementById('inpaint-canvas');
        return c.getContext('2d').getImageData(128, 128, 1, 1).data[3] > 0; })()""")
    box = page.locator("#inpaint-mask").bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + 30)
    page.mouse.down()
    for y in range(30, 230, 10):  # a stroke down the left third
        page.mouse.move(box["x"] + 50, box["y"] + y)
    page.mouse.up()
    page.fill("#inpaint-prompt", "a red circle")
    page.click("#inpaint-send")
    page.wait_for_selector("#inpaint-image[data-final='true']", timeout=30_000)
    page.screenshot(path=str(shots / "serve_inpaint.png"))
    sources = _states(page, "inpaint")
    assert len(sources) >= 3  # partial images, then the repainted one
    assert decode_png(sources[-1].split(",", 1)[1]).size[0] > 0


def test_screenshots_are_pngs(shots):
    names = ["serve_chat.png", "serve_chat_image.png", "serve_t2i.png", "serve_inpaint.png"]
    for name in names:
        with Image.open(shots / name) as image:
            assert image.format == "PNG" and image.size == (VIEWPORT["width"], VIEWPORT["height"])
