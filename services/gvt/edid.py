"""The virtual monitor's EDID over the GMBUS (I2C) controller and over the DP AUX channel
(Linux drivers/gpu/drm/i915/gvt/edid.c; the DPCD and native AUX transactions of handlers.c
``dp_aux_ch_ctl_mmio_write``).

The EDID block is display.c's ``virtual_dp_monitor_edid[GVT_EDID_1024_768]`` and the DPCD header is its
``dpcd_fix_data`` (DP 1.2, 2.7 GHz, 4 lanes), byte for byte.

GMBUS (PCH_GMBUS0..5 at 0xC5100): GMBUS0 selects the pin pair (6 = port D), GMBUS1 starts a cycle (slave
address 0x50 << 1 | read, total byte count in bits 24:16, bus cycle in 27:25, index in 15:8), each GMBUS3 read
returns the next four EDID bytes, GMBUS2 reports HW_RDY / ACTIVE / SATOER. One departure from GVT: its
``gmbus0_mmio_write`` answers only non-DP ports; gvtsim's monitor is a dual-mode (DP++) sink whose DDC pins
answer on GMBUS pin 6 as well, so the same EDID can be read both ways.

DP AUX (DDI D: DP_AUX_CH_CTL 0x64310, DATA1..5 +4..+0x14): the guest puts the request header in DATA1
(byte 0: command << 4 | address bits 19:16, bytes 1-2 address, byte 3 length - 1; big-endian in the dword as
i915's intel_dp_aux_pack), then writes CTL with SEND_BUSY and the message size. Native reads and writes go to
the DPCD; I2C-over-AUX at address 0x50 reads the EDID one byte per transaction (the i915 DDC-over-AUX way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from ...hardware.display import (
    DP_AUX_CH_CTL_BASE,
    DP_AUX_CH_CTL_SEND_BUSY,
    DP_AUX_CH_CTL_DONE,
    DP_AUX_CH_CTL_TIME_OUT_ERROR,
    DP_AUX_CH_CTL_MESSAGE_SIZE_SHIFT,
    DP_AUX_CH_CTL_MESSAGE_SIZE_MASK,
    DP_AUX_I2C_WRITE,
    DP_AUX_I2C_MOT,
    DP_AUX_NATIVE_WRITE,
    DP_AUX_NATIVE_READ,
    DP_AUX_NATIVE_REPLY_ACK,
    DP_AUX_NATIVE_REPLY_NACK,
)

if TYPE_CHECKING:
    from .vgpu import Vgpu

EDID_SIZE = 128
EDID_ADDR = 0x50  # the DDC slave address of the EDID EEPROM

#: display.c virtual_dp_monitor_edid[GVT_EDID_1024_768] (established timings 640x480, 800x600, 1024x768 @60).
VIRTUAL_DP_MONITOR_EDID_1024_768 = bytes([
    0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00,
    0x22, 0xf0, 0x54, 0x29, 0x00, 0x00, 0x00, 0x00, 0x04, 0x17,
    0x01, 0x04,
    0xa5, 0x34, 0x20, 0x78, 0x23,
    0xfc, 0x81, 0xa4, 0x55, 0x4d, 0x9d, 0x25, 0x12, 0x50, 0x54,
    0x21, 0x08, 0x00,
    0x00, 0xc0, 0x00, 0xc0, 0x00, 0x40, 0x00, 0x80, 0x00, 0x00,
    0x00, 0x40, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x80, 0xa0, 0x70, 0xb0,
    0x23, 0x40, 0x30, 0x20, 0x36, 0x00, 0x06, 0x44, 0x21, 0x00, 0x00, 0x1a,
    0x00, 0x00, 0x00, 0xfd, 0x00, 0x18, 0x3c, 0x18, 0x50, 0x11, 0x00, 0x0a,
    0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
    0x00, 0x00, 0x00, 0xfc, 0x00, 0x48,
    0x50, 0x20, 0x5a, 0x52, 0x32, 0x34, 0x34, 0x30, 0x77, 0x0a, 0x20, 0x20,
    0x00, 0x00, 0x00, 0xff, 0x00, 0x43, 0x4e, 0x34, 0x33, 0x30, 0x34, 0x30,
    0x44, 0x58, 0x51, 0x0a, 0x20, 0x20,
    0x00,
    0xef,
])
assert len(VIRTUAL_DP_MONITOR_EDID_1024_768) == EDID_SIZE

DPCD_SIZE = 0x600  # enough for the receiver capability, link configuration and sink status fields
DP_SINK_COUNT = 0x200
DP_TRAINING_PATTERN_SET = 0x102
DP_LANE0_1_STATUS = 0x202
DP_LANE2_3_STATUS = 0x203
DP_LANE_ALIGN_STATUS_UPDATED = 0x204
DP_SINK_STATUS = 0x205
#: display.c dpcd_fix_data: DPCD rev 1.2, max link rate 0x14 (5.4 GHz), 4 lanes with enhanced framing
DPCD_FIX_DATA = bytes([0x12, 0x14, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00])

# GMBUS registers (i915_reg.h PCH_GMBUS*) and bits
PCH_GMBUS0 = 0xC5100
PCH_GMBUS1 = 0xC5104
PCH_GMBUS2 = 0xC5108
PCH_GMBUS3 = 0xC510C
PCH_GMBUS4 = 0xC5110
PCH_GMBUS5 = 0xC5120
GMBUS_PIN_SEL_MASK = 0x7
GMBUS_PIN_DPD = 6  # get_port_from_gmbus0: pin 6 -> port D
GMBUS_SW_CLR_INT = 1 << 31
GMBUS_SW_RDY = 1 << 30
GMBUS_CYCLE_INDEX = 1 << 26
GMBUS_SLAVE_READ = 1 << 0
GMBUS_INUSE = 1 << 15
GMBUS_HW_WAIT_PHASE = 1 << 14
GMBUS_HW_RDY = 1 << 11
GMBUS_SATOER = 1 << 10
GMBUS_ACTIVE = 1 << 9
# bus cycles (GMBUS1 bits 27:25)
GMBUS_NOCYCLE, NIDX_NS_W, IDX_NS_W, GMBUS_STOP, NIDX_STOP, IDX_STOP = 0, 1, 3, 4, 5, 7



def checksum_ok(block: bytes) -> bool:
    """An EDID block is valid when its 128 bytes sum to 0 mod 256 (VESA E-EDID 1.4, byte 127)."""
    return len(block) == EDID_SIZE and sum(block) % 256 == 0


def aux_ctl(port: int) -> int:
    """DP_AUX_CH_CTL of a DDI (0 = A ... 3 = D)."""
    return DP_AUX_CH_CTL_BASE + 0x100 * port


@dataclass
class Monitor:
    """A virtual DP monitor on a port: its EDID and DPCD (struct intel_vgpu_port's edid / dpcd)."""

    edid: bytes = VIRTUAL_DP_MONITOR_EDID_1024_768
    dpcd: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if not self.dpcd:
            self.dpcd = bytearray(DPCD_SIZE)
            self.dpcd[:len(DPCD_FIX_DATA)] = DPCD_FIX_DATA
            self.dpcd[DP_SINK_COUNT] = 0x1


@dataclass
class I2cEdid:
    """struct intel_vgpu_i2c_edid: where an EDID read stands (intel_vgpu_init_i2c_edid resets it)."""

    slave_selected: bool = False
    edid_available: bool = False
    current_edid_read: int = 0
    total_byte_count: int = 0
    cycle_type: int = 0
    aux_mot: bool = False

    def init(self) -> None:
        self.__init__()  # type: ignore[misc]


class EdidChannel:
    """One vGPU's GMBUS controller and AUX channel in front of the monitor on port D (or none)."""

    def __init__(self, vgpu: "Vgpu", monitor: Monitor | None) -> None:
        self.vgpu = vgpu
        self.monitor = monitor
        self.state = I2cEdid()

    # --------------------------------------------------------------------------------- lifecycle
    def reset(self) -> None:
        """reset_gmbus_controller + intel_vgpu_init_i2c_edid."""
        self.state.init()
        self.vgpu.mmio.write32(PCH_GMBUS2, GMBUS_HW_RDY)

    def _get_byte(self) -> int:
        """edid_get_byte: the next EDID byte, 0 (and a counter) when read out of sequence."""
        st = self.state
        if not st.slave_selected or not st.edid_available or self.monitor is None:
            self.vgpu.count("edid_read_out_of_sequence")
            return 0
        if st.current_edid_read >= EDID_SIZE:
            self.vgpu.count("edid_read_past_end")
            return 0
        byte = self.monitor.edid[st.current_edid_read]
        st.current_edid_read += 1
        return byte

    # ------------------------------------------------------------------------------------- GMBUS
    def gmbus_read(self, offset: int, size: int) -> int:
        """intel_gvt_i2c_handle_gmbus_read."""
        mmio = self.vgpu.mmio
        if offset == PCH_GMBUS2:
            value = mmio.read32(offset)
            mmio.write32(offset, value | GMBUS_INUSE)  # gmbus2_mmio_read: reading takes the bus
            return value
        if offset == PCH_GMBUS3:
            return self._gmbus3_read()
        return mmio.read(offset, size)

    def _gmbus3_read(self) -> int:
        """gmbus3_mmio_read: up to four EDID bytes per read while a read cycle is on."""
        mmio, st = self.vgpu.mmio, self.state
        if not mmio.read32(PCH_GMBUS1) & GMBUS_SLAVE_READ:
            return mmio.read32(PCH_GMBUS3)
        left = st.total_byte_count - st.current_edid_read
        if left <= 0:
            return mmio.read32(PCH_GMBUS3)
        value = 0
        for i in range(min(4, left)):
            value |= self._get_byte() << (8 * i)
        mmio.write32(PCH_GMBUS3, value)
        if left <= 4:
            # the transfer is over: STOP cycles go idle, others wait; the i2c state is re-initialised
            st.init()
            g2 = mmio.read32(PCH_GMBUS2) & ~GMBUS_ACTIVE
            mmio.write32(PCH_GMBUS2, g2 | GMBUS_HW_RDY | GMBUS_HW_WAIT_PHASE)
        return value

    def gmbus_write(self, offset: int, data: int, size: int) -> None:
        """intel_gvt_i2c_handle_gmbus_write."""
        mmio = self.vgpu.mmio
        if offset == PCH_GMBUS0:
            mmio.write(offset, data, size)
            self.state.init()
            if data & GMBUS_PIN_SEL_MASK == 0:
                return
            g2 = (mmio.read32(PCH_GMBUS2) & ~GMBUS_ACTIVE) | GMBUS_HW_RDY | GMBUS_HW_WAIT_PHASE
            if data & GMBUS_PIN_SEL_MASK == GMBUS_PIN_DPD and self.monitor is not None:
                self.state.edid_available = True
                g2 &= ~GMBUS_SATOER
            else:
                g2 |= GMBUS_SATOER  # nobody answers on that pin pair: slave acknowledge timeout
            mmio.write32(PCH_GMBUS2, g2)
        elif offset == PCH_GMBUS1:
            self._gmbus1_write(data & 0xFFFF_FFFF)
        elif offset == PCH_GMBUS2:
            if data & GMBUS_INUSE:  # all other bits are read-only
                mmio.write32(offset, mmio.read32(offset) & ~GMBUS_INUSE)
        elif offset == PCH_GMBUS3:
            self.vgpu.count("gmbus3_write_ignored")  # GVT only reads EDIDs (gmbus3_mmio_write WARNs)
        else:
            mmio.write(offset, data, size)

    def _gmbus1_write(self, value: int) -> None:
        mmio, st = self.vgpu.mmio, self.state
        old = mmio.read32(PCH_GMBUS1)
        if old & GMBUS_SW_CLR_INT:
            if not value & GMBUS_SW_CLR_INT:
                mmio.write32(PCH_GMBUS1, old & ~GMBUS_SW_CLR_INT)
                self.reset()
            return
        if value & GMBUS_SW_CLR_INT:
            mmio.write32(PCH_GMBUS2, (mmio.read32(PCH_GMBUS2) & ~(1 << 12)) | GMBUS_HW_RDY)
        value &= ~GMBUS_SW_RDY  # the virtual hardware is always ready
        st.total_byte_count = (value >> 16) & 0x1FF
        slave = (value & 0xFF) >> 1
        if slave == EDID_ADDR:
            st.slave_selected = True
        elif slave:
            self.vgpu.count("gmbus_unsupported_slave")
        if value & GMBUS_CYCLE_INDEX:
            st.current_edid_read = (value >> 8) & 0xFF
        cycle = (value >> 25) & 0x7
        st.cycle_type = cycle
        g2 = mmio.read32(PCH_GMBUS2)
        if cycle == GMBUS_STOP:
            if (old >> 25) & 0x7 != GMBUS_NOCYCLE:
                avail = st.edid_available
                st.init()
                st.edid_available = avail
                g2 &= ~GMBUS_ACTIVE
        elif cycle in (NIDX_NS_W, IDX_NS_W, NIDX_STOP, IDX_STOP):
            g2 |= GMBUS_ACTIVE  # START (-> INDEX) -> DATA
        elif cycle != GMBUS_NOCYCLE:
            self.vgpu.count("gmbus_reserved_cycle")
        mmio.write32(PCH_GMBUS2, g2 | GMBUS_HW_RDY)
        mmio.write32(PCH_GMBUS1, value)

    # ---------------------------------------------------------------------------------------- AUX
    def aux_write(self, port: int, offset: int, data: int, size: int) -> bool:
        """dp_aux_ch_ctl_mmio_write for DDI ``port``. Returns whether an AUX transaction completed (the
        caller raises AUX_CHANNEL_x if the guest asked for an interrupt)."""
        mmio = self.vgpu.mmio
        mmio.write(offset, data, size)
        if offset != aux_ctl(port):
            return False  # a data register
        value = mmio.read32(offset)
        if not value & DP_AUX_CH_CTL_SEND_BUSY:
            mmio.write32(offset, 0)  # the guest clears the sticky bits
            return False
        if self.monitor is None:  # nothing on this port: the sink never answers
            mmio.write32(offset, DP_AUX_CH_CTL_DONE | DP_AUX_CH_CTL_TIME_OUT_ERROR)
            return True
        msg_len = (value & DP_AUX_CH_CTL_MESSAGE_SIZE_MASK) >> DP_AUX_CH_CTL_MESSAGE_SIZE_SHIFT
        data1 = mmio.read32(offset + 4)
        op = data1 >> 28
        addr = (data1 >> 8) & 0xFFFF | ((data1 >> 24) & 0xF) << 16
        length = (data1 & 0xFF) + 1
        if op == DP_AUX_NATIVE_READ:
            self._dpcd_read(offset, addr, length)
        elif op == DP_AUX_NATIVE_WRITE:
            self._dpcd_write(offset, addr, length, msg_len)
        else:
            self._i2c_over_aux(offset, op, addr & 0xFFFF, msg_len)
        return True

    def _reply(self, offset: int, payload: bytes) -> None:
        """The reply in DATA1.. (big-endian bytes per dword) and CTL = DONE with the reply size."""
        mmio = self.vgpu.mmio
        for i in range(0, 20, 4):
            chunk = payload[i:i + 4]
            if chunk:
                mmio.write32(offset + 4 + i, int.from_bytes(chunk.ljust(4, b"\0"), "big"))
        size = len(payload)
        mmio.write32(offset, DP_AUX_CH_CTL_DONE | (size << DP_AUX_CH_CTL_MESSAGE_SIZE_SHIFT
                                                   & DP_AUX_CH_CTL_MESSAGE_SIZE_MASK))

    def _dpcd_read(self, offset: int, addr: int, length: int) -> None:
        assert self.monitor is not None
        if length > 16 or addr + length > DPCD_SIZE:
            self.vgpu.count("dpcd_read_out_of_range")
            self._reply(offset, bytes([DP_AUX_NATIVE_REPLY_NACK << 4]))
            return
        self._reply(offset, bytes([DP_AUX_NATIVE_REPLY_ACK]) + bytes(self.monitor.dpcd[addr:addr + length]))

    def _dpcd_write(self, offset: int, addr: int, length: int, msg_len: int) -> None:
        """Native write: the bytes after the 4-byte header go into the DPCD; a training-pattern write
        completes link training at once (dp_aux_ch_ctl_link_training)."""
        assert self.monitor is not None
        mmio = self.vgpu.mmio
        raw = b"".join(mmio.read32(offset + 4 + i).to_bytes(4, "big") for i in range(0, 20, 4))
        payload = raw[4:4 + min(length, msg_len - 4, 16)]
        if addr + len(payload) > DPCD_SIZE:
            self.vgpu.count("dpcd_write_out_of_range")
            self._reply(offset, bytes([DP_AUX_NATIVE_REPLY_NACK << 4]))
            return
        dpcd = self.monitor.dpcd
        for i, b in enumerate(payload):
            dpcd[addr + i] = b
            if addr + i == DP_TRAINING_PATTERN_SET:
                if b & 0x3:  # pattern 1/2: clock recovery and channel equalisation done on all 4 lanes
                    dpcd[DP_LANE0_1_STATUS] = dpcd[DP_LANE2_3_STATUS] = 0x77
                    dpcd[DP_LANE_ALIGN_STATUS_UPDATED] |= 0x1
                else:  # training off: the sink is in sync
                    dpcd[DP_SINK_STATUS] = 0x3
        self._reply(offset, bytes([DP_AUX_NATIVE_REPLY_ACK]))

    def _i2c_over_aux(self, offset: int, op: int, addr: int, msg_len: int) -> None:
        """intel_gvt_i2c_handle_aux_ch_write: address-only (3-byte) messages start / stop; 4-byte reads
        return one EDID byte; writes (the index) are acknowledged and ignored."""
        st = self.state
        if msg_len == 3:
            if not op & DP_AUX_I2C_MOT:
                st.init()  # stop
            elif addr == 0:
                st.init()
            elif addr == EDID_ADDR:
                st.slave_selected = True
                st.edid_available = True
                st.aux_mot = True
            self._reply(offset, bytes([DP_AUX_NATIVE_REPLY_ACK]))
            return
        if op & 0x1 == DP_AUX_I2C_WRITE:
            self._reply(offset, bytes([DP_AUX_NATIVE_REPLY_ACK]))
            return
        byte = self._get_byte() if st.edid_available and st.slave_selected else 0
        self._reply(offset, bytes([DP_AUX_NATIVE_REPLY_ACK, byte]))
