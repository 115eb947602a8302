"""The task manifest: the tasks the workers serve, published under the root for every producer.

    <root>/.tasks/<publisher>.json

One file per publisher: a worker (named by its worker id) writes its file whenever it loads
the task modules (at start and on reload); `spool tasks` and `spool up` write theirs under
`loaded-<host>`. Each file holds what its publisher registered, by task name: declared queue,
options, the handler's parameters (spool.signature), its docstring's first line, its module
and a version stamp (a hash of the module file), with when and by whom it was published.

Several versions may be live at once (a rolling deploy): a producer knows a name when any
manifest knows it, and routes it by the newest manifest that does. A publisher prunes the
files of publishers that are no longer live workers and older than the grace, but the newest
file always stays, so producers keep routing while every worker is down.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spool.fsio import list_names, write_atomic
from spool.layout import ensure_dir
from spool.registry import TaskOptions

RELOAD_SECONDS = 2.0  # a cached catalog is read again at least this often (network mounts)


def manifest_dir(root: Path) -> Path:
    return root / ".tasks"


def loader_id() -> str:
    """The publisher name of `spool tasks` and `spool up` on this host."""
    host = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())[:64]
    return f"loaded-{host or 'host'}"


@dataclass(frozen=True)
class Manifest:
    """What one publisher registered, and when."""

    publisher: str
    published_at: float
    tasks: Mapping[str, TaskOptions]
    is_worker: bool = False
    host: str = ""
    version: str = ""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "publisher": self.publisher,
                "worker": self.is_worker,
                "host": self.host,
                "pid": os.getpid(),
                "published_at": self.published_at,
                "version": self.version,
                "tasks": {name: options.to_json() for name, options in self.tasks.items()},
            },
            indent=1,
        ).encode()


def parse(data: bytes) -> Manifest | None:
    """A manifest file's content, or None when it is not one (torn, foreign, old)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if not (isinstance(obj, dict) and isinstance(obj.get("tasks"), dict)):
        return None
    tasks = {n: TaskOptions.from_json(n, t) for n, t in obj["tasks"].items() if isinstance(t, dict)}
    published = obj.get("published_at")
    return Manifest(
        publisher=str(obj.get("publisher", "")),
        published_at=float(published) if isinstance(published, int | float) else 0.0,
        tasks=tasks,
        is_worker=bool(obj.get("worker")),
        host=str(obj.get("host", "")),
        version=str(obj.get("version", "")),
    )


def version_of(tasks: Mapping[str, TaskOptions]) -> str:
    """One stamp for a publisher's set of task versions (module hashes)."""
    stamps = sorted({t.version for t in tasks.values()})
    return "+".join(stamps)[:64]


def publish(
    root: Path,
    publisher: str,
    tasks: Mapping[str, TaskOptions],
    now: float,
    *,
    is_worker: bool,
    is_live: Callable[[str], bool],
    grace_seconds: float,
) -> Manifest:
    """Write this publisher's manifest atomically, then prune the stale ones. Raises: OSError."""
    directory = manifest_dir(root)
    ensure_dir(directory)
    manifest = Manifest(
        publisher=publisher,
        published_at=now,
        tasks=dict(tasks),
        is_worker=is_worker,
        host=socket.gethostname(),
        version=version_of(tasks),
    )
    write_atomic(manifest.to_json(), directory, directory / f"{publisher}.json", durable=False)
    prune(root, now, is_live, grace_seconds)
    return manifest


def prune(root: Path, now: float, is_live: Callable[[str], bool], grace_seconds: float) -> int:
    """Delete manifests of publishers that are not live workers and older than the grace,
    except the newest one; return how many went."""
    manifests = read_all(root)
    if not manifests:
        return 0
    newest = max(manifests, key=lambda m: m.published_at)
    gone = 0
    for m in manifests:
        if m is newest or now - m.published_at <= grace_seconds:
            continue
        if m.is_worker and is_live(m.publisher):
            continue
        # RACE: a worker republishing now rewrites its file; deleting the old one loses
        # nothing that worker does not write again at its next load
        (manifest_dir(root) / f"{m.publisher}.json").unlink(missing_ok=True)
        gone += 1
    return gone


def read_all(root: Path) -> list[Manifest]:
    """Every manifest under the root (unreadable or foreign files are skipped)."""
    directory = manifest_dir(root)
    found = []
    for name in list_names(directory):
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            data = (directory / name).read_bytes()
        except OSError:
            continue
        manifest = parse(data)
        if manifest is not None:
            found.append(manifest)
    return found


@dataclass(frozen=True)
class Catalog:
    """What producers know about the tasks: the union of every manifest under the root."""

    manifests: tuple[Manifest, ...] = ()
    by_name: Mapping[str, TaskOptions] = field(default_factory=dict)
    local: Mapping[str, TaskOptions] = field(default_factory=dict)  # this process's

    @classmethod
    def of(cls, manifests: Iterable[Manifest]) -> Catalog:
        ordered = tuple(sorted(manifests, key=lambda m: m.published_at))
        by_name: dict[str, TaskOptions] = {}
        for m in ordered:  # the newest publication of a name wins
            by_name.update(m.tasks)
        return cls(ordered, by_name)

    @classmethod
    def load(cls, root: Path) -> Catalog:
        return cls.of(read_all(root))

    @property
    def exists(self) -> bool:
        """Whether any manifest was published (else producers cannot check anything)."""
        return bool(self.manifests)

    def with_local(self, tasks: Mapping[str, TaskOptions]) -> Catalog:
        """This catalog, with the tasks registered in this process winning over the disk's."""
        return Catalog(self.manifests, self.by_name, tasks)

    def entry(self, name: str) -> TaskOptions | None:
        return self.local.get(name) or self.by_name.get(name)

    def queue_of(self, name: str) -> str | None:
        """The queue the task's handler declares, or None when no one published it."""
        entry = self.entry(name)
        return None if entry is None else entry.queue

    def suggest(self, name: str) -> list[str]:
        """Known names close to a misspelt one, best first."""
        return difflib.get_close_matches(name, list(self.by_name), n=3, cutoff=0.6)

    def publishers_of(self, name: str) -> list[Manifest]:
        return [m for m in self.manifests if name in m.tasks]


class CatalogCache:
    """A process's view of the catalog, read again when the manifest directory changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = manifest_dir(root)  # (stat'ed per enqueue: joined once)
        self.catalog = Catalog()
        self.stamp: tuple[int, int] | None = None
        self.read_at = float("-inf")

    def current(self, now_mono: float) -> Catalog:
        try:
            st = os.stat(self.dir)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except OSError:
            stamp = None
        if stamp != self.stamp or now_mono - self.read_at >= RELOAD_SECONDS:
            self.catalog = Catalog.load(self.root) if stamp is not None else Catalog()
            self.stamp, self.read_at = stamp, now_mono
        return self.catalog


def unknown_fate(
    catalog: Catalog,
    name: str,
    is_live: Callable[[str], bool],
    now: float,
    grace_seconds: float,
    look_again_seconds: float,
) -> float | None:
    """A worker claimed a task it does not know: seconds to leave it for the workers that do
    (another live worker knows it, or a manifest younger than the grace), or None to reject
    it as unknown."""
    wait: float | None = None
    for m in catalog.publishers_of(name):
        if m.is_worker and is_live(m.publisher):
            return look_again_seconds
        left = m.published_at + grace_seconds - now
        if left > 0:
            wait = max(wait or 0.0, min(look_again_seconds, left))
    return wait


def task_table(catalog: Catalog, is_live: Callable[[str], bool]) -> list[dict[str, Any]]:
    """Every published task, by name: its newest entry, and which live workers and which
    publications know it (`spool tasks --json`)."""
    rows = []
    for name in sorted(catalog.by_name):
        entry = catalog.by_name[name].to_json()
        publications = catalog.publishers_of(name)
        live = [m.publisher for m in publications if m.is_worker and is_live(m.publisher)]
        rows.append(
            {
                "name": name,
                **entry,
                "workers": live,
                "published": [
                    {
                        "by": m.publisher,
                        "at": m.published_at,
                        "version": m.tasks[name].version,
                    }
                    for m in publications
                ],
            }
        )
    return rows
