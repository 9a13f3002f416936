"""Register offsets and encodings (the role of Linux's i915_reg.h, i915_pvinfo.h, gt/intel_lrc_reg.h and
gvt/execlist.h): PVINFO, power bring-up, BAR0 layout, interrupts, per-engine ring registers, the CSB, the
execlist context descriptor and the ring-context image. i915 names; the engines themselves are engines.py."""

from __future__ import annotations

# PVINFO (i915_pvinfo.h struct vgt_if), inside BAR0: host -> guest info in 0x000-0x7FF, guest -> host in
# 0x800-0xFFF; offsets are absolute in BAR0 (vgtif_reg(x) = VGT_PVINFO_PAGE + offsetof(struct vgt_if, x))
PVINFO = 0x78000
PVINFO_SIZE = 0x1000
VGT_MAGIC = 0x4776544776544776  # "vGTvGTvG" little-endian
VGT_VERSION_MAJOR = 1
VGT_VERSION_MINOR = 0
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
PV_RSV5 = PVINFO + 0x808  # rsv5[4]: 0x808..0x817
PV_G2V_NOTIFY = PVINFO + 0x818
PV_CURSOR_X_HOT = PVINFO + 0x830
PV_CURSOR_Y_HOT = PVINFO + 0x834
PV_PDP0_LO = PVINFO + 0x838  # pdp[i].lo = 0x838 + 8i, .hi = +4
PV_EXECLIST_CTX_DESC_LO = PVINFO + 0x858
PV_EXECLIST_CTX_DESC_HI = PVINFO + 0x85C
# ACRN's PVMMIO fields (acrn-kernel i915_pvinfo.h) keep their offsets 0x860..0x86C; gvtsim's shared-page
# negotiation fields sit past them, in ACRN's rsv7 (docs/PV.md)
PV_ENABLE_PVMMIO = PVINFO + 0x860
PV_PV_MMIO = PVINFO + 0x864
PV_SCALER_OWNED = PVINFO + 0x868
PV_CHECK_PENDING_IRQ = PVINFO + 0x86C
PVMMIO_ELSP_SUBMIT = 0x1  # enum pvmmio_levels (ACRN include/drm/i915_pvinfo.h)
#: The PVMMIO shared page (struct gvt_shared_page): the first page after BAR0's 2 MB of registers;
#: u32 elsp_data[4] at 0x00, u32 reg_addr at 0x10
PVMMIO_SHARED_PAGE = 0x200000
PVMMIO_ELSP_DATA = 0x00
PVMMIO_REG_ADDR = 0x10
PVMMIO_PV_PLANE = 0x14
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

# BAR0 layout (gvt/gtt.c, gvt/aperture_gm.c: mmio_size 2 MB, gtt_start_offset 8 MB; gen8: 8-byte PTEs)
MMIO_SIZE = 2 << 20
GGTT_OFFSET = 0x800000
#: GEN8_MMIO_RESET_OFFSET: a GT reset restores only [0, 0x44200): engines, not interrupts or display
GEN8_MMIO_RESET_OFFSET = 0x44200
FENCE_REG_GEN6_LO = 0x100000  # fence i: LO 0x100000 + 8i, HI +4
NUM_FENCES = 32
GFX_FLSH_CNTL_GEN6 = 0x101008  # a write flushes the GGTT TLB
GFX_FLSH_CNTL_EN = 1 << 0
FORCEWAKE_MT, FORCEWAKE_ACK_HSW = 0xA188, 0x130044
FORCEWAKE_MEDIA_GEN9, FORCEWAKE_ACK_MEDIA_GEN9 = 0xA270, 0x0D88
#: forcewake request register -> its ack register (gen9: render, MT, media)
FORCEWAKE_ACKS: dict[int, int] = {FORCEWAKE_RENDER_GEN9: FORCEWAKE_ACK_RENDER_GEN9, FORCEWAKE_MT: FORCEWAKE_ACK_HSW,
                                  FORCEWAKE_MEDIA_GEN9: FORCEWAKE_ACK_MEDIA_GEN9}
DERRMR = 0x44050
GEN6_GDRST = 0x941C  # engine reset by domain bit (engines.py: each engine's gdrst_bit)
GEN6_GRDOM_GUC = 1 << 5
GUC_STATUS = 0xC000
GS_MIA_IN_RESET = 1 << 0

# interrupts (gen8)
MASTER_IRQ = 0x44200
MASTER_IRQ_CONTROL = 1 << 31
MASTER_DE_PIPE_A = 1 << 16  # GEN8_DE_PIPE_IRQ(PIPE_A)
GT_ISR = lambda n: 0x44300 + 0x10 * n  # noqa: E731
GT_IMR = lambda n: 0x44304 + 0x10 * n  # noqa: E731
GT_IIR = lambda n: 0x44308 + 0x10 * n  # noqa: E731
GT_IER = lambda n: 0x4430C + 0x10 * n  # noqa: E731

# per-engine ring registers, offsets from the engine's MMIO base (i915_reg.h RING_TAIL(base) ..., gvt/handlers.c)
RING_TAIL = 0x30
RING_HEAD = 0x34
RING_START = 0x38
RING_CTL = 0x3C
RING_HWS_PGA = 0x80
RING_NOPID = 0x94
RING_IMR = 0xA8
RING_RESET_CTL = 0xD0
RING_BB_PER_CTX_PTR, RING_INDIRECT_CTX, RING_INDIRECT_CTX_OFFSET = 0x1C0, 0x1C4, 0x1C8
ELSP = 0x230  # RING_ELSP: 4 dword writes (element 1 high, 1 low, 0 high, 0 low) submit two contexts
EXECLIST_STATUS = 0x234
RING_CTX_CTRL = 0x244  # RING_CONTEXT_CONTROL
RING_PDP_BASE = 0x270  # pdp n: LDW +0x270 + 8n, UDW +0x274 + 8n
RING_MODE = 0x29C  # RING_MODE_GEN7 (GFX_MODE), a masked register
CSB_BUF = 0x370  # RING_CONTEXT_STATUS_BUF: CSB_ENTRIES entries of 8 bytes
CSB_PTR = 0x3A0  # RING_CONTEXT_STATUS_PTR: read pointer bits 15:8, write pointer bits 2:0
CSB_ENTRIES = 6
CSB_WP_RESET = 7  # the write pointer after reset: "empty"
# the CSB mirror in the engine's HWS page (gt/intel_engine.h, gen < 11): entries from dword 0x10, the write
# pointer in dword 0x1f (intel_hws_csb_write_index)
I915_HWS_CSB_BUF0_INDEX = 0x10
I915_HWS_CSB_WRITE_INDEX = 0x1F
HWS_CSB_BUF0 = I915_HWS_CSB_BUF0_INDEX * 4  # byte offsets in the page
HWS_CSB_WRITE = I915_HWS_CSB_WRITE_INDEX * 4

# GFX_MODE (RING_MODE) bits
GFX_PPGTT_ENABLE = 1 << 9
GFX_RUN_LIST_ENABLE = 1 << 15
# RING_RESET_CTL bits (masked)
RESET_CTL_REQUEST_RESET = 1 << 0
RESET_CTL_READY_TO_RESET = 1 << 1


def masked_enable(bit: int) -> int:
    """A masked-register write that sets ``bit`` (mask in the high 16 bits)."""
    return bit << 16 | bit


# CSB entry bits (context_status_format ldw)
CSB_IDLE_TO_ACTIVE = 1 << 0
CSB_PREEMPTED = 1 << 1
CSB_ELEMENT_SWITCH = 1 << 2
CSB_ACTIVE_TO_IDLE = 1 << 3
CSB_CTX_COMPLETE = 1 << 4
CSB_LITE_RESTORE = 1 << 15

# context descriptor (execlist_ctx_descriptor_format): ldw bit 0 valid, 1 force_pd_restore, 2 force_restore,
# bits 4:3 addressing mode, bit 8 privilege access, bits 31:12 the LRCA (GGTT address of the context); udw the
# context id
DESC_VALID = 1 << 0
DESC_FORCE_PD_RESTORE = 1 << 1
DESC_FORCE_RESTORE = 1 << 2
DESC_MODE_SHIFT = 3
DESC_MODE_MASK = 0x3 << DESC_MODE_SHIFT
DESC_PRIVILEGE = 1 << 8
DESC_LRCA_MASK = 0xFFFF_F000
MODE_LEGACY_32 = 1  # i915 INTEL_LEGACY_32B_CONTEXT: 3-level PPGTT, 4 PDPs
MODE_LEGACY_64 = 3  # i915 INTEL_LEGACY_64B_CONTEXT: 4-level PPGTT, PML4 in pdp0
DESC_ADDRESSING_LEGACY32 = MODE_LEGACY_32 << DESC_MODE_SHIFT
DESC_ADDRESSING_LEGACY64 = MODE_LEGACY_64 << DESC_MODE_SHIFT

# the ring context: page lrca + 1 of a context, an LRI-format register state (gvt/execlist.h struct
# execlist_ring_context: u32 nop1, u32 lri_cmd_1, then {mmio, value} pairs). name -> (byte offset of the mmio
# dword, byte offset of the value dword, register offset from the engine base; i915 gt/intel_lrc_reg.h)
RING_CTX: dict[str, tuple[int, int, int]] = {
    "ctx_ctrl": (0x08, 0x0C, RING_CTX_CTRL),
    "ring_header": (0x10, 0x14, RING_HEAD),
    "ring_tail": (0x18, 0x1C, RING_TAIL),
    "rb_start": (0x20, 0x24, RING_START),
    "rb_ctrl": (0x28, 0x2C, RING_CTL),
    "bb_cur_head_UDW": (0x30, 0x34, 0x168),
    "bb_cur_head_LDW": (0x38, 0x3C, 0x140),
    "bb_state": (0x40, 0x44, 0x110),
    "second_bb_addr_UDW": (0x48, 0x4C, 0x11C),
    "second_bb_addr_LDW": (0x50, 0x54, 0x114),
    "second_bb_state": (0x58, 0x5C, 0x118),
    "bb_per_ctx_ptr": (0x60, 0x64, RING_BB_PER_CTX_PTR),
    "rcs_indirect_ctx": (0x68, 0x6C, RING_INDIRECT_CTX),
    "rcs_indirect_ctx_offset": (0x70, 0x74, RING_INDIRECT_CTX_OFFSET),
    "ctx_timestamp": (0x88, 0x8C, 0x3A8),
    "pdp3_UDW": (0x90, 0x94, 0x28C),
    "pdp3_LDW": (0x98, 0x9C, 0x288),
    "pdp2_UDW": (0xA0, 0xA4, 0x284),
    "pdp2_LDW": (0xA8, 0xAC, 0x280),
    "pdp1_UDW": (0xB0, 0xB4, 0x27C),
    "pdp1_LDW": (0xB8, 0xBC, 0x278),
    "pdp0_UDW": (0xC0, 0xC4, 0x274),
    "pdp0_LDW": (0xC8, 0xCC, 0x270),
}
LRI_CMD_1 = 0x04  # byte offsets of the two MI_LOAD_REGISTER_IMM headers in the ring context
LRI_CMD_2 = 0x84
RCS_ONLY = ("bb_per_ctx_ptr", "rcs_indirect_ctx", "rcs_indirect_ctx_offset")  # the render context's extra pairs
#: sizeof(struct execlist_ring_context): through pdp0_LDW; the engine's own state follows in the page
EXECLIST_RING_CONTEXT_SIZE = 0xD0
# the value dwords the drivers and gvt read and write, by i915 name (RING_CTX_OFF(x.val))
CTX_CTRL_VAL = RING_CTX["ctx_ctrl"][1]
CTX_RING_HEAD_VAL = RING_CTX["ring_header"][1]
CTX_RING_TAIL_VAL = RING_CTX["ring_tail"][1]
CTX_RB_START_VAL = RING_CTX["rb_start"][1]
CTX_RB_CTRL_VAL = RING_CTX["rb_ctrl"][1]
CTX_TIMESTAMP_VAL = RING_CTX["ctx_timestamp"][1]
CTX_BB_PER_CTX_PTR_VAL = RING_CTX["bb_per_ctx_ptr"][1]
CTX_RCS_INDIRECT_CTX_VAL = RING_CTX["rcs_indirect_ctx"][1]
CTX_RCS_INDIRECT_CTX_OFFSET_VAL = RING_CTX["rcs_indirect_ctx_offset"][1]
#: pdp n: (UDW value offset, LDW value offset)
CTX_PDP_VAL: dict[int, tuple[int, int]] = {n: (RING_CTX[f"pdp{n}_UDW"][1], RING_CTX[f"pdp{n}_LDW"][1])
                                           for n in (3, 2, 1, 0)}
#: the eight PDP value dwords in context order (pdp3 UDW, pdp3 LDW, ..., pdp0 LDW)
CTX_PDP_VALUES: tuple[int, ...] = tuple(off for n in (3, 2, 1, 0) for off in CTX_PDP_VAL[n])
CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT = 1 << 0
#: gen9's CTX_RCS_INDIRECT_CTX_OFFSET_DEFAULT (0x26), in bits 15:6 of the register
INDIRECT_CTX_OFFSET_GEN9 = 0x26 << 6
# workaround-batch pointers in the render context (gvt/scheduler.c intel_vgpu_create_workload)
INDIRECT_CTX_ADDR_MASK = 0xFFFF_FFC0
INDIRECT_CTX_SIZE_MASK = 0x3F  # in cachelines
CACHELINE_BYTES = 64
PER_CTX_ADDR_MASK = 0xFFFF_F000
PER_CTX_VALID = 1 << 0

# RING_CTL / ring-buffer fields: size = (ctl & bits 20:12) + 4096; head bits 20:2, tail bits 20:3
RING_VALID = 1 << 0  # RING_CTL bit 0: the ring buffer is enabled
RB_SIZE_MASK = 0x001F_F000
RB_HEAD_MASK = 0x001F_FFFC
RB_TAIL_MASK = 0x001F_FFF8
#: gen9 command-streamer timestamp: 12 MHz (83.333 ns per tick)
TIMESTAMP_NS_PER_TICK = 1000.0 / 12.0
