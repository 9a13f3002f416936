"""End to end display: guests with screens on a real host stack; ``gvtsim screen`` of each VM gives a PNG
whose pixels equal what that VM's guest drew (its own copy of the screen, dumped by the guest), for a
linear and an X-tiled framebuffer; the plane query's generation moves with the flips."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from gvtsim.orchestration.hoststack import HostStack
from gvtsim.orchestration.screen import capture

pytestmark = [pytest.mark.service, pytest.mark.timeout(300)]


def xrgb_to_rgb(raw: bytes, width: int, height: int, stride: int) -> bytes:
    """The guest's dump (XRGB8888 rows, little-endian B G R X) as packed RGB, written independently of the
    host's decoder."""
    out = bytearray()
    for y in range(height):
        row = raw[y * stride:y * stride + width * 4]
        for x in range(width):
            b, g, r = row[4 * x], row[4 * x + 1], row[4 * x + 2]
            out += bytes((r, g, b))
    return bytes(out)


@pytest.fixture(scope="module")
def stack():  # type: ignore[no-untyped-def]
    st = HostStack(prefix="gvtsim-display-", heartbeat=2.0)  # a late heartbeat on a busy box is not a death
    st.start()
    try:
        guest = st.guest("--vms", "2", "--workloads", "4", "--ram-mb", "24", "--display", "--display-tiling",
                         "alternate", "--display-frames", "3", "--display-dump", os.path.join(st.run_dir, "dump"),
                         name="guest-display")
        done = [guest.wait_event("display_done", timeout=240) for _ in range(2)]
        yield st, {d["name"]: d for d in done}
    finally:
        st.stop()


@pytest.mark.parametrize("name,tiling", [("vm0", "linear"), ("vm1", "x")])
def test_screen_png_equals_what_the_guest_drew(stack, name: str, tiling: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    st, done = stack
    d = done[name]
    assert d["tiling"] == tiling and d["frames_failed"] == 0 and d["frames_verified"] == d["frames_drawn"] >= 4
    out = tmp_path / f"{name}.png"
    r = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "screen", str(d["vm"]), "-o", str(out),
                        "--endpoint", st.gvt.endpoint, "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    img = Image.open(out)
    assert img.size == (1024, 768) and img.mode == "RGB"
    with open(d["dump"], "rb") as f:
        guest_copy = f.read()
    expected = xrgb_to_rgb(guest_copy, d["width"], d["height"], d["stride"])
    got = img.tobytes()
    assert got == expected, next(i for i in range(len(got)) if got[i] != expected[i])
    # the guest drew something: not one flat colour
    assert len(set(got[i:i + 3] for i in range(0, len(got), 3 * 997))) > 3


def test_plane_query_reports_the_flips(stack) -> None:  # type: ignore[no-untyped-def]
    st, done = stack
    shots = {n: asyncio.run(capture(st.gvt.endpoint, d["vm"])) for n, d in done.items()}
    assert shots["vm0"].plane.tiling == "linear" and shots["vm1"].plane.tiling == "x"
    for n, d in done.items():
        p = shots[n].plane
        assert (p.format, p.width, p.height) == ("XRGB8888", 1024, 768)
        assert p.generation == d["flips"]  # PIPE_FLIPCOUNT counted every PLANE_SURF write
    r = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "screen", "77", "--endpoint",
                        st.gvt.endpoint], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "vm 77 has no vGPU" in r.stderr
