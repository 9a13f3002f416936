"""The hardware definitions are declared once, in gvtsim.hardware, and imported everywhere else.

An ast walk of the product's source (protocol/, services/, orchestration/) fails on a module-level assignment
to a name that gvtsim.hardware declares, or to a name under which a module imports something from it (the
aliases gvt and the guest keep), and on a literal engine list (three or more engine names). The walker is
tested on small synthetic trees too, so that it is shown to catch both.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

from gvtsim.hardware.engines import ENGINES, GPU_ENGINES
from gvtsim.protocol import messages as m

ROOT = Path(__file__).resolve().parents[2]
HARDWARE = ROOT / "hardware"
PRODUCT = [ROOT / "protocol", ROOT / "services", ROOT / "orchestration"]
ENGINE_NAMES = frozenset(e.name for e in ENGINES)
#: module-level names that only share a hardware name: (file, name) -> what the module's own value is
NOT_HARDWARE = {
    ("services/common/ept.py", "ADDR_MASK"): "the x86 EPT entry's address bits (51:12), not a GPU PTE's",
    ("services/gvt/bench_sched.py", "ENGINES"): "the engines the scheduler benchmark drives (rcs, bcs)",
}


def _module_names(tree: ast.Module) -> dict[str, int]:
    """Module-level names bound by assignment (not by import), with their line."""
    out: dict[str, int] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    out[n.id] = node.lineno
    return out


def _is_hardware_import(node: ast.ImportFrom) -> bool:
    return node.module is not None and (node.module == "hardware" or node.module.startswith("hardware.")
                                        or ".hardware" in f".{node.module}")


def hardware_names(hardware: Path) -> set[str]:
    """The UPPER_CASE constants gvtsim.hardware declares (cmd_table's tables, reached as ``cmd_table.X``, carry
    generic names such as TABLE: not these)."""
    names: set[str] = set()
    for path in hardware.glob("*.py"):
        if path.name == "cmd_table.py":
            continue
        names |= {n for n in _module_names(ast.parse(path.read_text())) if n.isupper()}
    return names


def _engine_list(value: ast.expr | None) -> bool:
    if not isinstance(value, ast.Tuple | ast.List | ast.Set):
        return False
    strings = [e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return len(strings) == len(value.elts) >= 3 and set(strings) <= ENGINE_NAMES


def redeclarations(hardware: Path, roots: list[Path]) -> list[str]:
    """Every module-level redeclaration of a hardware constant or engine list under ``roots``."""
    files = {p: ast.parse(p.read_text()) for root in roots for p in sorted(root.rglob("*.py"))}
    names = hardware_names(hardware)
    for tree in files.values():  # the names a module gives what it imports from the hardware package
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _is_hardware_import(node):
                names |= {a.asname or a.name for a in node.names if (a.asname or a.name).isupper()}
    found = []
    for path, tree in files.items():
        rel = path.relative_to(hardware.parent)
        for name, line in _module_names(tree).items():
            if name in names and (str(rel), name) not in NOT_HARDWARE:
                found.append(f"{rel}:{line}: {name} is a hardware definition: import it from gvtsim.hardware")
        for node in tree.body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if _engine_list(value):
                found.append(f"{rel}:{node.lineno}: a literal engine list: use gvtsim.hardware.engines.GPU_ENGINES")
    return found


def test_no_hardware_definition_is_declared_outside_the_hardware_package() -> None:
    assert redeclarations(HARDWARE, PRODUCT) == []


def test_the_wire_engine_names_are_the_hardware_engine_set() -> None:
    # protocol/messages.py spells them in a Literal (the schema msgspec validates against): it must be the set
    assert get_args(m.Engine) == GPU_ENGINES
    assert set(GPU_ENGINES) <= ENGINE_NAMES


def _tree(tmp_path: Path, files: dict[str, str]) -> tuple[Path, list[Path]]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path / "hardware", [tmp_path / "services"]


def test_the_walker_catches_a_redeclared_constant_and_an_alias(tmp_path: Path) -> None:
    hw, roots = _tree(tmp_path, {
        "hardware/regs.py": "RING_HEAD = 0x34\nRING_TAIL = 0x30\n",
        "services/a/x.py": "from ...hardware.regs import RING_TAIL as TAIL\nRING_HEAD = 0x34\n",
        "services/b/y.py": "TAIL = 0x30\nOTHER = 1\n",
        "services/b/z.py": "from ...hardware.regs import RING_HEAD\nX = RING_HEAD + 4\n",
    })
    found = redeclarations(hw, roots)
    assert len(found) == 2
    assert "services/a/x.py:2: RING_HEAD" in found[0] and "services/b/y.py:1: TAIL" in found[1]


def test_the_walker_catches_a_literal_engine_list(tmp_path: Path) -> None:
    hw, roots = _tree(tmp_path, {
        "hardware/engines.py": "X = 1\n",
        "services/a/x.py": 'ALL = ("rcs", "bcs", "vcs", "vecs")\nTWO = ("rcs", "bcs")\nLEVELS = {"rcs": 3}\n',
        "services/a/y.py": 'names: list[str] = ["vecs", "vcs", "rcs"]\nMIXED = ("rcs", "bcs", "gpu")\n',
    })
    found = redeclarations(hw, roots)
    assert [f.split(":")[:2] for f in found] == [["services/a/x.py", "1"], ["services/a/y.py", "1"]]
