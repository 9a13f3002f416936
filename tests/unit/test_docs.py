"""docs/PROTOCOL.md is generated from the catalogue and must match it; the CLI lists its subcommands."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from gvtsim.orchestration.cli import COMMANDS
from gvtsim.protocol import doc
from gvtsim.protocol import messages as m

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_protocol_md_is_current():
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    assert text == doc.render(), "docs/PROTOCOL.md is stale: run python -m gvtsim.protocol.doc > docs/PROTOCOL.md"


def test_protocol_md_covers_every_message_and_field():
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    for cls in m.ALL_MESSAGES:
        assert f"### `{cls.__struct_config__.tag}`" in text
        for field in cls.__struct_fields__:
            assert f"| `{field}` |" in text


def test_gvtsim_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "--help"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0
    for name in COMMANDS:
        assert f"  {name}" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "no-such-command"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "unknown command" in bad.stderr
