"""The import graph of the tree, read with the standard library's ast (no module is imported to check it).

Two rules:

- a service package (services/<name>, all but services/common, which every service shares) imports no other
  service's package, and services/common imports none: services talk over the wire, never through Python;
- gvt's modules form no import cycle. Every import that runs counts: at module level and inside a function
  (a function-level import that only dodges a cycle is still an edge of that cycle). An import under
  ``if TYPE_CHECKING:`` runs never and carries only annotations; among gvt's modules those may name nothing but
  the two owners every hardware concern is handed, the vGPU (``Vgpu``) and the device (``Gvt``), the role
  gvt.h's struct intel_vgpu and struct intel_gvt play for every file of drivers/gpu/drm/i915/gvt.

The walker is tested on small synthetic trees first, so that it is shown to catch each kind of fault.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP_PACKAGES = ("protocol", "services", "orchestration", "hardware")  # the folders that install as gvtsim.*
INSTALL_PREFIX = "gvtsim."
SHARED_SERVICE_PACKAGE = "common"
GVT = "services.gvt"
# what a type-only import among gvt's modules may name: the owners every hardware concern is handed
GVT_OWNER_TYPES = {("services.gvt.vgpu", "Vgpu"), ("services.gvt.core", "Gvt")}


@dataclass(frozen=True)
class Edge:
    """One import statement's target, resolved to a module of the tree."""

    src: str
    dst: str
    line: int
    kind: str  # "module" (runs on import), "function" (runs when called), "typing" (under TYPE_CHECKING)
    names: tuple[str, ...] = ()

    def where(self, root: Path) -> str:
        return f"{module_path(root, self.src)}:{self.line}"


def module_path(root: Path, mod: str) -> str:
    p = root.joinpath(*mod.split("."))
    return str((p / "__init__.py" if p.is_dir() else p.with_suffix(".py")).relative_to(root))


def find_modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name (as under the repository root, without the gvtsim. prefix) -> (file, is a package)."""
    mods: dict[str, tuple[Path, bool]] = {}
    for top in TOP_PACKAGES:
        base = root / top
        if not base.is_dir():
            continue
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(root).with_suffix("")
            parts = rel.parts
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                mods[".".join(parts[:-1])] = (f, True)
            else:
                mods[".".join(parts)] = (f, False)
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, str]] = []
        self._function = 0
        self._typing = 0

    def _kind(self) -> str:
        if self._typing:
            return "typing"
        return "function" if self._function else "module"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function += 1
        self.generic_visit(node)
        self._function -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._typing += 1
            for n in node.body:
                self.visit(n)
            self._typing -= 1
            for n in node.orelse:
                self.visit(n)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._kind()))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node, self._kind()))


def _strip(name: str) -> str:
    return name[len(INSTALL_PREFIX):] if name.startswith(INSTALL_PREFIX) else name


def _owning_module(name: str, mods: dict[str, tuple[Path, bool]]) -> str | None:
    """The longest prefix of a dotted name that is a module of the tree (None: outside the tree)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in mods:
            return cand
    return None


def import_edges(root: Path) -> list[Edge]:
    """Every import statement of the tree whose target is a module of the tree."""
    mods = find_modules(root)
    edges: list[Edge] = []
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        col = _Collector()
        col.visit(tree)
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node, kind in col.found:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    dst = _owning_module(_strip(alias.name), mods)
                    if dst is not None:
                        edges.append(Edge(mod, dst, node.lineno, kind))
                continue
            if node.level:
                base_parts = package.split(".")
                if node.level - 1 > len(base_parts):
                    continue
                base = ".".join(base_parts[:len(base_parts) - (node.level - 1)])
                # above services/ is the gvtsim namespace, whose subpackages are the repository's top folders
                target = ".".join(x for x in (base, node.module) if x)
            else:
                target = _strip(node.module or "")
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in mods:  # `from pkg import module`
                    edges.append(Edge(mod, sub, node.lineno, kind))
                    continue
                dst = _owning_module(target, mods)
                if dst is not None:
                    edges.append(Edge(mod, dst, node.lineno, kind, (alias.name,)))
    return edges


def external_imports(root: Path, package: str) -> dict[str, set[str]]:
    """Module of ``package`` -> the top-level names it imports from outside the tree (any level)."""
    mods = find_modules(root)
    out: dict[str, set[str]] = {}
    for mod, (path, _is_pkg) in mods.items():
        if not (mod == package or mod.startswith(package + ".")):
            continue
        col = _Collector()
        col.visit(ast.parse(path.read_text(), filename=str(path)))
        names = out.setdefault(mod, set())
        for node, _kind in col.found:
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names
                             if _owning_module(_strip(a.name), mods) is None and not a.name.startswith("gvtsim"))
            elif not node.level and node.module and not node.module.startswith("gvtsim") \
                    and _owning_module(node.module, mods) is None:
                names.add(node.module.split(".")[0])
    return out


def service_of(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" else None


def cross_service_imports(edges: list[Edge]) -> list[Edge]:
    """Imports from one service package into another's (services/common may import no service at all)."""
    bad = []
    for e in edges:
        s, d = service_of(e.src), service_of(e.dst)
        if s is None or d is None or s == d or d == SHARED_SERVICE_PACKAGE:
            continue
        bad.append(e)
    return bad


def cycles(edges: list[Edge], package: str) -> list[list[str]]:
    """The import cycles among the modules of one package (the strongly connected components of more than one
    module, or a module importing itself), counting every import that runs (module level and function level)."""
    graph: dict[str, set[str]] = {}
    prefix = package + "."
    for e in edges:
        if e.kind == "typing" or not e.src.startswith(prefix) or not e.dst.startswith(prefix):
            continue
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    # Tarjan's strongly connected components, iterative (no recursion limit on a long chain)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1 or node in graph[node]:
                    found.append(sorted(comp))
    return found


def type_only_imports(edges: list[Edge], package: str, allowed: set[tuple[str, str]]) -> list[Edge]:
    """Type-only imports among one package's modules that name anything but the allowed (module, name) pairs."""
    prefix = package + "."
    bad = []
    for e in edges:
        if e.kind != "typing" or not e.src.startswith(prefix) or not e.dst.startswith(prefix):
            continue
        if not e.names or any((e.dst, n) not in allowed for n in e.names):
            bad.append(e)
    return bad


def _describe(root: Path, edges: list[Edge]) -> str:
    lines = (f"  {e.where(root)}: {e.src} imports {e.dst} ({e.kind} level)" for e in edges)
    return "\n".join(dict.fromkeys(lines))  # one line per statement and target (not per imported name)


def _cycle_report(root: Path, edges: list[Edge], comps: list[list[str]]) -> str:
    lines = []
    for comp in comps:
        members = set(comp)
        lines.append("cycle among " + ", ".join(comp) + ":")
        lines.extend(f"  {e.where(root)} -> {e.dst} ({e.kind} level)" for e in edges
                     if e.src in members and e.dst in members and e.kind != "typing")
    return "\n".join(dict.fromkeys(lines))


# -- the walker, on synthetic trees -------------------------------------------------------------------------

def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in sorted({p.parent for p in root.rglob("*.py")}):
        while d != root:
            (d / "__init__.py").touch(exist_ok=True)
            d = d.parent
    return root


def test_walker_catches_a_relative_cross_service_import(tmp_path):
    root = _tree(tmp_path, {
        "services/pgpu/builder.py": "from ..guest.cmds import encode\n",
        "services/guest/cmds.py": "def encode(): pass\n",
        "services/pgpu/ok.py": "from ..common.memory import PAGE_SIZE\nfrom . import builder\n",
        "services/common/memory.py": "PAGE_SIZE = 4096\n",
    })
    bad = cross_service_imports(import_edges(root))
    assert [(e.src, e.dst, e.line) for e in bad] == [("services.pgpu.builder", "services.guest.cmds", 1)]


def test_walker_catches_absolute_function_level_and_type_only_cross_service_imports(tmp_path):
    root = _tree(tmp_path, {
        "services/vhm/a.py": ("from typing import TYPE_CHECKING\nimport gvtsim.services.gvt.core\n"
                              "if TYPE_CHECKING:\n    from gvtsim.services.pgpu.engine import Engine\n"
                              "def f():\n    from services.guest import cpu\n"),
        "services/gvt/core.py": "",
        "services/pgpu/engine.py": "class Engine: pass\n",
        "services/guest/cpu.py": "",
        "services/common/bad.py": "from ..vhm import a\n",
    })
    bad = {(e.src, e.dst, e.kind) for e in cross_service_imports(import_edges(root))}
    assert bad == {
        ("services.vhm.a", "services.gvt.core", "module"),
        ("services.vhm.a", "services.pgpu.engine", "typing"),
        ("services.vhm.a", "services.guest.cpu", "function"),
        ("services.common.bad", "services.vhm.a", "module"),
    }


def test_walker_allows_imports_of_common_protocol_and_hardware(tmp_path):
    root = _tree(tmp_path, {
        "services/gvt/a.py": ("from ...protocol import messages\nfrom ...hardware.engines import ENGINES\n"
                              "from ..common import memory\nimport os\n"),
        "protocol/messages.py": "", "hardware/engines.py": "ENGINES = ()\n", "services/common/memory.py": "",
    })
    edges = import_edges(root)
    assert {e.dst for e in edges} == {"protocol.messages", "hardware.engines", "services.common.memory"}
    assert cross_service_imports(edges) == []


def test_walker_finds_a_cycle_closed_by_a_function_level_import(tmp_path):
    root = _tree(tmp_path, {
        "services/gvt/vgpu.py": "from .ppgtt import VgpuPpgtt\n",
        "services/gvt/ppgtt.py": "from .scheduler import WorkloadError\n",
        "services/gvt/scheduler.py": "def f():\n    from .vgpu import FailsafeReason\n",
        "services/gvt/leaf.py": "from . import vgpu\n",
    })
    edges = import_edges(root)
    assert cycles(edges, GVT) == [["services.gvt.ppgtt", "services.gvt.scheduler", "services.gvt.vgpu"]]


def test_walker_finds_a_cycle_through_from_package_import_module(tmp_path):
    root = _tree(tmp_path, {
        "services/gvt/a.py": "from . import b\n",
        "services/gvt/b.py": "from . import a\n",
        "services/gvt/c.py": "from . import a\n",
    })
    assert cycles(import_edges(root), GVT) == [["services.gvt.a", "services.gvt.b"]]


def test_walker_reports_no_cycle_on_a_chain_and_ignores_type_only_back_references(tmp_path):
    root = _tree(tmp_path, {
        "services/gvt/vgpu.py": "from .gtt import Ggtt\nclass Vgpu: pass\n",
        "services/gvt/gtt.py": ("from typing import TYPE_CHECKING\nfrom .errors import E\n"
                                "if TYPE_CHECKING:\n    from .vgpu import Vgpu\nclass Ggtt: pass\n"),
        "services/gvt/errors.py": "class E(Exception): pass\n",
    })
    edges = import_edges(root)
    assert cycles(edges, GVT) == []
    assert type_only_imports(edges, GVT, GVT_OWNER_TYPES) == []


def test_walker_flags_a_type_only_import_of_anything_but_the_owners(tmp_path):
    root = _tree(tmp_path, {
        "services/gvt/spt.py": ("import typing\nif typing.TYPE_CHECKING:\n"
                                "    from .ppgtt import PpgttGlobal\n    from .vgpu import Vgpu\n"),
        "services/gvt/ppgtt.py": "from .spt import Spt\n",
        "services/gvt/vgpu.py": "",
    })
    bad = type_only_imports(import_edges(root), GVT, GVT_OWNER_TYPES)
    assert [(e.src, e.dst, e.names) for e in bad] == [("services.gvt.spt", "services.gvt.ppgtt", ("PpgttGlobal",))]


def test_walker_lists_the_libraries_a_module_imports(tmp_path):
    root = _tree(tmp_path, {
        "services/gvt/core.py": "import structlog\nfrom collections import deque\nfrom . import vgpu\n"
                                "def f():\n    import logging.handlers\n",
        "services/gvt/vgpu.py": "from ...protocol import messages\n", "protocol/messages.py": "",
    })
    assert external_imports(root, GVT) == {"services.gvt": set(), "services.gvt.core": {"structlog", "collections",
                                                                                         "logging"},
                                           "services.gvt.vgpu": set()}


# -- the tree ----------------------------------------------------------------------------------------------

def test_the_tree_is_walked():
    """Guards the checks below against walking nothing (a moved folder would make them pass vacuously)."""
    mods = find_modules(REPO)
    assert {"services.gvt.core", "services.gvt.vgpu", "services.vhm.core", "services.pgpu.engine"} <= set(mods)
    assert any(e.src.startswith(GVT + ".") and e.dst.startswith(GVT + ".") for e in import_edges(REPO))


def test_no_service_imports_another_service():
    bad = cross_service_imports(import_edges(REPO))
    assert not bad, "a service imports another service's package (share it through services/common, " \
        "protocol/ or hardware/ instead):\n" + _describe(REPO, bad)


def test_no_import_cycle_among_gvt_modules():
    edges = import_edges(REPO)
    comps = cycles(edges, GVT)
    assert not comps, _cycle_report(REPO, edges, comps)


def test_gvt_type_only_imports_name_only_the_owners():
    bad = type_only_imports(import_edges(REPO), GVT, GVT_OWNER_TYPES)
    assert not bad, "a type-only import among gvt's modules names something other than Vgpu or Gvt " \
        "(import it at module level; if that makes a cycle, move the name down):\n" + _describe(REPO, bad)


@pytest.mark.parametrize("package", [GVT])
def test_no_function_level_import_within_the_package(package):
    """A function-level import inside gvt exists only to dodge a cycle or to defer a cost; gvt has neither need."""
    prefix = package + "."
    bad = [e for e in import_edges(REPO) if e.kind == "function" and e.src.startswith(prefix)
           and e.dst.startswith(prefix)]
    assert not bad, "function-level imports among gvt's modules (import at module level):\n" + _describe(REPO, bad)


#: gvt's asyncio shell and its command line: the only modules of gvt that do I/O
GVT_SHELL = {"services.gvt.service", "services.gvt.main"}
IO_LIBRARIES = {"structlog", "logging", "asyncio", "zmq", "uvloop", "socket"}


def test_the_gvt_core_imports_no_logging_or_io_library():
    """A core returns events (events.py) and effects; its shell logs and sends them."""
    bad = {mod: sorted(names & IO_LIBRARIES) for mod, names in external_imports(REPO, GVT).items()
           if mod not in GVT_SHELL and names & IO_LIBRARIES}
    assert not bad, f"gvt core modules importing a logging or I/O library: {bad}"
