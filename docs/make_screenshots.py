"""Screenshots of the playground, one per mode, into docs/playground/*.png (each kept under 200 KB).

    .venv/bin/python docs/make_screenshots.py

Starts a real server on the shipped models (exported/), drives Debian's chromium with Playwright (headless;
`apt-get install chromium` if /usr/bin/chromium is missing; never `playwright install`), and shoots each mode
after its run has finished.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import serve  # noqa: E402

OUT = ROOT / "docs" / "playground"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
MAX_BYTES = 200_000
SEVEN = [[(7, 6), (20, 6)], [(20, 6), (16, 14), (12, 23)]]
TOP_OF_A_SEVEN = [[(8, 6), (20, 6)], [(20, 6), (17, 13)]]  # through the last kept row

log = logging.getLogger("screenshots")


def draw(page: Page, selector: str, strokes: list[list[tuple[int, int]]]) -> None:
    box = page.locator(selector).bounding_box()
    for stroke in strokes:
        points = [(box["x"] + (x + 0.5) * box["width"] / 28, box["y"] + (y + 0.5) * box["height"] / 28)
                  for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for p in points[1:]:
            page.mouse.move(*p, steps=8)
        page.mouse.up()


def save(page: Page, name: str) -> None:
    """A full-page PNG, palette-quantized when it would pass MAX_BYTES."""
    png = page.screenshot(full_page=True)
    if len(png) > MAX_BYTES:
        image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=True)
        png = buf.getvalue()
    assert len(png) <= MAX_BYTES, f"{name}: {len(png)} bytes"
    (OUT / f"{name}.png").write_bytes(png)
    log.info("%s.png: %d KB", name, len(png) // 1024)


def pick(page: Page, model: str, tab: str) -> None:
    page.select_option("#model-select", model)
    page.click(f"#tab-{tab}")


def generate(page: Page, model: str, name: str, **fields: str) -> None:
    pick(page, model, "generate")
    for selector, value in fields.items():
        page.fill(f"#gen-{selector}", value)
    page.click("#gen-start")
    page.wait_for_selector("#gen-output[data-state=done]")
    save(page, name)


def shoot(page: Page) -> None:
    pick(page, "pixelcnn48-mnist", "generate")
    for seed in range(1, 8):  # the recent-samples strip
        page.fill("#gen-seed", str(seed))
        page.click("#gen-start")
        page.wait_for_selector("#gen-output[data-state=done]")
    page.check("#gen-shade")
    generate(page, "pixelcnn48-mnist", "generate-image", seed="8")
    generate(page, "lstm-shakespeare", "generate-text", seed="5", prompt="ROMEO:\n", **{"max-len": "420"})
    generate(page, "wavenet-fsdd", "generate-audio", seed="2", chunk="64")

    pick(page, "pixelcnn48-mnist", "complete")
    page.fill("#cmp-rows", "12")
    draw(page, "#cmp-pad", TOP_OF_A_SEVEN)
    page.fill("#cmp-count", "6")
    page.click("#cmp-start")
    page.wait_for_selector("#cmp-results[data-state=done]")
    save(page, "complete")

    pick(page, "nade-mnist", "score")
    draw(page, "#score-pad", SEVEN)
    page.click("#score-run")
    page.wait_for_selector("#score-output[data-state=done]")
    save(page, "score")

    pick(page, "lstm-shakespeare", "score")
    page.fill("#score-text", "Now is the winter of our discontent\nMade glorious summer by this sun of York.")
    page.click("#score-run")
    page.wait_for_selector("#score-output[data-state=done]")
    save(page, "score-text")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    with serve(ROOT / "exported", threads=1) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(120_000)
        page.goto(f"{url}/")
        page.wait_for_selector("body[data-ready]")
        shoot(page)
        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
        phone.goto(f"{url}/#pixelcnn48-mnist")
        phone.wait_for_selector("body[data-ready]")
        phone.click("#gen-start")
        phone.wait_for_selector("#gen-output[data-state=done]")
        save(phone, "phone")
        browser.close()


if __name__ == "__main__":
    main()
