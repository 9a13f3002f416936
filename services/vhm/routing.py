"""ioreq routing inside vhm: the PCI 0xCF8/0xCFC latch, range and BDF lookup, and the fallback client.

Pure functions and small tables, no I/O. The order of the steps follows the Service-VM kernel
dispatcher (ACRN drivers/vhm/vhm_ioreq.c, ``acrn_ioreq_distribute_request``):

1. ``handle_cf8cfc``: 0xCF8 (size 4) is latched or read back in vhm; 0xCFC-0xCFF are completed in vhm
   while CONF1_ENABLE (bit 31 of the latch) is clear, else rewritten in place to a PCI request;
2. find a client: PCI by the intercepted bus:dev.func, PIO/MMIO/WP by the first range of the same type
   with ``start <= addr && addr + size - 1 <= end`` (inclusive end), clients walked newest first;
3. nobody claims it: the fallback client answers (reads all ones of the access size, writes dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from ...hardware.pci import CONF1_ENABLE, PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA
from ...protocol import IoreqDir, IoreqType
from ...protocol import messages as m

# PCI_CONFIG_ADDRESS: the CONF1 address port (ACRN drivers/vhm/vhm_ioreq.c: handled in the VHM kernel, size 4
# only); PCI_CONFIG_DATA: the data ports 0xCFC..0xCFF (gvtsim.hardware.pci)
PIO_LIMIT = 0xFFFF  # x86 port space is 64 KiB

Bdf = tuple[int, int, int]  # (bus, dev, func)


def all_ones(size: int) -> int:
    """The all-ones value of an access of ``size`` bytes (what an unclaimed read returns, ACRN acrn_common.h)."""
    return (1 << (8 * size)) - 1


def fallback_value(req: m.Ioreq) -> int:
    """The fallback client's answer: reads return all ones of the access size, writes are dropped (0)."""
    return all_ones(req.size) if req.dir == IoreqDir.READ else 0


# ------------------------------------------------------------------------------------ 0xCF8 / 0xCFC
@dataclass(frozen=True)
class Cf8Cfc:
    """What ``handle_cf8cfc`` decided for one PIO access.

    Attributes:
        latch: the VM's ``pci_conf_addr`` after the access.
        value: set when vhm completed the access itself (the read value, 0 for writes).
        request: set when the access was rewritten to a PCI request that must be routed by BDF.
    """

    latch: int
    value: int | None = None
    request: m.Ioreq | None = None


def is_cfg_addr(req: m.Ioreq) -> bool:
    """A PIO access to the CONF1 address port that VHM handles itself (``is_cfg_addr``: 0xCF8, size 4)."""
    return req.kind == IoreqType.PIO and req.addr == PCI_CONFIG_ADDRESS and req.size == 4


def is_cfg_data(req: m.Ioreq) -> bool:
    """A PIO access to one of the CONF1 data ports 0xCFC..0xCFF (``is_cfg_data``)."""
    return req.kind == IoreqType.PIO and PCI_CONFIG_DATA <= req.addr < PCI_CONFIG_DATA + 4


def decode_conf1(latch: int, port: int) -> tuple[int, int, int, int]:
    """``(bus, dev, func, reg)`` addressed by the CONF1 latch for a data-port access at ``port``.

    ACRN drivers/vhm/vhm_ioreq.c: bus = addr[23:16], dev = addr[15:11], func = addr[10:8],
    reg = (addr & 0xFF) + ((addr >> 16) & 0xF00) + (port - 0xCFC). ``reg`` is kept to 12 bits (the
    wire field's range): only a byte access at 0xCFF with reg 0xFFC+ could exceed it.
    """
    bus = (latch >> 16) & 0xFF
    dev = (latch >> 11) & 0x1F
    func = (latch >> 8) & 0x7
    reg = ((latch & 0xFF) + ((latch >> 16) & 0xF00) + (port - PCI_CONFIG_DATA)) & 0xFFF
    return bus, dev, func, reg


def handle_cf8cfc(latch: int, req: m.Ioreq) -> Cf8Cfc | None:
    """The VHM kernel's CONF1 handling for one PIO request (ACRN drivers/vhm/vhm_ioreq.c ``handle_cf8cfc``).

    Args:
        latch: the VM's current ``pci_conf_addr``.
        req: the request (any kind; only PIO to 0xCF8/0xCFC-0xCFF is concerned).

    Returns:
        None when the request is not a CONF1 access handled here (it is routed normally), else a
        :class:`Cf8Cfc` saying whether vhm completed it or rewrote it to kind PCI.
    """
    if is_cfg_addr(req):
        if req.dir == IoreqDir.WRITE:
            return Cf8Cfc(latch=req.value & 0xFFFF_FFFF, value=0)
        return Cf8Cfc(latch=latch, value=latch)
    if is_cfg_data(req):
        if not latch & CONF1_ENABLE:
            # CONF1 disabled: no config cycle happens; reads see all ones (of the access size), writes vanish
            return Cf8Cfc(latch=latch, value=fallback_value(req))
        bus, dev, func, reg = decode_conf1(latch, req.addr)
        rewritten = msgspec.structs.replace(req, kind=int(IoreqType.PCI), bus=bus, dev=dev, func=func, reg=reg)
        return Cf8Cfc(latch=latch, request=rewritten)
    return None


# ------------------------------------------------------------------------------------ range table
@dataclass(frozen=True)
class IoRange:
    """A trapped range of one client: kind PIO/MMIO/WP, inclusive ``[start, end]`` (acrn_ioreq_add_iorange)."""

    client: int
    kind: IoreqType
    start: int
    end: int

    def covers(self, addr: int, size: int) -> bool:
        """The whole access lies inside the range (an access straddling its end is not claimed)."""
        return self.start <= addr and addr + size - 1 <= self.end


class RangeTable:
    """One VM's trapped ranges, per client. Lookup walks clients newest first, as VHM walks the VM's
    client list (list_add puts a new client at the head); no overlap checks, as in VHM."""

    def __init__(self) -> None:
        self._by_client: dict[int, list[IoRange]] = {}  # insertion order = registration order

    def add(self, rng: IoRange) -> bool:
        """Register a range. Returns False if this exact range is already registered."""
        ranges = self._by_client.setdefault(rng.client, [])
        if rng in ranges:
            return False
        ranges.append(rng)
        return True

    def remove(self, rng: IoRange) -> bool:
        """Delete one exact range. Returns False if it was not registered."""
        ranges = self._by_client.get(rng.client)
        if not ranges or rng not in ranges:
            return False
        ranges.remove(rng)
        if not ranges:
            del self._by_client[rng.client]
        return True

    def remove_client(self, client: int) -> int:
        """Forget every range of a client (client lost). Returns how many were removed."""
        return len(self._by_client.pop(client, []))

    def lookup(self, kind: int, addr: int, size: int) -> int | None:
        """The client claiming an access of ``kind`` at ``[addr, addr + size - 1]``, or None (fallback)."""
        for ranges in reversed(self._by_client.values()):
            for rng in ranges:
                if rng.kind == kind and rng.covers(addr, size):
                    return rng.client
        return None

    def __len__(self) -> int:
        return sum(len(r) for r in self._by_client.values())

    def clean(self) -> None:
        """Drop every range (VM destroyed)."""
        self._by_client.clear()


class BdfTable:
    """Which client intercepts PCI config requests for which bus:dev.func (acrn_ioreq_intercept_bdf)."""

    def __init__(self) -> None:
        self._owner: dict[Bdf, int] = {}

    def claim(self, bdf: Bdf, client: int) -> int | None:
        """Claim ``bdf`` for ``client``. Returns the current owner if another client holds it (nothing
        changes then), else None."""
        held = self._owner.get(bdf)
        if held is not None and held != client:
            return held
        self._owner[bdf] = client
        return None

    def release(self, bdf: Bdf, client: int) -> bool:
        """Release a claim. Returns False if ``client`` did not hold ``bdf``."""
        if self._owner.get(bdf) != client:
            return False
        del self._owner[bdf]
        return True

    def remove_client(self, client: int) -> int:
        """Forget every claim of a client. Returns how many were removed."""
        gone = [bdf for bdf, c in self._owner.items() if c == client]
        for bdf in gone:
            del self._owner[bdf]
        return len(gone)

    def lookup(self, bdf: Bdf) -> int | None:
        """The client intercepting ``bdf``, or None (fallback)."""
        return self._owner.get(bdf)

    def __len__(self) -> int:
        return len(self._owner)

    def clean(self) -> None:
        """Drop every claim (VM destroyed)."""
        self._owner.clear()


def route(ranges: RangeTable, bdfs: BdfTable, req: m.Ioreq) -> int | None:
    """The client an (already CONF1-rewritten) request goes to, or None for the fallback client."""
    if req.kind == IoreqType.PCI:
        return bdfs.lookup((req.bus, req.dev, req.func))
    return ranges.lookup(req.kind, req.addr, req.size)
