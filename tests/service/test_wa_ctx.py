"""The render context's workaround batches end to end, every process real: the guest driver programs an
indirect-ctx buffer and a per-ctx batch for its ``wa_store`` requests (RCS_INDIRECT_CTX, BB_PER_CTX_PTR), gvt
shadows and scans them (gvt/cmd_parser.c intel_gvt_scan_and_shadow_wa_ctx, gvt/scheduler.c
prepare_shadow_wa_ctx), pgpu runs the shadows at context restore, and the guest verifies their stores."""

from __future__ import annotations

import pytest

from gvtsim.orchestration.health import probe_sync
from gvtsim.orchestration.hoststack import HostStack

pytestmark = pytest.mark.service
WORKLOADS = 12


def test_wa_store_workloads_run_their_shadowed_workaround_batches():
    with HostStack() as hs:
        g = hs.guest("--vms", "1", "--vcpus", "2", "--workloads", str(WORKLOADS), "--mix", "wa_store,store",
                     "--name-prefix", "wa", name="wa")
        done = g.wait_event("done", timeout=120)
        counters = probe_sync(hs.gvt.endpoint, want_reply=True).counters
        g.terminate()
    (vm,) = done["per_vm"]
    assert done["workloads_failed"] == 0 and done["workloads_verified"] == WORKLOADS, vm["failures"]
    wa_runs = vm["by_kind"].get("wa_store", 0)
    assert wa_runs > 0  # the render engine ran some
    assert counters["wa_ctx_shadowed"] == wa_runs  # each one's buffers shadowed and scanned, no other
    assert counters.get("wa_ctx_scan_errors", 0) == 0 and counters.get("failsafe_guest_err", 0) == 0
    # the driver's power bring-up went through gvt's handlers (pm.py): its pcode memory-latency read
    assert counters["pcode_mailbox_commands"] >= 1
