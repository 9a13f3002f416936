"""Errors inside the GVT core. They never leave a core entry point: core.py turns them into a refusal
(management ops), a failsafe vGPU (emulation) or a counter, and the service stays up."""

from __future__ import annotations

import enum

from ...protocol.errors import ErrorCode


class FailsafeReason(enum.IntEnum):
    """enum GVT_FAILSAFE_* (gvt/vgpu.c)."""

    UNSUPPORTED_GUEST = 0
    INSUFFICIENT_RESOURCE = 1
    GUEST_ERR = 2


class GvtError(Exception):
    """A management request that cannot be satisfied (no_space, bad_request, ...)."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code.value}: {reason}")


class EmulationError(Exception):
    """An access the emulation refuses (-EINVAL in i915/gvt: bad size, bad alignment, out of range).

    AcrnGT completes the ioreq anyway and gvtsim puts the vGPU in failsafe on an emulation error, unless
    ``failsafe`` is False: a refused submission whose error is not one that ``vgpu_is_vm_unhealthy``
    (gvt.h) names (-EBADRQC, -EFAULT) fails the request but keeps the vGPU healthy.
    """

    def __init__(self, reason: str, failsafe: bool = True) -> None:
        super().__init__(reason)
        self.failsafe = failsafe


class WorkloadError(Exception):
    """A workload that cannot be built from the guest's context (bad LRCA, ring outside guest memory)."""


class WorkloadRefused(WorkloadError):
    """A workload refused without marking the VM unhealthy (a -EPERM scan error): the submission fails,
    the vGPU stays out of failsafe (scheduler.c intel_vgpu_create_workload + vgpu_is_vm_unhealthy)."""
