"""Numbers fixed by the real systems (ACRN ioreq ABI) and by the gvtsim wire contract."""

from __future__ import annotations

import enum

#: Bumped on any incompatible change of the message catalogue. Carried in HELLO / HELLO_ACK.
WIRE_VERSION = 1

#: Largest ZeroMQ message any gvtsim socket accepts (ZMQ_MAXMSGSIZE). Bigger frames are dropped by libzmq
#: before they reach Python, and the connection is closed, so a hostile peer cannot make us allocate.
MAX_MESSAGE = 1 << 20

#: Largest byte payload inside one message (read_gpa / write_gpa data, memory blobs).
MAX_BLOB = 256 * 1024

#: ACRN: one 4 KB request page per VM = 16 slots of 256 bytes, indexed by vCPU id (VHM_REQUEST_MAX).
MAX_VCPUS = 16

#: ACRN vmid is a u16.
MAX_VM_ID = 0xFFFF

#: Largest batch of ioreqs in one IOREQ_DISPATCH / IOREQ_COMPLETE (vhm <-> client pipelining).
MAX_BATCH = 1024

#: Largest IOREQ_BATCH a guest may send (four VMs of MAX_VCPUS vCPUs trapping at once). It bounds what one
#: message can make vhm do and answer: each entry may draw its own ERROR.
MAX_IOREQ_BATCH = 64


class IoreqType(enum.IntEnum):
    """ACRN request types (acrn_common.h: REQ_PORTIO 0, REQ_MMIO 1, REQ_PCICFG 2, REQ_WP 3)."""

    PIO = 0
    MMIO = 1
    PCI = 2
    WP = 3


class IoreqDir(enum.IntEnum):
    """ACRN directions (REQUEST_READ 0, REQUEST_WRITE 1)."""

    READ = 0
    WRITE = 1


class IoreqState(enum.IntEnum):
    """ACRN slot states since HV commit 17771c0ac (2018-07): PENDING 0, COMPLETE 1, PROCESSING 2, FREE 3."""

    PENDING = 0
    COMPLETE = 1
    PROCESSING = 2
    FREE = 3


#: The ioreq sizes a vCPU access can have (bytes).
IOREQ_SIZES = (1, 2, 4, 8)
