"""Reloading task code: the signal that asks workers to load their task modules again (what a
reload changed is registry.task_changes).

A worker takes SIGHUP as "load the task modules again": between two attempts it starts a new
handler process, and only once that one has imported every module does it replace the old one
(see Worker.reload_tasks); a module that does not import leaves the old handler process serving.
`spool reload` sends that signal to every live worker of a root on this host: a worker names its
pid and host in its info file (see spool.workers), and holds its lock while it lives, so a stale
info file (a dead worker, its pid maybe reused) is never signalled.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

from spool.workers import holds_lock, is_alive, read_info, worker_ids


@dataclass
class Signalled:
    """What `spool reload` did: workers signalled, skipped (other hosts), not permitted."""

    signalled: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)


def signal_workers(root: Path, signum: int = signal.SIGHUP) -> Signalled:
    """Send `signum` to every live worker of `root` that runs on this host."""
    here = socket.gethostname()
    report = Signalled()
    for worker_id in worker_ids(root):
        info = read_info(root, worker_id)
        if info is None:  # RACE: it stopped after the listing
            continue
        if info.get("host") != here:
            if is_alive(root, worker_id):
                report.elsewhere.append(worker_id)
            continue
        pid = info.get("pid")
        if not isinstance(pid, int) or pid <= 1 or not holds_lock(root, worker_id):
            continue  # dead (its pid may belong to another process by now)
        try:
            os.kill(pid, signum)  # RACE: it may exit right now; then nothing receives it
        except ProcessLookupError:
            continue
        except PermissionError:
            report.denied.append(f"{worker_id} (pid {pid})")
            continue
        report.signalled.append(worker_id)
    return report
