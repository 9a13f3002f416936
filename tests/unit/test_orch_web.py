"""gvtsim web without a browser: the figures it derives from gvt's STATUS, and its HTTP routes."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from gvtsim.orchestration.web import Stack, Tile, Wall, half_size_png, make_app


class Log:
    def warning(self, *a: object, **k: object) -> None:
        pass


def status_info(busy_ns: int, workloads: int, failsafe: bool = False) -> dict:
    return {"vgpus": [{"vm": 4, "type": "GVTg_V5_4", "active": True, "failsafe": failsafe}],
            "failsafe": {"4": "GUEST_ERR"} if failsafe else {},
            "figures_by_vm": {"4": {"busy_ns": busy_ns, "workloads": workloads,
                                    "mmio_us": {"n": 10, "p50": 12.5, "p99": 80.0}}},
            "display_by_vm": {"4": {"monitor": True, "pipes": {"A": {"refresh_hz": 60.004, "flips": 7, "primary": {
                "width": 1024, "height": 768, "format": "XRGB8888", "tiling": "x"}}}}}}


def test_figures_are_rates_over_the_poll_interval() -> None:
    wall = Wall([Stack("0", "tcp://127.0.0.1:1")], fps=2, log=Log())
    tile = Tile("0", 4)
    v = status_info(0, 0)["vgpus"][0]
    wall._figures(tile, v, status_info(1_000_000, 10), now=100.0)
    wall._figures(tile, v, status_info(51_000_000, 30), now=100.5)  # 50 ms of GPU time, 20 workloads in 0.5 s
    f = tile.figures
    assert f["engine_busy_pct"] == 10.0 and f["workloads_per_s"] == 40.0
    assert (f["state"], f["type"], f["mmio_p50_us"], f["mmio_p99_us"], f["failsafe_reason"]) == \
        ("active", "GVTg_V5_4", 12.5, 80.0, "-")
    assert f["mode"] == "1024x768@60 XRGB8888 x" and f["flips"] == 7
    bad = status_info(51_000_000, 30, failsafe=True)
    wall._figures(tile, bad["vgpus"][0], bad, now=101.0)
    assert tile.figures["state"] == "failsafe" and tile.figures["failsafe_reason"] == "GUEST_ERR"


async def test_routes_serve_the_page_the_list_and_each_screen() -> None:
    wall = Wall([Stack("0", "tcp://127.0.0.1:1")], fps=2, log=Log())
    tile = Tile("0", 4, name="vm-a", generation=3, png=half_size_png(4, 2, bytes(range(24))))
    wall.tiles["0/4"] = tile
    async with TestClient(TestServer(make_app(wall, 250))) as client:
        page = await client.get("/")
        assert page.status == 200 and "img" in await page.text()
        data = await (await client.get("/api/screens")).json()
        assert [(s["key"], s["name"], s["generation"], s["has_image"]) for s in data["screens"]] == \
            [("0/4", "vm-a", 3, True)]
        png = await client.get("/screen/0/4.png?g=3")
        assert png.status == 200 and png.content_type == "image/png" and (await png.read())[:8] == b"\x89PNG\r\n\x1a\n"
        assert (await client.get("/screen/0/5.png")).status == 404
