"""The paravirtualized path with every process real: trap counts per submission (4 on the trap path, 1 on
PV, exactly), PPGTT updates with 0 WP faults on PV and N on the trap path, PV and trap-path VMs side by
side, and compatibility: a newer guest format or a corrupt header falls back to the trap path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gvtsim.orchestration.health import probe_sync
from gvtsim.orchestration.hoststack import HostStack
from support.procs import ServiceProc

pytestmark = pytest.mark.service
WORKLOADS = 16
PPGTT_MIX = "ppgtt_store,ppgtt_remap"


@pytest.fixture(scope="module")
def stack() -> Iterator[dict]:
    with HostStack() as hs:
        def guest(name: str, *extra: str, mix: str = "store,fill,copy,aperture_copy") -> ServiceProc:
            return hs.guest("--vms", "1", "--vcpus", "2", "--workloads", str(WORKLOADS), "--mix", mix,
                            "--name-prefix", name, *extra, name=name)

        yield {"gvt": hs.gvt, "guest": guest}


def run(stack: dict, name: str, *extra: str, mix: str = "store,fill,copy,aperture_copy") -> tuple[dict, dict, dict]:
    """One guest process with one VM: (its done summary's VM, the pv event, gvt's trap counters for it)."""
    g = stack["guest"](name, *extra, mix=mix)
    pv = g.wait_event("pv", timeout=30) if "--pv" in extra else {}
    ready = g.wait_event("vm_ready", timeout=30)
    done = g.wait_event("done", timeout=120)
    status = probe_sync(stack["gvt"].endpoint, want_reply=True)
    traps = status.info["traps_by_vm"][str(ready["vm"])]
    (vm,) = done["per_vm"]
    g.terminate()
    assert done["workloads_failed"] == 0 and done["workloads_verified"] == WORKLOADS, vm["failures"]
    return vm, pv, traps


def test_traps_per_submission_four_on_the_trap_path_one_on_pv(stack):
    trap_vm, _, trap_traps = run(stack, "trap")
    pv_vm, pv, pv_traps = run(stack, "pv", "--pv")
    assert pv["status"] == "accepted" and pv["enabled"] == 0b101  # PV_PPGTT | PV_SUBMISSION
    assert trap_vm["submission_traps"] == {"4": WORKLOADS}  # ELSP: element 1 high, low, element 0 high, low
    assert pv_vm["submission_traps"] == {"1": WORKLOADS}  # one g2v PV_SEND_TRIGGER
    # gvt's per-VM counters agree: PV sends its submissions as g2v notifications, the trap path as MMIO
    # writes (4 per submission, among the driver's other register writes)
    assert pv_traps["g2v_notify"] >= WORKLOADS + 1  # + SHARED_PAGE_SETUP
    assert trap_traps.get("g2v_notify", 0) < WORKLOADS and trap_traps["mmio_write"] >= 4 * WORKLOADS
    assert pv_traps["mmio_write"] < trap_traps["mmio_write"] - 3 * WORKLOADS


def test_ppgtt_updates_take_no_wp_fault_on_pv(stack):
    _, _, trap_traps = run(stack, "ptrap", mix=PPGTT_MIX)
    pv_vm, pv, pv_traps = run(stack, "ppv", "--pv", mix=PPGTT_MIX)
    assert trap_traps["wp"] > WORKLOADS  # every page-table entry the guest edits faults on the trap path
    assert pv_traps.get("wp", 0) == 0  # the same edits through PV: zero WP faults
    assert pv_vm["by_kind"] == {"ppgtt_store": WORKLOADS // 2, "ppgtt_remap": WORKLOADS // 2}


@pytest.mark.parametrize("flags,status", [(("--pv-version", "2"), "unsupported_version"),
                                          (("--pv-corrupt",), "bad_magic")])
def test_incompatible_or_corrupt_shared_page_falls_back_to_the_trap_path(stack, flags, status):
    vm, pv, _ = run(stack, f"compat-{status}", "--pv", *flags)
    assert pv["status"] == status and pv["enabled"] == 0 and status in pv["reason"]
    assert vm["submission_traps"] == {"4": WORKLOADS}  # every workload verified, through ELSP


def test_pv_and_trap_vms_side_by_side(stack):
    a = stack["guest"]("side-pv", "--pv", mix="store,fill,ppgtt_store,aperture_copy")
    b = stack["guest"]("side-trap", mix="store,fill,ppgtt_store,aperture_copy")
    for g, traps in ((a, "1"), (b, "4")):
        done = g.wait_event("done", timeout=120)
        assert done["workloads_failed"] == 0 and done["workloads_verified"] == WORKLOADS
        assert done["per_vm"][0]["submission_traps"] == {traps: WORKLOADS}


def test_acrn_pvmmio_elsp_submit_takes_one_trapped_write_per_submission(stack):
    """ACRN's PVMMIO (handlers.c pvinfo_mmio_write / elsp_mmio_write): the guest asks for every level, gvt
    grants PVMMIO_ELSP_SUBMIT only, maps the shared page at BAR0 + 2 MB, and each submission is three
    memory writes to that page plus one trapped ELSP write; every workload verifies."""
    g = stack["guest"]("pvmmio", "--pvmmio", "0x3f")
    ready = g.wait_event("vm_ready", timeout=30)
    done = g.wait_event("done", timeout=120)
    g.terminate()
    assert ready["pvmmio"] == 1  # PVMMIO_ELSP_SUBMIT, the only level gvt offers
    assert done["workloads_failed"] == 0 and done["workloads_verified"] == WORKLOADS, done["per_vm"][0]["failures"]
    assert done["per_vm"][0]["submission_traps"] == {"1": WORKLOADS}
    counters = probe_sync(stack["gvt"].endpoint, want_reply=True).counters
    assert counters["pvmmio_elsp_submits"] >= WORKLOADS and counters["pvmmio_granted"] >= 1
    assert counters.get("pvmmio_page_trapped", 0) == 0  # the page was mapped: no access to it trapped
