"""The doctor: probe the root's filesystem from this host and say which mode is safe.

The probes are in spool.deploy.probes. On a network filesystem inotify does not see other
hosts' changes and locks may be host-local: there the verdict is shared mode (see
spool.cluster), which relies only on what the probes check on the server — one winner per
rename, exclusive creates.
"""

from __future__ import annotations

from pathlib import Path

from spool.deploy.probes import run_probes
from spool.deploy.races import Probe
from spool.envelope import JSON
from spool.mounts import filesystem_of

SINGLE_HOST = "single host: safe (workers on this host only)"
SEVERAL_HOSTS = (
    "several hosts: safe in shared mode ([cluster] shared, automatic on this filesystem): "
    "workers poll and hold leases; set [cluster] lease above the mount's attribute cache time"
)
# where the project's CI runs shared mode (tests/test_hosts.py, tests/test_dfs.py)
TESTED_SHARED = (
    "sshfs 3.7.3 (drains, dead and cut-off hosts, schedulers, unique keys, pause); "
    "GlusterFS 10.3 and MooseFS 3.0.117 (a drain, a dead and a cut-off client); not JuiceFS, "
    "NFS or CephFS yet: check those with --other-mount and a trial drain"
)
LEASE_MARGIN_SECONDS = 3.0  # renewals every 0.5 s, whole-second mtimes, a sweep every 2 s


def verdict(
    fs: dict[str, JSON], probes: dict[str, Probe] | None, lease_seconds: float = 30.0
) -> tuple[bool, str]:
    """(safe, the line saying which mode is) from the filesystem type and the probes."""
    failed = [name for name, result in (probes or {}).items() if not result["ok"]]
    if failed:
        return False, f"NOT safe: probe failed ({', '.join(failed)})"
    other = (probes or {}).get("other_mount", {})
    if "renewal_seen_s" in other:
        seen = other["renewal_seen_s"]
        if seen is None or float(seen) + LEASE_MARGIN_SECONDS >= lease_seconds:
            shown = "not seen" if seen is None else f"seen after {float(seen):.1f} s"
            return False, (
                f"NOT safe in shared mode: a renewed lease is {shown} via the other mount, "
                f"too close to [cluster] lease = {lease_seconds:g} s: raise the lease or "
                "shorten the mount's attribute cache"
            )
    if fs["network"]:
        return True, SEVERAL_HOSTS + ("" if probes else " (by filesystem type; --fs probes it)")
    if probes is None:
        return True, f"{SINGLE_HOST} (by filesystem type; --fs probes it)"
    if not probes["inotify"]["seen"]:
        return True, f"{SINGLE_HOST}; no filesystem events, workers rely on rescans"
    return True, SINGLE_HOST


def examine(
    root: Path,
    config: Path | None,
    queues: list[str],
    *,
    probe: bool,
    other: Path | None,
    lease_seconds: float = 30.0,
) -> dict[str, JSON]:
    """The doctor's report: root, config, queues, filesystem, probes (if asked), verdict."""
    fs = filesystem_of(root)
    probes = run_probes(root, other) if probe else None
    safe, line = verdict(fs, probes, lease_seconds)
    report: dict[str, JSON] = {
        "root": str(root.resolve()),
        "config": None if config is None else str(config),
        "queues": queues,
        "filesystem": fs,
        "verdict": line,
        "safe": safe,
    }
    if fs["network"]:
        report["tested_shared_on"] = TESTED_SHARED
    if probes is not None:
        report["probes"] = probes
        report["warnings"] = sorted({str(p["warning"]) for p in probes.values() if "warning" in p})
    return report


def render(report: dict[str, JSON]) -> str:
    """The report as plain lines."""
    fs = report["filesystem"]
    kind = "shared-capable / network" if fs["network"] else "local"
    lines = [
        f"root: {report['root']}",
        f"config: {report['config'] or 'none'}",
        f"queues: {shown_queues(report['queues'])}",
        f"filesystem: {fs['fstype']} on {fs['mount_point']} ({kind}: {fs['why']})",
    ]
    for name, result in report.get("probes", {}).items():
        mark = "FAIL" if not result["ok"] else "WARN" if "warning" in result else "ok  "
        lines.append(f"  {mark} {name}: {result['summary']}")
    lines += [f"warning: {text}" for text in report.get("warnings", [])]
    if fs["network"]:
        lines.append(f"shared mode is tested on: {report['tested_shared_on']}")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


def shown_queues(queues: list[str], most: int = 10) -> str:
    if not queues:
        return "none"
    more = f", ... ({len(queues)} in all)" if len(queues) > most else ""
    return ", ".join(queues[:most]) + more
