"""Virtual interrupts (i915/gvt interrupt.c, gen8 layout; gvt/interrupt.c and 9).

Each interrupt group has ISR/IMR/IIR/IER at base +0/+4/+8/+0xC. An event sets its IIR bit unless the
IMR bit masks it; IIR & IER of a group drives its bit(s) in the master register 0x44200; when the
guest has set the master enable (bit 31) and any summary bit is set, an MSI goes out through vhm, if
MSI is enabled in the vGPU's config space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...hardware.regs import MASTER_IRQ as GEN8_MASTER_IRQ
from ...hardware.regs import MASTER_IRQ_CONTROL as GEN8_MASTER_IRQ_CONTROL  # the only guest-writable bit
from .effects import InjectMsi

if TYPE_CHECKING:
    from .vgpu import Vgpu


ISR, IMR, IIR, IER = 0x0, 0x4, 0x8, 0xC
LOW16, HIGH16, ALL32 = 0x0000_FFFF, 0xFFFF_0000, 0xFFFF_FFFF


@dataclass(frozen=True)
class IrqGroup:
    """One downstream group: name, register base, and which master bit each part of IIR & IER drives."""

    name: str
    base: int
    upstream: tuple[tuple[int, int], ...]  # (mask of IIR & IER, master bit)


#: gvt/interrupt.c: GT groups 0x44300 + 0x10 n; DE pipes, port, misc, PCU; PCH (SDE) under master bit 23.
GROUPS: tuple[IrqGroup, ...] = (
    IrqGroup("GT0", 0x44300, ((LOW16, 0), (HIGH16, 1))),
    IrqGroup("GT1", 0x44310, ((LOW16, 2), (HIGH16, 3))),
    IrqGroup("GT2", 0x44320, ((ALL32, 4),)),
    IrqGroup("GT3", 0x44330, ((ALL32, 6),)),
    IrqGroup("DE_PIPE_A", 0x44400, ((ALL32, 16),)),
    IrqGroup("DE_PIPE_B", 0x44410, ((ALL32, 17),)),
    IrqGroup("DE_PIPE_C", 0x44420, ((ALL32, 18),)),
    IrqGroup("DE_PORT", 0x44440, ((ALL32, 20),)),
    IrqGroup("DE_MISC", 0x44460, ((ALL32, 22),)),
    IrqGroup("PCH", 0xC4000, ((ALL32, 23),)),
    IrqGroup("PCU", 0x444E0, ((ALL32, 30),)),
)
GROUP_BY_NAME: dict[str, IrqGroup] = {g.name: g for g in GROUPS}
GROUP_BY_BASE: dict[int, IrqGroup] = {g.base: g for g in GROUPS}

#: Named events -> (group, IIR bit) (gvt/interrupt.c).
EVENTS: dict[str, tuple[str, int]] = {
    "RCS_MI_USER_INTERRUPT": ("GT0", 0),
    "RCS_PIPE_CONTROL": ("GT0", 4),
    "RCS_AS_CONTEXT_SWITCH": ("GT0", 8),
    "BCS_MI_USER_INTERRUPT": ("GT0", 16),
    "BCS_MI_FLUSH_DW": ("GT0", 20),
    "BCS_AS_CONTEXT_SWITCH": ("GT0", 24),
    "VCS_MI_USER_INTERRUPT": ("GT1", 0),
    "VCS_MI_FLUSH_DW": ("GT1", 4),
    "VCS_AS_CONTEXT_SWITCH": ("GT1", 8),
    "VCS2_MI_USER_INTERRUPT": ("GT1", 16),
    "VCS2_MI_FLUSH_DW": ("GT1", 20),
    "VCS2_AS_CONTEXT_SWITCH": ("GT1", 24),
    "VECS_MI_USER_INTERRUPT": ("GT3", 0),
    "VECS_MI_FLUSH_DW": ("GT3", 4),
    "VECS_AS_CONTEXT_SWITCH": ("GT3", 8),
    "PIPE_A_VBLANK": ("DE_PIPE_A", 0),
    "PRIMARY_A_FLIP_DONE": ("DE_PIPE_A", 3),
    "SPRITE_A_FLIP_DONE": ("DE_PIPE_A", 4),
    "PIPE_B_VBLANK": ("DE_PIPE_B", 0),
    "PRIMARY_B_FLIP_DONE": ("DE_PIPE_B", 3),
    "SPRITE_B_FLIP_DONE": ("DE_PIPE_B", 4),
    "PIPE_C_VBLANK": ("DE_PIPE_C", 0),
    "PRIMARY_C_FLIP_DONE": ("DE_PIPE_C", 3),
    "SPRITE_C_FLIP_DONE": ("DE_PIPE_C", 4),
    "AUX_CHANNEL_A": ("DE_PORT", 0),
    "DP_A_HOTPLUG": ("DE_PORT", 3),
    "AUX_CHANNEL_D": ("DE_PORT", 27),  # gen9 GEN9_AUX_CHANNEL_D (display.py)
    "DP_D_HOTPLUG": ("PCH", 23),  # SDE_PORTD_HOTPLUG_CPT (display.py intel_vgpu_emulate_hotplug)
}


def update_upstream(vgpu: "Vgpu", group: IrqGroup) -> None:
    """update_upstream_irq: set or clear the group's master bits from IIR & IER."""
    val = vgpu.mmio.read32(group.base + IIR) & vgpu.mmio.read32(group.base + IER)
    master = vgpu.mmio.read32(GEN8_MASTER_IRQ)
    for mask, bit in group.upstream:
        if val & mask:
            master |= 1 << bit
        else:
            master &= ~(1 << bit)
    vgpu.mmio.write32(GEN8_MASTER_IRQ, master)


def check_pending(vgpu: "Vgpu") -> None:
    """gen8_check_pending_irq: with master enabled, refresh the summary and raise an MSI if any is set."""
    if not vgpu.mmio.read32(GEN8_MASTER_IRQ) & GEN8_MASTER_IRQ_CONTROL:
        return
    for g in GROUPS:
        if vgpu.mmio.read32(g.base + IIR) & vgpu.mmio.read32(g.base + IER):
            update_upstream(vgpu, g)
    if vgpu.mmio.read32(GEN8_MASTER_IRQ) & ~GEN8_MASTER_IRQ_CONTROL:
        inject_msi(vgpu)


def inject_msi(vgpu: "Vgpu") -> bool:
    """inject_virtual_interrupt: only with MSI enabled and the single-message format (gvt/hypercall.h,
    ACRN gvt/acrngt.c)."""
    control, addr, data = vgpu.cfg.msi()
    if not control & 0x1:
        vgpu.count("irq_msi_suppressed_disabled")
        return False
    if control & 0xFFFE:
        vgpu.count("irq_msi_bad_format")
        vgpu.log.warning("msi_format_unsupported", vgpu=vgpu.id, control=hex(control))
        return False
    vgpu.count("irq_msi_injected")
    vgpu.msis_injected += 1
    vgpu.emit(InjectMsi(vgpu.vm, addr, data))
    return True


def trigger_event(vgpu: "Vgpu", event: str) -> bool:
    """intel_vgpu_trigger_virtual_event: propagate_event (IIR bit unless IMR masks it), then check
    pending. Returns whether the IIR bit was set. Raises KeyError for an unknown event name."""
    group_name, bit = EVENTS[event]
    group = GROUP_BY_NAME[group_name]
    set_bit = not vgpu.mmio.read32(group.base + IMR) & (1 << bit)
    if set_bit:
        vgpu.mmio.write32(group.base + IIR, vgpu.mmio.read32(group.base + IIR) | (1 << bit))
        update_upstream(vgpu, group)
    else:
        vgpu.count("irq_event_masked")
    check_pending(vgpu)
    return set_bit


# ------------------------------------------------------------------------------ register handlers
def master_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """Only bit 31 of the master register is guest-writable; then check pending (may raise an MSI)."""
    cur = vgpu.mmio.read32(offset) & ~GEN8_MASTER_IRQ_CONTROL
    vgpu.mmio.write32(offset, cur | (data & GEN8_MASTER_IRQ_CONTROL))
    check_pending(vgpu)


def imr_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """IMR: store, then check pending."""
    vgpu.mmio.write(offset, data, size)
    check_pending(vgpu)


def ier_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """IER: store, refresh the group's summary, then check pending."""
    vgpu.mmio.write(offset, data, size)
    update_upstream(vgpu, GROUP_BY_BASE[offset - IER])
    check_pending(vgpu)


def iir_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """IIR is write-1-to-clear (intel_vgpu_reg_iir_handler), then the summary is refreshed."""
    vgpu.mmio.write32(offset, vgpu.mmio.read32(offset) & ~(data & 0xFFFF_FFFF))
    update_upstream(vgpu, GROUP_BY_BASE[offset - IIR])
