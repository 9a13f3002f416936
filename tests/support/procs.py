"""Real service processes for service tests (the implementation lives in gvtsim.orchestration.procs)."""

from gvtsim.orchestration.procs import Event, ServiceProc

__all__ = ["Event", "ServiceProc"]
