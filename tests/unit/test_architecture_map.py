"""docs/ARCHITECTURE.md's module map matches the tree: one row per module of every installed package.

The packages are those pyproject.toml installs (``[tool.setuptools] package-dir``), so a new top-level package
is covered as soon as it is installed. Package ``__init__.py`` files have no row.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
MAP_HEADING = "## Layout and module map"
ROW = re.compile(r"^\| `(?P<path>[^`]+\.py)` \|")


def package_dirs(root: Path) -> list[Path]:
    """The source folders pyproject.toml installs (the values of ``package-dir``)."""
    conf = tomllib.loads((root / "pyproject.toml").read_text())
    return [root / d for d in conf["tool"]["setuptools"]["package-dir"].values()]


def tree_modules(root: Path, dirs: list[Path]) -> set[str]:
    """Every module under ``dirs`` (relative to ``root``), package ``__init__.py`` files aside."""
    return {p.relative_to(root).as_posix() for d in dirs for p in d.rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def map_modules(text: str) -> list[str]:
    """The modules named by the rows of the module map section (in order, duplicates kept)."""
    if MAP_HEADING not in text:
        raise AssertionError(f"docs/ARCHITECTURE.md has no {MAP_HEADING!r} section")
    section = text.split(MAP_HEADING, 1)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.M)[0]
    return [mt["path"] for line in section.splitlines() if (mt := ROW.match(line))]


def differences(tree: set[str], mapped: list[str]) -> list[str]:
    """What to change in the map, one instruction per line (empty when the map matches the tree)."""
    out = [f"add a row `| `{p}` | what it is |` to the module map of docs/ARCHITECTURE.md (under its folder)"
           for p in sorted(tree - set(mapped))]
    out += [f"remove the row of `{p}` from the module map of docs/ARCHITECTURE.md: no such module"
            for p in sorted(set(mapped) - tree)]
    out += [f"`{p}` has {mapped.count(p)} rows in the module map of docs/ARCHITECTURE.md: keep one"
            for p in sorted({p for p in mapped if mapped.count(p) > 1})]
    return out


def test_the_module_map_matches_the_tree() -> None:
    problems = differences(tree_modules(ROOT, package_dirs(ROOT)), map_modules(DOC.read_text()))
    assert not problems, "\n".join(problems)


def test_the_checker_names_a_missing_and_a_stale_module(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = { "x.pkg" = "pkg" }\n')
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py"):
        (tmp_path / "pkg" / name).write_text("")
    doc = f"# t\n\n{MAP_HEADING}\n\n| module | what |\n|---|---|\n| `pkg/a.py` | a |\n| `pkg/gone.py` | old |\n" \
          "| `pkg/a.py` | again |\n\n## Later\n\n| `pkg/sub/b.py` | outside the map section |\n"
    problems = differences(tree_modules(tmp_path, package_dirs(tmp_path)), map_modules(doc))
    assert problems == [
        "add a row `| `pkg/sub/b.py` | what it is |` to the module map of docs/ARCHITECTURE.md (under its folder)",
        "remove the row of `pkg/gone.py` from the module map of docs/ARCHITECTURE.md: no such module",
        "`pkg/a.py` has 2 rows in the module map of docs/ARCHITECTURE.md: keep one",
    ]
    fixed = doc.replace("| `pkg/gone.py` | old |\n", "| `pkg/sub/b.py` | b |\n").replace("| `pkg/a.py` | again |\n", "")
    assert differences(tree_modules(tmp_path, package_dirs(tmp_path)), map_modules(fixed)) == []
