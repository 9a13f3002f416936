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


# --------------------------------------------------------------------------------------------------------------
# The rest of the attacks: page-table entries at foreign frames (GGTT and PPGTT), privileged commands in
# an unscanned PPGTT batch, forged ELSP descriptors (and their PV twin), forged WP ioreqs, interrupt-register
# games, self-modifying batches and rings, forged MSIs and foreign roles. Each attacker aims at the victim's own
# canary and context (the targets its integrity_before event names). For each: the attacker's vGPU in failsafe
# or its access refused or defused, the reason counted in a service's STATUS; the victim: 0 changes, every
# workload verified.

#: attack -> (expect the attacker's vGPU in failsafe, {service: {counter: minimum increase}})
EXPECT: dict[str, tuple[bool, dict[str, dict[str, int]]]] = {
    "ppgtt_foreign_pte": (False, {"gvt": {"ppgtt_invalid_gfn": 2}}),
    "ggtt_foreign_frames": (False, {"gvt": {"ggtt_invalid_gfn": 2}}),
    "ppgtt_batch_privileged": (False, {"pgpu": {"nonpriv_ggtt_access": 2, "nonpriv_register_load": 2,
                                                "nonpriv_ggtt_batch_start": 1}}),
    "elsp_foreign_lrca": (True, {"gvt": {"workload_create_failed_lrca": 1, "failsafe_guest_err": 1}}),
    "elsp_foreign_ring": (True, {"gvt": {"workload_create_failed_ring": 1, "failsafe_guest_err": 1}}),
    "elsp_unprivileged": (True, {"gvt": {"elsp_refused_unprivileged": 1, "failsafe_guest_err": 1}}),
    "pv_forged": (True, {"gvt": {"ppgtt_pv_update_unknown_root": 1, "workload_create_failed_lrca": 1,
                                 "failsafe_guest_err": 1}}),
    "wp_forged": (False, {"vhm": {"ioreq_refused_wp": 3}}),
    "irq_games": (False, {"gvt": {"irq_event_masked": 2}}),
    "self_modifying_batch": (False, {"gvt": {"shadow_guest_modified": 1}}),
    # the CPU's rewrite races the GPU: shadow_guest_modified is counted when it lands before the completion
    "rewrite_after_scan": (False, {"gvt": {"workloads_scanned": 1}}),
}


def _counters(hs: HostStack) -> dict[str, dict[str, int]]:
    from gvtsim.orchestration.health import probe_sync

    out = {}
    for name in ("vhm", "gvt", "pgpu"):
        st = probe_sync(getattr(hs, name).endpoint, timeout=3.0, want_reply=True, server=name)
        assert st is not None, f"{name} does not answer STATUS"
        out[name] = dict(st.counters)
    return out


def _delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {s: {k: v - before[s].get(k, 0) for k, v in after[s].items() if v != before[s].get(k, 0)} for s in after}


def _check_outcome(kind: str, ev: dict) -> None:
    """What the attacker itself saw: defused attacks completed with only their own memory written."""
    from gvtsim.services.guest.hostile import MARK as mark

    if kind in ("ppgtt_foreign_pte", "ggtt_foreign_frames"):
        assert ev["hang"] is False, ev  # completed: the stores went to the scratch page
    if kind == "ppgtt_foreign_pte":
        assert ev["guest_entries_kept"] is True, ev
    if kind == "ppgtt_batch_privileged":
        assert ev["hang"] is False and ev["own_store_landed"] is True, ev
    if kind.startswith("elsp_") or kind == "pv_forged":
        assert ev["hang"] is True and not ev.get("skipped"), ev  # never completes
    if kind == "wp_forged":
        assert set(ev["results"].values()) == {"bad_request"} and ev["own_page"] == 0, ev
    if kind == "irq_games":
        sp = ev["spoof"]
        # ISR is a plain register (its write drives nothing), the master's summary bits and IIR cannot be set
        assert sp["msis"] == 0 and sp["iir_after_w1c"] == 0 and sp["master"] & 0x7FFF_FFFF == 0, ev
        assert ev["masked"]["hang"] is True and ev["masked"]["msis"] == 0, ev  # swallowed its own interrupts
        assert ev["after"]["hang"] is False and ev["own_stores"] == [mark, mark], ev
    if kind in ("self_modifying_batch", "rewrite_after_scan"):
        assert ev["hang"] is False and ev["own_stores"] == [mark, mark], ev  # the commands as scanned ran
    if kind == "self_modifying_batch":
        assert ev["batch_rewritten"] and ev["ring_rewritten"], ev  # the rewrites landed in its own copies
    if kind == "rewrite_after_scan":
        assert ev["rewrites"] == 1, ev


@pytest.mark.timeout(900)
def test_every_other_attack_gets_nowhere_and_the_victim_is_untouched() -> None:
    import json

    with HostStack(heartbeat=2.0) as hs:
        victim = hs.guest("--vms", "1", "--vcpus", "2", "--ram-mb", "16", "--vgpu-types", "GVTg_V5_4", "--integrity",
                          "--duration", "40", "--name-prefix", "victim",
                          name="victim")
        before = victim.wait_event("integrity_before", timeout=60)
        vvm, targets = before["vm"], before["targets"]
        table: list[tuple[str, str, dict]] = []
        for kind, (failsafe, want) in EXPECT.items():
            c0 = _counters(hs)
            attacker = hs.guest("--vms", "1", "--vcpus", "1", "--ram-mb", "16", "--vgpu-types", "GVTg_V5_8",
                                "--workloads", "0", "--hang-timeout", "1", "--hostile", kind,
                                "--hostile-target", json.dumps(targets), "--name-prefix", f"b_{kind}_",
                                name=f"attacker-{kind}")
            ev = attacker.wait_event("hostile", timeout=120)
            d = _delta(c0, _counters(hs))
            st = hs.gvt_status()
            assert st is not None
            vgpus = {v["vm"]: v for v in st.info["vgpus"]}
            assert vgpus[ev["vm"]]["failsafe"] is failsafe, (kind, ev, vgpus[ev["vm"]])
            assert vgpus[vvm]["failsafe"] is False, kind
            for service, counters in want.items():
                for name, least in counters.items():
                    assert d[service].get(name, 0) >= least, (kind, service, name, d[service], ev)
            _check_outcome(kind, ev)
            table.append((kind, "failsafe" if failsafe else "refused/defused",
                          {s: {k: d[s][k] for k in c} for s, c in want.items()}))
            attacker.stop()

        # raw peers: a guest connection forging another VM's WP ioreq and an MSI for it; a guest key claiming
        # the device model's role at gvt and pgpu
        intruder = RawPeer(hs.vhm.endpoint, "vhm", key="guest")
        assert isinstance(intruder.hello("guest"), m.HelloAck)
        intruder.send(m.Ioreq(vm=vvm, vcpu=0, seq=1, kind=3, dir=1, addr=0x10_0000, size=8, value=MARK))
        err = intruder.recv()
        assert isinstance(err, m.Error) and err.code == "forged_id", err
        err = intruder.ask(m.InjectMsi(req=7, vm=vvm, addr=0xFEE0_0000, data=0x40))
        assert isinstance(err, m.Error) and err.code == "unexpected", err
        vc = intruder.status().counters
        assert vc["authz_refused_owner_IOREQ"] >= 1 and vc["authz_refused_role_INJECT_MSI"] >= 1, vc
        intruder.close()
        for server in ("gvt", "pgpu"):
            p = RawPeer(getattr(hs, server).endpoint, server, key="guest")
            reply = p.hello("gvt" if server == "pgpu" else "ctl")
            assert isinstance(reply, m.Error) and reply.code == "unexpected", (server, reply)
            p.close()
        table.append(("forged WP ioreq / MSI for the victim, guest key as gvt or ctl", "refused",
                      {"vhm": {"authz_refused_owner_IOREQ": vc["authz_refused_owner_IOREQ"],
                               "authz_refused_role_INJECT_MSI": vc["authz_refused_role_INJECT_MSI"]}}))

        after = victim.wait_event("integrity_after", timeout=300)
        done = victim.wait_event("done", timeout=30)
    for row in table:
        print(f"{row[0]}: {row[1]}, counted as {row[2]}")
    assert {k: after[k] for k in ("ram", "ggtt", "ppgtt")} == {k: before[k] for k in ("ram", "ggtt", "ppgtt")}
    assert done["workloads_failed"] == 0 and done["workloads_verified"] == done["workloads_submitted"] > 0, done
