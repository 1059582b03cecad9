"""The command line's two consoles, shared by every command group.

Lines are never cut at the terminal's width (a file:line, a run id or a hash must stay whole to be
found and copied), and piped output gets tables wide enough to read.
"""

from __future__ import annotations

import sys

from rich.console import Console

out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)
