"""Progress and status lines: to stderr, timestamped, flushed (results go to stdout)."""

from __future__ import annotations

import sys
from datetime import datetime


def say(message: str) -> None:
    print(f"{datetime.now().strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)
