"""Help texts written for users: one argparse formatter for every gvtsim command.

Module docstrings double as command descriptions; this formatter drops their reStructuredText markup
(double back-quotes, ``:mod:`` / ``:class:`` roles) and keeps their line breaks, and it shows each option's
real default next to the environment variable that sets it: ``[GVTSIM_X]`` in a help string becomes
``[GVTSIM_X, default: 0.5]``.
"""

from __future__ import annotations

import argparse
import re

_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|ref):`~?\.?([^`]+)`")
_ENV = re.compile(r"\[(GVTSIM_[A-Z0-9_]+)\]")


def plain(text: str) -> str:
    """``x`` -> x, :mod:`.report` -> report (what a terminal should show of reStructuredText)."""
    return _ROLE.sub(r"\1", text).replace("``", "")


class UserHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (without markup); option help with its real default."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_ = plain(action.help or "")
        default = action.default
        shown = "off" if default in ("", None, False) else default
        if _ENV.search(help_) and default is not argparse.SUPPRESS:
            help_ = _ENV.sub(lambda mt: f"[{mt.group(1)}, default: {str(shown).replace('%', '%%')}]", help_)
        return help_
