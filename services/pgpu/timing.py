"""The cost model: how much simulated GPU time each command takes.

Python executes a context instantly; the simulated cost decides when its completion is delivered, so engines
are busy for realistic spans and the order in which gvt schedules vGPUs matters. Figures are round numbers
of the right order for a gen9 GT2 (command streamer ~1 GHz, a few cycles per MI command; blitter bandwidth of
the order of 10 GB/s), all divided by ``speed`` (``--gpu-speed``: 2.0 = a GPU twice as fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: base cost of each command, in simulated nanoseconds at speed 1.0 (names as in commands.COMMANDS)
BASE_COST_NS: dict[str, float] = {
    "MI_NOOP": 5.0,
    "MI_ARB_CHECK": 5.0,
    "MI_ARB_ON_OFF": 5.0,
    "MI_USER_INTERRUPT": 20.0,
    "MI_BATCH_BUFFER_END": 20.0,
    "MI_BATCH_BUFFER_START": 40.0,  # fetch redirection
    "MI_STORE_DATA_IMM": 20.0,
    "MI_LOAD_REGISTER_IMM": 20.0,  # plus per register, below
    "MI_STORE_REGISTER_MEM": 20.0,  # plus one register
    "MI_FLUSH_DW": 50.0,
    "PIPE_CONTROL": 100.0,  # a pipeline flush
    "XY_COLOR_BLT": 200.0,  # blit setup; bytes are charged on top
    "XY_SRC_COPY_BLT": 200.0,
}
#: extra cost per register written by MI_LOAD_REGISTER_IMM
LRI_PER_REG_NS = 10.0
#: context switch: restore the context image, save it back on completion
CTX_SWITCH_NS = 1000.0
#: blitter bandwidth in bytes per nanosecond (10.0 = 10 GB/s)
BLIT_BYTES_PER_NS = 10.0


@dataclass(frozen=True)
class TimingModel:
    """Simulated costs, scaled by ``speed``."""

    speed: float = 1.0
    base_ns: dict[str, float] = field(default_factory=lambda: dict(BASE_COST_NS))
    ctx_switch_ns: float = CTX_SWITCH_NS
    blit_bytes_per_ns: float = BLIT_BYTES_PER_NS
    lri_per_reg_ns: float = LRI_PER_REG_NS

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError("GPU speed must be positive")

    def command(self, name: str) -> float:
        """Base cost of one command, ns."""
        return self.base_ns.get(name, 20.0) / self.speed

    def blit(self, nbytes: int) -> float:
        """Cost of moving ``nbytes`` through the blitter (reads and writes both count), ns."""
        return nbytes / self.blit_bytes_per_ns / self.speed

    def lri(self, nregs: int) -> float:
        """Extra cost of ``nregs`` register loads, ns."""
        return nregs * self.lri_per_reg_ns / self.speed

    def ctx_switch(self) -> float:
        """Context restore + save, ns."""
        return self.ctx_switch_ns / self.speed
