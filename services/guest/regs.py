"""Register offsets and encodings the guest driver uses (i915 names; values from i915_pvinfo.h, gvt/scheduler.c,
i915_reg.h)."""

from __future__ import annotations

# PVINFO (i915_pvinfo.h), inside BAR0
PVINFO = 0x78000
VGT_MAGIC = 0x4776544776544776
PV_MAGIC = PVINFO + 0x000
PV_VERSION_MAJOR = PVINFO + 0x008
PV_VERSION_MINOR = PVINFO + 0x00A
PV_VGT_ID = PVINFO + 0x00C
PV_VGT_CAPS = PVINFO + 0x010
PV_MAPPABLE_BASE = PVINFO + 0x040
PV_MAPPABLE_SIZE = PVINFO + 0x044
PV_NONMAPPABLE_BASE = PVINFO + 0x048
PV_NONMAPPABLE_SIZE = PVINFO + 0x04C
PV_FENCE_NUM = PVINFO + 0x050
PV_DISPLAY_READY = PVINFO + 0x804
PV_G2V_NOTIFY = PVINFO + 0x818
# ACRN's PVMMIO fields (acrn-kernel i915_pvinfo.h) keep their offsets 0x860..0x86C; gvtsim's shared-page
# negotiation fields sit past them, in ACRN's rsv7 (docs/PV.md)
PV_ENABLE_PVMMIO = PVINFO + 0x860
PV_PV_MMIO = PVINFO + 0x864
PVMMIO_ELSP_SUBMIT = 0x1  # enum pvmmio_levels (ACRN include/drm/i915_pvinfo.h)
#: The PVMMIO shared page (struct gvt_shared_page): the first page after BAR0's 2 MB of registers;
#: u32 elsp_data[4] at 0x00, u32 reg_addr at 0x10
PVMMIO_SHARED_PAGE = 0x200000
PVMMIO_ELSP_DATA = 0x00
PVMMIO_REG_ADDR = 0x10
PV_CAPS = PVINFO + 0x880
PV_SHARED_PAGE_GPA = PVINFO + 0x884
PV_VERSIONS = PVINFO + 0x88C
PV_STATUS = PVINFO + 0x890
PV_ENABLED = PVINFO + 0x894
G2V_SHARED_PAGE_SETUP = 8
G2V_PV_SEND_TRIGGER = 9
G2V_PV_PPGTT_UPDATE = 10
VGT_CAPS_FULL_PPGTT = 1 << 2
VGT_CAPS_HWSP_EMULATION = 1 << 3
VGT_CAPS_HUGE_GTT = 1 << 4

# GT / display power bring-up (i915_reg.h, gen9)
FORCEWAKE_RENDER_GEN9, FORCEWAKE_ACK_RENDER_GEN9 = 0xA278, 0x0D84
FORCEWAKE_KERNEL = 1 << 0
HSW_PWR_WELL_CTL2 = 0x45404  # the driver's power well request register
SKL_PW1_REQ, SKL_PW1_STATE = 1 << 29, 1 << 28
SKL_MISC_IO_REQ, SKL_MISC_IO_STATE = 1 << 1, 1 << 0
DBUF_CTL, DBUF_POWER_REQUEST, DBUF_POWER_STATE = 0x45008, 1 << 31, 1 << 30
GEN6_PCODE_MAILBOX, GEN6_PCODE_DATA, GEN6_PCODE_DATA1 = 0x138124, 0x138128, 0x13812C
GEN6_PCODE_READY = 1 << 31
GEN9_PCODE_READ_MEM_LATENCY = 0x6

# GGTT inside BAR0 (gen8: 8-byte PTEs at +8 MB)
GGTT_OFFSET = 0x800000
GEN8_PTE_PRESENT = 1 << 0

# interrupts (gen8)
MASTER_IRQ = 0x44200
MASTER_IRQ_CONTROL = 1 << 31
MASTER_DE_PIPE_A = 1 << 16  # GEN8_DE_PIPE_IRQ(PIPE_A)
GT_ISR = lambda n: 0x44300 + 0x10 * n  # noqa: E731
GT_IMR = lambda n: 0x44304 + 0x10 * n  # noqa: E731
GT_IIR = lambda n: 0x44308 + 0x10 * n  # noqa: E731
GT_IER = lambda n: 0x4430C + 0x10 * n  # noqa: E731

# engines: (name, mmio base, GT group, IIR bit of MI_USER_INTERRUPT, IIR bit of context switch)
ENGINES = {
    "rcs": (0x2000, 0, 0, 8),
    "bcs": (0x22000, 0, 16, 24),
    "vcs": (0x12000, 1, 0, 8),
    "vecs": (0x1A000, 3, 0, 8),
}
RING_TAIL = 0x30
RING_HEAD = 0x34
RING_START = 0x38
RING_CTL = 0x3C
RING_CTX_CTRL = 0x244
ELSP = 0x230
EXECLIST_STATUS = 0x234
RING_MODE = 0x29C
RING_HWS_PGA = 0x80
HWS_CSB_BUF0 = 0x10 * 4  # I915_HWS_CSB_BUF0_INDEX: the CSB mirror in the HWS page
HWS_CSB_WRITE = 0x1F * 4  # I915_HWS_CSB_WRITE_INDEX (gen < 11)
CSB_BUF = 0x370
CSB_PTR = 0x3A0
CSB_ENTRIES = 6
GFX_RUN_LIST_ENABLE = 1 << 15


def masked_enable(bit: int) -> int:
    """A masked-register write that sets ``bit`` (mask in the high 16 bits)."""
    return bit << 16 | bit


# CSB entry bits (context_status_format)
CSB_IDLE_TO_ACTIVE = 1 << 0
CSB_PREEMPTED = 1 << 1
CSB_ELEMENT_SWITCH = 1 << 2
CSB_ACTIVE_TO_IDLE = 1 << 3
CSB_CTX_COMPLETE = 1 << 4

# context descriptor (execlist_ctx_descriptor_format)
DESC_VALID = 1 << 0
DESC_ADDRESSING_LEGACY32 = 1 << 3  # addressing_mode 1 in bits 3-4
DESC_ADDRESSING_LEGACY64 = 3 << 3
DESC_PRIVILEGE = 1 << 8

# ring context page (page lrca+1): byte offsets of the value dwords (struct execlist_ring_context)
CTX_CTRL_VAL = 0x0C
CTX_RING_HEAD_VAL = 0x14
CTX_RING_TAIL_VAL = 0x1C
CTX_RB_START_VAL = 0x24
CTX_RB_CTRL_VAL = 0x2C
CTX_TIMESTAMP_VAL = 0x8C
# the render context's workaround batches (i915 intel_lrc_reg.h CTX_BB_PER_CTX_PTR / CTX_RCS_INDIRECT_CTX /
# CTX_RCS_INDIRECT_CTX_OFFSET): value offsets and the registers (engine base + 0x1C0 / 0x1C4 / 0x1C8)
CTX_BB_PER_CTX_PTR_VAL = 0x64
CTX_RCS_INDIRECT_CTX_VAL = 0x6C
CTX_RCS_INDIRECT_CTX_OFFSET_VAL = 0x74
RING_BB_PER_CTX_PTR, RING_INDIRECT_CTX, RING_INDIRECT_CTX_OFFSET = 0x1C0, 0x1C4, 0x1C8
#: gen9's CTX_RCS_INDIRECT_CTX_OFFSET_DEFAULT (0x26), in bits 15:6 of the register
INDIRECT_CTX_OFFSET_GEN9 = 0x26 << 6
CTX_PDP_VAL = {3: (0x94, 0x9C), 2: (0xA4, 0xAC), 1: (0xB4, 0xBC), 0: (0xC4, 0xCC)}  # pdp n: (UDW, LDW)
RING_VALID = 1 << 0
