"""The command table (hardware/cmd_table.py) against the figures read in Linux 5.14
drivers/gpu/drm/i915/gvt/cmd_parser.c ``cmd_info[]``, and one instance of every command decoded through both
gvt's scanner and pgpu's decoder."""

from __future__ import annotations

import pytest

from gvtsim.hardware import cmd_table as ct
from gvtsim.hardware import cmds
from gvtsim.services.gvt import cmd_parser as cp
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.types import GmResource
from gvtsim.services.pgpu import commands as pc

RES = GmResource(0x0800_0000, 0x10_0000, 0x5000_0000, 0x10_0000, ())
WHITELIST = cp.whitelist(Gvt().table)
#: lengths a handler requires of an F_LEN_VAR row without valid_len (cmd_parser.c handlers)
INSTANCE_LEN = {"MI_STORE_DATA_IMM": 4, "MI_FLUSH_DW": 4, "PIPE_CONTROL": 6, "XY_COLOR_BLT": 7,
                "XY_SRC_COPY_BLT": 10, "MI_BATCH_BUFFER_START": 3, "MI_LOAD_REGISTER_IMM": 3,
                "MI_DISPLAY_FLIP": 3, "MI_OP_2F": 3}


def test_the_table_has_the_figures_of_the_source() -> None:
    """cmd_info[] in 5.14: 225 rows, all valid on SKL/KBL (D_ALL / D_BDW_PLUS / D_SKL_PLUS); per ring RCS 158,
    VCS 70 (VCS1 the same), BCS 57, VECS 33; 20 rows with a handler."""
    assert len(ct.CMD_INFO) == 225 and len(ct.BY_NAME) == 225
    per_ring = {r: sum(1 for c in ct.CMD_INFO if r in c.rings) for r in ("rcs", "vcs", "vcs2", "bcs", "vecs")}
    assert per_ring == {"rcs": 158, "vcs": 70, "vcs2": 70, "bcs": 57, "vecs": 33}
    assert sum(1 for c in ct.CMD_INFO if c.handler) == 20
    assert {c.handler for c in ct.CMD_INFO if c.handler} == set(cp.HANDLERS)  # gvt implements every one
    assert len(ct.TABLE) == sum(per_ring.values())  # no two rows share (ring, opcode)
    assert ct.BY_NAME["PIPE_CONTROL"].opcode == 0x7A00 and ct.BY_NAME["MI_BATCH_BUFFER_START"].opcode == 0x31
    assert ct.BY_NAME["XY_SRC_COPY_BLT"].opcode == (2 << 7) | 0x53  # OP_2D(0x53)


def _instances() -> list[tuple[str, str, list[int]]]:
    """(engine, name, dwords) for every row on every ring that decodes its command type."""
    out = []
    for c in ct.CMD_INFO:
        n = c.valid_len or INSTANCE_LEN.get(c.name) or (c.len if c.flag & ct.F_LEN_MASK == ct.F_LEN_CONST else 2)
        hdr = ct.encode(c, n)
        for engine in sorted(c.rings):
            if ct.get_opcode(hdr, engine) is None:
                continue  # 3DSTATE_VF_STATISTICS_GM45 is listed R_ALL but BCS decodes no type-3 command
            out.append((engine, c.name, [hdr] + [0] * (c.length(hdr) - 1)))
    return out


INSTANCES = _instances()


def test_every_row_but_one_is_decodable_on_each_of_its_rings() -> None:
    assert len(INSTANCES) == sum(len(c.rings) for c in ct.CMD_INFO) - 1


@pytest.mark.parametrize(("engine", "name", "dws"), INSTANCES, ids=[f"{e}-{n}" for e, n, _ in INSTANCES])
def test_one_instance_of_every_command_through_the_scanner_and_the_decoder(engine: str, name: str,
                                                                            dws: list[int]) -> None:
    """gvt's scanner takes it as that row (accepted, or refused by that row's own rule, never as unknown)
    and pgpu's decoder finds the same row and length: it executes it, or reports it as unsupported."""
    def no_gm(gm: int, n: int) -> bytes:
        raise cp.ScanError(cp.Errno.EFAULT, f"{gm:#x} not mapped")

    p = cp.Parser(engine, RES.contains, WHITELIST, True, no_gm)
    try:
        p.scan(cmds.to_bytes(dws))
    except cp.ScanError as err:
        assert "unknown command" not in err.reason and "runs past" not in err.reason, err
    assert p.counts.get(name) == 1
    info = pc.decode(engine, dws[0])
    assert info is not None and info.name == name and info.length(dws[0]) == len(dws)
    spec = pc.lookup(engine, dws[0])
    assert (spec is not None) == (name in pc.EXECUTORS)
