"""What every bed of simulated hosts sharing one directory has in common (tests/hostbed.py:
sshfs; tests/dfsbed.py: GlusterFS, MooseFS, JuiceFS), so that one test body runs on each.

A bed is a server namespace ``<prefix>srv-<tag>`` with a bridge ``br0`` (``10.<x>.<y>.1/24``,
a random /24) where the file service runs, and per host i a namespace ``<prefix>h<i>-<tag>``
whose ``eth0`` (``.2``, ``.3``, ...) is a veth pair with ``port<i>`` on the bridge. Host i's
mount of the shared directory is at ``mount(i)``; its FUSE daemon's traffic crosses host i's
namespace while the mount stays visible to every process on the machine. A process "on host i"
is one that uses only ``mount(i)``; ``spawn(i, ...)`` starts one, which dies with the host.

The interface the tests use:

* ``mount(i)``: host i's view; ``view()``: where the test itself reads and writes the shared
  directory, through no host under test (sshfs: the exported directory on the server's disk;
  the others: one more client mount made from the server's namespace), never partitioned or
  killed;
* ``spawn(i, argv, ...)``, ``kill_host(i)`` (SIGKILL host i's processes and its FUSE daemon;
  its mount stays in place, dead, so nothing of that host can write to a local directory by
  mistake), ``partition(i)`` / ``heal(i)`` (its switch port down / up: its operations hang);
* ``ENGINE``, ``LOCKS_SHARED`` (whether a lock taken through one mount excludes the others);
* ``start()`` (or ``with``), ``stop()``: kills everything, lazily unmounts every mount point,
  deletes the namespaces; idempotent, works after partition() and kill_host(), raises at the
  end if something could not be cleaned up.

Every wait has a deadline and every helper command a timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

COMMAND_TIMEOUT = 10.0
MOUNT_TIMEOUT = 30.0

Popen = subprocess.Popen[Any]
_MNT_DETACH = 2


def run(argv: list[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a helper command with a timeout; its stdout, or RuntimeError with its stderr."""
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def add_namespace(name: str, added: list[str]) -> None:
    """A new network namespace with its loopback up; its name is appended to `added`."""
    run(["ip", "netns", "add", name])
    added.append(name)
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def make_switch(
    server_ns: str, server_ip: str, subnet: str, host_ns: list[str], added: list[str]
) -> None:
    """A bridge br0 in `server_ns` with `server_ip`/24, and per host namespace an eth0
    (`subnet`.2, .3, ...) veth-paired with port<i> on the bridge (partition: port<i> down).
    Every namespace made is appended to `added`, for the teardown."""
    srv = ["ip", "-n", server_ns]
    add_namespace(server_ns, added)
    run([*srv, "link", "add", "br0", "type", "bridge"])
    run([*srv, "addr", "add", f"{server_ip}/24", "dev", "br0"])
    run([*srv, "link", "set", "br0", "up"])
    for i, ns in enumerate(host_ns):
        add_namespace(ns, added)
        # both ends are created directly in their namespaces: no names in the root one
        peer = ["peer", "name", f"port{i}", "netns", server_ns]
        run(["ip", "link", "add", "name", "eth0", "netns", ns, "type", "veth", *peer])
        run([*srv, "link", "set", f"port{i}", "master", "br0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{subnet}.{i + 2}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])


def mount_layers(path: Path) -> list[str]:
    """File system types mounted at `path` (bottom first), from our mountinfo."""
    wanted = os.fsencode(path)
    layers = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            if b"\\" in point:  # octal escapes for space, tab, newline, backslash
                point = point.decode("unicode_escape").encode("latin-1")
            if point == wanted:
                layers.append(fields[fields.index(b"-") + 1].decode())
    return layers


def detach(path: Path) -> None:
    """Lazily unmount the top mount at `path` (umount -l); works on dead FUSE mounts too."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def kill_group(proc: Popen) -> None:
    """SIGKILL a process started with start_new_session, and its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def reap(procs: list[Popen], timeout: float) -> list[Popen]:
    """Wait for killed processes; those still not dead after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    left = []
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            left.append(proc)
    return left


def kill_namespace_pids(ns: str) -> list[int]:
    """SIGKILL every process whose network namespace is `ns`; their pids."""
    pids = [int(pid) for pid in run(["ip", "netns", "pids", ns]).split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def start_logged(argv: list[str], log: Path, **popen_kwargs: Any) -> Popen:
    """Start a helper daemon in its own session, its output in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen_kwargs,
        )


class NetBed:
    """A server namespace and `hosts` host namespaces, each host with a FUSE mount of the
    shared directory; subclasses say how to serve it and how a host mounts it. See the module
    docstring."""

    ENGINE = ""
    FSTYPE = ""  # the file system type of a host's mount in mountinfo
    LOCKS_SHARED = False
    PREFIX = "n"  # namespaces <PREFIX>srv-<tag>, <PREFIX>h<i>-<tag>
    MARKER = ".netbed"  # written through mount 0 at start, read back through every mount

    def __init__(self, tmp_dir: Path, hosts: int = 2) -> None:
        if not 1 <= hosts <= 9:
            raise ValueError("hosts must be 1..9")
        self.tmp_dir = Path(tmp_dir).resolve()
        self.hosts = hosts
        self.fstype = self.FSTYPE
        self.tag = secrets.token_hex(3)
        self.server_ns = f"{self.PREFIX}srv-{self.tag}"
        self.host_ns = [f"{self.PREFIX}h{i}-{self.tag}" for i in range(hosts)]
        self.subnet = f"10.{1 + secrets.randbelow(254)}.{secrets.randbelow(256)}"
        self.server_ip = f"{self.subnet}.1"
        self.logs = self.tmp_dir / "logs"
        self._mounts = [self.tmp_dir / "mnt" / f"host{i}" for i in range(hosts)]
        self._namespaces: list[str] = []  # created and not yet deleted
        self._mounters: list[Popen | None] = [None] * hosts  # each host's FUSE daemon
        self._servers: list[Popen] = []
        self._procs: list[list[Popen]] = [[] for _ in range(hosts)]
        self._started = False

    # -- public API -------------------------------------------------------------------------

    def mount(self, i: int) -> Path:
        """Where host i sees the shared directory."""
        self._check_host(i)
        return self._mounts[i]

    def view(self) -> Path:
        """Where the test sees the shared directory, through no host under test."""
        raise NotImplementedError

    def mounted(self, i: int) -> bool:
        """Whether host i's mount is (still) in place; a killed one stays, dead, until stop()."""
        return self.fstype in mount_layers(self.mount(i))

    def start(self) -> Self:
        if self._started:
            raise RuntimeError(f"a {type(self).__name__} starts once")
        self._started = True
        try:
            for directory in (self.logs, *self._mounts):
                directory.mkdir(parents=True, exist_ok=True)
            self._prepare()
            make_switch(self.server_ns, self.server_ip, self.subnet, self.host_ns, self._namespaces)
            self._start_servers()
            for i in range(self.hosts):
                self._mounters[i] = self._mount_host(i)
                self._wait_mounted(self._mounts[i], self._mounters[i], f"host {i}")
            self._mount_view()
            self._check_shared()
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to see
                self.stop()
            raise
        return self

    def spawn(self, i: int, argv: list[str], **popen_kwargs: Any) -> Popen:
        """Start a process "on host i": an ordinary process (root namespaces) that is meant
        to use only mount(i); killed with the host, and at stop()."""
        self._check_host(i)
        popen_kwargs["start_new_session"] = True  # kill_host() kills its process group
        proc = subprocess.Popen(argv, **popen_kwargs)
        self._procs[i].append(proc)
        return proc

    def kill_host(self, i: int, timeout: float = 10.0) -> None:
        """Host i dies: SIGKILL every process spawned on it (with their process groups),
        then its FUSE daemon (in that order: a process must not see its mount die first and
        exit on its own). Its mount stays in place, dead: every operation on it fails at once
        with ENOTCONN (stop() unmounts it)."""
        self._check_host(i)
        for proc in self._procs[i]:
            kill_group(proc)
        left = reap(self._kill_mounter(i) + self._procs[i], timeout)
        if left:
            raise RuntimeError(f"host {i}: processes still alive after SIGKILL: {left}")

    def partition(self, i: int) -> None:
        """Cut host i off the network (its switch port goes down); nothing is killed."""
        self._check_host(i)
        run(["ip", "-n", self.server_ns, "link", "set", f"port{i}", "down"])

    def heal(self, i: int) -> None:
        """Reconnect host i's switch port."""
        self._check_host(i)
        run(["ip", "-n", self.server_ns, "link", "set", f"port{i}", "up"])

    def stop(self) -> None:
        """Kill everything, unmount, delete the namespaces. Idempotent; raises at the end if
        something could not be cleaned up."""
        errors: list[str] = []
        spawned = [proc for procs in self._procs for proc in procs]
        for proc in spawned:
            kill_group(proc)
        mounters: list[Popen] = []
        for i in range(self.hosts):
            try:
                mounters += self._kill_mounter(i)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                errors.append(f"host {i}: {exc}")
        # a process stuck in a request to a partitioned mount dies once its daemon is dead
        left = reap(spawned + mounters, 10.0)
        if left:
            errors.append(f"processes still alive after SIGKILL: {left}")
        for path in self._mount_points():
            errors += self._unmount(path)
        servers = self._kill_servers()
        if reap(servers, 10.0):
            errors.append(f"{self.ENGINE} servers still alive after SIGKILL")
        for ns in list(self._namespaces):
            try:
                run(["ip", "netns", "del", ns])
                self._namespaces.remove(ns)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
        self._remove_host_files()
        if errors:
            raise RuntimeError(f"{type(self).__name__}.stop: " + "; ".join(errors))

    def __enter__(self) -> Self:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what an engine provides ------------------------------------------------------------

    def _prepare(self) -> None:
        """Anything needed before the network (keys, directories)."""

    def _start_servers(self) -> None:
        raise NotImplementedError

    def _mount_host(self, i: int) -> Popen:
        """Start host i's FUSE daemon (it mounts mount(i)); start() waits for the mount."""
        raise NotImplementedError

    def _mount_view(self) -> None:
        """Make view() if it is a mount of its own."""

    def _mount_points(self) -> list[Path]:
        return list(self._mounts)

    def _kill_servers(self) -> list[Popen]:
        """SIGKILL the servers and everything left in the bed's namespaces; what to reap."""
        for proc in self._servers:
            kill_group(proc)
        for ns in self._namespaces:
            with contextlib.suppress(OSError, RuntimeError, subprocess.TimeoutExpired):
                kill_namespace_pids(ns)
        return list(self._servers)

    def _remove_host_files(self) -> None:
        """Remove what the servers left outside the bed's directory."""

    # -- shared machinery -------------------------------------------------------------------

    def _check_host(self, i: int) -> None:
        if not 0 <= i < self.hosts:
            raise IndexError(f"no host {i} (hosts: {self.hosts})")

    def _kill_mounter(self, i: int) -> list[Popen]:
        """SIGKILL host i's FUSE daemon and everything in its namespace (an ssh, say)."""
        proc = self._mounters[i]
        if proc is not None:
            kill_group(proc)
        if self.host_ns[i] in self._namespaces:
            kill_namespace_pids(self.host_ns[i])
        return [proc] if proc is not None else []

    def _wait_mounted(self, path: Path, proc: Popen | None, what: str) -> None:
        """Wait until the FUSE mount at `path` is in place and answers (many daemons mount
        first and connect then)."""
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{self.ENGINE} mount for {what} exited: see {self.logs}")
            if self.fstype in mount_layers(path):
                with contextlib.suppress(OSError):
                    os.stat(path)
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not mounted within {MOUNT_TIMEOUT} s")
            time.sleep(0.02)

    def _check_shared(self) -> None:
        """A file written through mount 0 is read back through view() and every mount."""
        text = f"{type(self).__name__} {self.tag}\n"
        (self._mounts[0] / self.MARKER).write_text(text)
        deadline = time.monotonic() + 10
        for path in [self.view(), *self._mounts]:
            while True:
                with contextlib.suppress(OSError):
                    if (path / self.MARKER).read_text() == text:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.MARKER} written through mount 0 not seen in {path}")
                time.sleep(0.05)

    def _unmount(self, path: Path) -> list[str]:
        """Lazily unmount every layer at `path`; the errors."""
        for _ in range(4):
            if not mount_layers(path):
                break
            try:
                detach(path)
            except OSError as exc:
                return [f"unmount: {exc}"]
        return []
