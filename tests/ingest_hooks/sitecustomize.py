"""Test-only hook for the Ray workers of tests/test_ingest_faults.py (on their PYTHONPATH only there).

With ``EMBELLAMA_TEST_KILL_AFTER_COMMIT=<dir>`` set and a file ``<dir>/armed`` present, the first Ray worker whose
write task commits rows (``embellama_integrations.lancedb.insert_new_rows``) SIGKILLs itself right after the
commit, before its task can report back; ``<dir>/killed`` records it (with the rows it had committed), so only one
task is ever killed and Ray's retry of that task runs normally. This keeps the fault out of the shipped package.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

HOOK_DIR = os.environ.get("EMBELLAMA_TEST_KILL_AFTER_COMMIT")

if HOOK_DIR and sys.argv and sys.argv[0].endswith("default_worker.py"):
    import embellama_integrations.lancedb as _lancedb

    _insert = _lancedb.insert_new_rows

    def _insert_then_die(table: Any, rows: Any) -> int:
        inserted = _insert(table, rows)
        if not os.path.exists(os.path.join(HOOK_DIR, "armed")):
            return inserted
        try:
            fd = os.open(os.path.join(HOOK_DIR, "killed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return inserted
        os.write(fd, str(inserted).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
        return inserted  # pragma: no cover - never reached

    _lancedb.insert_new_rows = _insert_then_die
