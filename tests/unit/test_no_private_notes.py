"""Comments and docs cite real sources (a Linux or ACRN file and function, a spec) or a page under docs/,
never the team's private design notes, which are not in the repository and mean nothing to a reader."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Spelled in pieces so that this file does not match itself.
PRIVATE = re.compile(r"\b" + "DES" + r"IGN\b(?!\.md\b)|" + "DES" + r"IGN\.md|" + "gvt-" + "facts|"
                     + "shared/" + "reference|" + "zmq-asyncio-" + "patterns|" + "peers-and-" + "papers|"
                     + "docker-in-" + "ci")


def tracked_text_files() -> list[Path]:
    """Every file git tracks, except binaries (images)."""
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / p for p in out.splitlines() if not p.endswith((".png", ".jpg", ".svg"))]


def citations(files: list[Path]) -> list[str]:
    """``path:line: text`` of every line that cites the private notes."""
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if PRIVATE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return found


def test_the_pattern_catches_each_private_note(tmp_path: Path) -> None:
    names = ["see " + "DES" + "IGN section 7", "(" + "gvt-" + "facts 3)", "shared/" + "reference/x.md",
             "zmq-asyncio-" + "patterns", "peers-and-" + "papers", "docker-in-" + "ci.md"]
    files = []
    for i, text in enumerate(names + ["a clean line: drivers/gpu/drm/i915/gvt/gtt.c, design of the slot"]):
        f = tmp_path / f"f{i}.py"
        f.write_text(f"# {text}\n")
        files.append(f)
    hits = [h for h in (PRIVATE.search(f.read_text()) for f in files) if h]
    assert len(hits) == len(names)  # every private name is caught, the clean line is not


def test_no_file_cites_the_private_notes() -> None:
    found = citations(tracked_text_files())
    assert not found, "cite the real source or a page under docs/ instead:\n" + "\n".join(found)
