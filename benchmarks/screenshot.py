"""A full-page PNG of a report.html in headless Chromium (the docs' screenshots):

    python benchmarks/screenshot.py runs/demo/audit/report.html docs/report-demo.png [--width 1200]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def screenshot(report: Path, out: Path, width: int = 1200) -> None:
    from playwright.sync_api import sync_playwright

    exe = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if exe is None:
        raise SystemExit("no Chromium on PATH (Debian: apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        tile = page.locator("figure.tile")
        if tile.count():
            tile.first.click()  # the click-through panel, as a reader sees it
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=1200)
    a = p.parse_args()
    screenshot(a.report, a.out, a.width)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
