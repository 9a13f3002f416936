"""The real-browser test of ``gvtsim web``: headless Chromium (Debian's package), driven by Playwright for
Python with the system browser, opens the wall on a running 4-VM topology, sees 4 screens whose images
change over time, and saves a screenshot.

Without chromium or playwright the test is skipped on a developer's machine, and FAILS in CI (CI=true):
the CI script installs chromium before `make test`."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from gvtsim.orchestration.hoststack import HostStack

pytestmark = [pytest.mark.service, pytest.mark.timeout(400)]  # 4 VMs booting screens on a shared CI box

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SIGNATURE_JS = """() => { window.sig = (img) => {
    const c = document.createElement('canvas'); c.width = 192; c.height = 144;
    const g = c.getContext('2d'); g.drawImage(img, 0, 0, 192, 144);
    const d = g.getImageData(0, 0, 192, 144).data; let h = 0;
    for (let i = 0; i < d.length; i += 4) h = (h * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) % 2147483647;
    return String(h); }; }"""


def _need(ok: bool, what: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing: CI must install it (.ci/run: apt-get install -y chromium; "
                    f"pip install playwright)")
    pytest.skip(f"{what} is not installed (apt-get install -y chromium; pip install playwright)")


def test_browser_sees_four_live_screens(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _need(os.access(CHROMIUM, os.X_OK), f"Debian's chromium ({CHROMIUM})")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "playwright (Python)")
        raise
    # generous heartbeats and --recover: a shared, overloaded box must not turn a late heartbeat into a dead VM
    with HostStack(prefix="gvtsim-web-", heartbeat=2.0) as stack:
        guest = stack.guest("--vms", "4", "--workloads", "30", "--display", "--display-fps", "3", "--recover",
                            name="guest-web")
        ready: set[str] = set()
        while len(ready) < 4:
            ready.add(guest.wait_event("display_ready", timeout=240)["name"])
        page_proc = stack.web("tcp://127.0.0.1:0", "--fps", "4")
        url = page_proc.endpoint
        assert url.startswith("http://127.0.0.1:")
        profile = tempfile.mkdtemp(prefix="gvtsim-chromium-")
        try:
            with sync_playwright() as pw:
                ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                            args=FLAGS, viewport={"width": 1440, "height": 700})
                try:
                    page = ctx.new_page()
                    page.goto(url)
                    page.wait_for_function(
                        """() => { const imgs = [...document.querySelectorAll('img.screen')];
                                   return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
                        timeout=90_000)
                    # each image's decoded pixels, drawn into a canvas and summed with their positions
                    page.evaluate(SIGNATURE_JS)
                    # four decoded, different screens (an image not decoded yet draws as transparent: "0")
                    # the signatures are taken from the very check that held: the images refresh live, so a
                    # second look may catch one between its new source and its decoding ("0")
                    first = page.wait_for_function(
                        """() => { const s = [...document.querySelectorAll('img.screen')].map(window.sig);
                                   return s.length === 4 && !s.includes("0") && new Set(s).size === 4 && s; }""",
                        timeout=90_000, polling=250).json_value()
                    assert len(set(first)) == 4 and "0" not in first, first
                    later = page.wait_for_function(
                        """(before) => { const imgs = [...document.querySelectorAll('img.screen')];
                                         const s = imgs.map(window.sig);
                                         return imgs.length === 4 && imgs.every((im, i) => im.complete &&
                                                im.naturalWidth > 0 && s[i] !== "0" && s[i] !== before[i]) && s; }""",
                        arg=first, timeout=90_000, polling=250).json_value()
                    assert all(a != b for a, b in zip(first, later)), (first, later)
                    text = page.locator("#wall").inner_text()
                    for label in ("engine busy", "workloads/s", "MMIO p50 / p99", "failsafe", "GVTg_V5_8"):
                        assert label in text
                    shot = tmp_path / "wall.png"
                    page.screenshot(path=str(shot))
                    assert shot.stat().st_size > 10_000
                    keep = os.environ.get("GVTSIM_WALL_SCREENSHOT")
                    if keep:
                        shutil.copy(shot, keep)
                finally:
                    ctx.close()
        finally:
            shutil.rmtree(profile, ignore_errors=True)
