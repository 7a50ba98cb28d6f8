"""A journal as a restarted replica takes it up (rinha/journal.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rinha.journal import Journal, Recovered


def recovered(path: Path) -> Recovered:
    """Open the journal at `path` as a restart does (a torn last line cut off) and read back
    what it holds."""
    journal = Journal(str(path), fsync=False)
    journal.open()
    try:
        return asyncio.run(journal.recover())
    finally:
        journal.close()
