"""gvtsim status's per-stack join of vhm's VMs and gvt's vGPUs (orchestration/status.py, stack_summary):
each mismatch is a problem said in words, with what to do."""

from __future__ import annotations

from gvtsim.orchestration.status import confirmed, stack_summary


def vhm(*vms: tuple[int, str, str]) -> dict:
    return {"info": {"vms": {"count": len(vms), "list": [
        {"vm": vm, "name": f"vm{vm}", "state": state, "owner": owner, "vcpus": 1, "vgpu_id": 0}
        for vm, state, owner in vms]}}}


def gvt(*vgpus: tuple[int, int]) -> dict:
    return {"info": {"vgpus": [{"vm": vm, "vgpu_id": vid, "type": "GVTg_V5_4", "active": True, "failsafe": False}
                               for vm, vid in vgpus]}}


def test_a_running_vm_without_a_vgpu_is_a_problem_naming_the_guest_to_restart() -> None:
    out = stack_summary(vhm((3, "running", "s1-guest")), gvt())
    assert any("vm 3 (vm3) runs without a vGPU" in p and "`gvtsim restart s1/guest`" in p for p in out["problems"])


def test_matching_vms_and_vgpus_are_no_problem() -> None:
    assert stack_summary(vhm((3, "running", "s1-guest")), gvt((3, 1)))["problems"] == []


def test_a_vgpu_whose_vm_vhm_does_not_know_says_how_to_free_it() -> None:
    out = stack_summary(vhm(), gvt((9, 2)))
    assert any("vGPU 2 belongs to vm 9" in p and "gvtsim ctl destroy 9" in p for p in out["problems"])


def test_a_disagreement_seen_once_is_a_vm_in_flight_not_a_problem() -> None:
    # vhm's snapshot taken before a VM was created, gvt's after: one look says vGPU 2 has no VM, the next agrees
    first = stack_summary(vhm(), gvt((2, 2)))
    later = stack_summary(vhm((2, "running", "s0-guest")), gvt((2, 2)))
    assert first["problems"] and confirmed(first, later)["problems"] == []
    # a vGPU whose VM is gone on both looks stays a problem, with the first look's table
    stale = stack_summary(vhm(), gvt((9, 2)))
    out = confirmed(stale, stack_summary(vhm(), gvt((9, 2))))
    assert out["problems"] == stale["problems"] and out["rows"] == stale["rows"]
