"""The malicious-guest suite with real processes: one victim VM keeps running verified workloads while one
attacker guest after another tries to get out of its vGPU; the victim checksums its RAM, GGTT and PPGTT
views (canary pages, services/guest/integrity.py) before and after.

Each attack must end with the attacker's vGPU in failsafe (the command scanner refused it, counted by
reason in gvt's STATUS) or its access refused with the reason counted (a foreign PTE becomes the scratch
page; forged ids on vhm get ``forged_id``; a guest that vanishes mid-request has its VMs destroyed), and
the victim must see 0 changes and every workload verified.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from gvtsim.orchestration.hoststack import HostStack
from gvtsim.protocol import messages as m
from gvtsim.services.common.memory import PAGE_SHIFT, MachineMemory
from gvtsim.services.guest.hostile import MARK
from support.rawpeer import RawPeer

pytestmark = pytest.mark.service
#: the attacks GVT's command scanner must refuse (their vGPU goes failsafe; the reason is a cmd_scan_* counter)
FAILSAFE_ATTACKS = ("lri", "update_gtt", "ggtt_oob", "pipe_control_oob", "flush_dw_oob", "blit_oob",
                    "bb_start_foreign")


def _scan_reasons(before, after) -> dict[str, int]:
    return {k: v - before.counters.get(k, 0) for k, v in after.counters.items()
            if k.startswith("cmd_scan_") and k != "cmd_scan_errors" and v != before.counters.get(k, 0)}


@pytest.mark.timeout(600)
def test_attackers_get_nowhere_and_the_victim_is_untouched() -> None:
    with HostStack(heartbeat=2.0) as hs:  # generous liveness: the suite runs many processes at once
        victim = hs.guest("--vms", "1", "--vcpus", "2", "--ram-mb", "16", "--vgpu-types", "GVTg_V5_4", "--integrity",
                          "--duration", "30", "--name-prefix", "victim", name="victim")
        before = victim.wait_event("integrity_before", timeout=40)
        vvm = before["vm"]
        seen: dict[str, dict] = {}
        reasons: dict[str, dict[str, int]] = {}
        base = hs.gvt_status()
        assert base is not None
        for kind in (*FAILSAFE_ATTACKS, "foreign_pte"):  # one attacker at a time, each a fresh guest process
            prev = hs.gvt_status()
            attacker = hs.guest("--vms", "1", "--vcpus", "1", "--ram-mb", "16", "--vgpu-types", "GVTg_V5_8",
                                "--workloads", "0", "--hang-timeout", "1", "--hostile", kind,
                                "--name-prefix", f"a_{kind}_", name=f"attacker-{kind}")
            seen[kind] = attacker.wait_event("hostile", timeout=40)
            st = hs.gvt_status()
            assert st is not None and prev is not None
            reasons[kind] = _scan_reasons(prev, st)
            vgpus = {v["vm"]: v for v in st.info["vgpus"]}
            if kind in FAILSAFE_ATTACKS:
                assert seen[kind]["hang"] is True, seen[kind]  # refused by the scanner: a hang for it alone
                assert vgpus[seen[kind]["vm"]]["failsafe"] is True, (kind, vgpus)
                assert len(reasons[kind]) == 1 and sum(reasons[kind].values()) == 1, (kind, reasons[kind])
                print(f"{kind}: failsafe, counted as {reasons[kind]}")
            assert vgpus[vvm]["failsafe"] is False, kind
            attacker.stop()  # gone: vhm destroys its VM, gvt its vGPU

        # forged ids on vhm against the victim's VM, from a guest connection of its own
        intruder = RawPeer(hs.vhm.endpoint, "vhm", key="guest")
        assert isinstance(intruder.hello("guest"), m.HelloAck)
        for msg in (m.VmReset(req=1, vm=vvm), m.VmDestroy(req=2, vm=vvm)):
            err = intruder.ask(msg)
            assert isinstance(err, m.Error) and err.code == "forged_id", err
        intruder.send(m.Ioreq(vm=vvm, vcpu=0, seq=1, kind=1, dir=1, addr=0xE000_0000 + 0x44200, size=4, value=0))
        err = intruder.recv()
        assert isinstance(err, m.Error) and err.code == "forged_id"
        counters = intruder.status().counters
        assert counters["authz_refused_owner_IOREQ"] >= 1 and counters["authz_refused_owner_VM_RESET"] >= 1
        intruder.close()

        # a guest that vanishes in the middle of its requests: SIGKILL while its workloads run
        runner = hs.guest("--vms", "1", "--vcpus", "2", "--ram-mb", "16", "--vgpu-types", "GVTg_V5_8",
                          "--workloads", "10000", "--name-prefix", "vanish", name="vanisher")
        gone_vm = runner.wait_event("vm_ready", timeout=40)["vm"]
        os.killpg(runner.proc.pid, signal.SIGKILL)
        runner.proc.wait(10)

        after = victim.wait_event("integrity_after", timeout=300)
        done = victim.wait_event("done", timeout=30)
        # vhm notices the vanished guest (its session goes silent), destroys its VM, and gvt its vGPU
        deadline = time.monotonic() + 60
        while True:
            final = hs.gvt_status()
            assert final is not None
            if gone_vm not in {v["vm"] for v in final.info["vgpus"]} or time.monotonic() > deadline:
                break

    # the victim: no change to any of its views, every workload verified
    assert {k: after[k] for k in ("ram", "ggtt", "ppgtt")} == {k: before[k] for k in ("ram", "ggtt", "ppgtt")}
    assert done["workloads_failed"] == 0 and done["workloads_verified"] == done["workloads_submitted"] > 0, done
    # every failsafe attack counted, each with its reason, in gvt's STATUS
    assert final.counters["cmd_scan_errors"] - base.counters.get("cmd_scan_errors", 0) == len(FAILSAFE_ATTACKS)
    # the foreign PTE: the guest kept its value, the GPU's write went to the scratch page
    fp = seen["foreign_pte"]
    assert fp["hang"] is False and fp["pte_read_back"] == (fp["gfn"] << PAGE_SHIFT) | 1
    # the vanished guest's VM and vGPU are gone
    assert gone_vm not in {v["vm"] for v in final.info["vgpus"]}
    assert MARK and MachineMemory  # imported for the reasons documented above
