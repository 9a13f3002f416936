"""PPGTT end to end with every process real: vhm, pgpu, gvt and a guest.

The guest runs non-privileged PPGTT batches (3-level on rcs, 4-level on bcs) mixed with the GGTT kinds on
the same engines, editing its page tables between workloads (map, unmap, remap); each edit is a trapped
WP write gvt shadows before the next submission, and pgpu walks only gvt's shadow tables. Every result
is verified in guest RAM. Run once with OOS off and once on: both all verified, gvt's WP trap counts
reported.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gvtsim.orchestration.health import probe_sync
from gvtsim.orchestration.hoststack import HostStack

pytestmark = pytest.mark.service
WORKLOADS = 24
MIX = "ppgtt_store,ppgtt_remap,store,ppgtt_fill,fill"


@pytest.fixture(params=[False, True], ids=["oos_off", "oos_on"])
def stack(request: pytest.FixtureRequest) -> Iterator[dict]:
    with HostStack(mem_size_mb=256, gvt_args=["--enable-oos"] if request.param else []) as hs:
        guest = hs.guest("--vms", "2", "--vcpus", "2", "--ram-mb", "16", "--vgpu-types", "GVTg_V5_4,GVTg_V5_8",
                         "--workloads", str(WORKLOADS), "--mix", MIX, name="guest")
        yield {"gvt": hs.gvt, "guest": guest, "oos": request.param}


def test_ppgtt_workloads_through_shadow_tables_all_verified(stack: dict) -> None:
    done = stack["guest"].wait_event("done", timeout=120)
    assert done["workloads_failed"] == 0, done
    assert done["workloads_verified"] == done["workloads_submitted"] == 2 * WORKLOADS
    for vm in done["per_vm"]:
        assert vm["state"] == "done" and vm["failures"] == [], vm
        assert {"ppgtt_store", "ppgtt_remap", "ppgtt_fill", "store", "fill"} <= set(vm["by_kind"]), vm
        assert vm["user_irqs"] == vm["user_irqs_asked"]
        assert vm["ioreqs"].get("WP", 0) > 0  # page-table edits trapped
    status = probe_sync(stack["gvt"].endpoint, want_reply=True)
    counters, ppgtt = status.counters, status.info["ppgtt"]
    assert ppgtt["enable_out_of_sync"] is stack["oos"]
    assert counters.get("ppgtt_spts_created", 0) > 0 and counters.get("ppgtt_wp_traps", 0) > 0
    assert counters.get("workloads_failed", 0) == 0 and counters.get("internal_errors", 0) == 0
    for vm, info in ppgtt["by_vm"].items():
        assert info["mms"] == 2, (vm, info)  # one per engine's PPGTT context (g2v CREATE), never re-created
    if stack["oos"]:
        assert counters.get("ppgtt_oos_pages", 0) > 0 and counters.get("ppgtt_oos_syncs", 0) > 0
    print(f"\nOOS {'on' if stack['oos'] else 'off'}: gvt WP traps {counters.get('ppgtt_wp_traps', 0)}, "
          f"guest WP ioreqs {sum(vm['ioreqs'].get('WP', 0) for vm in done['per_vm'])}, "
          f"OOS syncs {counters.get('ppgtt_oos_syncs', 0)}")
