"""Test beds of simulated hosts sharing one volume of a real distributed filesystem, from
Debian's packages: GlusterFS 10.3 (GlusterBed) and MooseFS 3.0.117 (MooseBed).

Common layout (names carry a random tag, so beds never clash):

* network namespace ``dsrv-<tag>``: a bridge ``br0`` with ``10.<x>.<y>.1/24`` (a random /24);
  the servers run there in the foreground, listening only on the bridge address, with all
  their state under the bed's directory;
* per client i a namespace ``dcl<i>-<tag>`` whose ``eth0`` (``.2``, ``.3``, ...) is a veth
  pair with ``port<i>`` on the bridge;
* per client a FUSE mount at ``mount(i)`` (``<tmp>/mnt/client<i>``), made by
  ``nsenter --net=/run/netns/dcl<i>-<tag> <client> ...`` in the foreground: its traffic crosses
  its own namespace while the mount stays visible to every process (``ip netns exec`` would
  hide it in a private mount namespace). Each client has its own caches.

GlusterBed: ``glusterd -N`` with its own ``glusterd.vol`` (working directory
``<tmp>/glusterd``, CLI socket ``<tmp>/glusterd.socket``) serves one volume ``sp<tag>`` of one
brick ``<tmp>/brick`` (``volume create ... force``: the brick may sit on the root
filesystem), started by glusterd as ``glusterfsd``; clients ``glusterfs -N``, type
``fuse.glusterfs``. The volume's defaults are kept (FUSE attribute and entry timeouts of 1 s,
the performance translators on). glusterfsd keeps its pid file and socket under
/var/run/gluster and its log under /var/log/glusterfs/bricks (names derived from the volume
and brick path, so beds do not clash); stop() removes them.

MooseBed: ``mfsmaster -f`` (metadata in ``<tmp>/master``, exports ``/`` with
``maproot=0:0``) and one ``mfschunkserver -f`` (chunks in ``<tmp>/chunks``), both as root;
clients ``mfsmount -f``, which mount with the bare type ``fuse`` and the source
``mfs#<ip>:9421``. One chunkserver: every chunk has one copy (goal 2 stays unmet).

Write only through the mounts, never into the servers' directories.

partition(i) / heal(i) set client i's switch port down / up (its operations hang meanwhile).
spawn(i, argv) starts a process "on client i"; kill_client(i) SIGKILLs those and client i's
FUSE daemon: its mount stays in place, dead (ENOTCONN), so nothing of that host can write to
a local directory by mistake.

stop() SIGKILLs spawned processes, the clients, the servers and everything in the bed's
namespaces, lazily unmounts every mount point, deletes the namespaces, and raises at the end
if something could not be cleaned up; it is idempotent. Every wait has a deadline, every
helper command a timeout.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.hostbed import detach, kill_group, make_switch, mount_layers, reap, run

START_TIMEOUT = 30.0
MARKER = ".dfsbed"

Popen = subprocess.Popen[Any]


def _socket_of(pid: int) -> list[Path]:
    """The unix socket a glusterfsd was told to listen on (`-S PATH`), if `pid` is one."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []
    return [Path(argv[i + 1]) for i, arg in enumerate(argv[:-1]) if arg == "-S"]


class DfsBed:
    """A server namespace and `clients` client namespaces whose FUSE mounts of one volume are
    at `mount(i)`; subclasses say how to start the servers and a client. See the module
    docstring."""

    ENGINE = ""
    FSTYPE = ""
    TOOLS: tuple[str, ...] = ()
    PACKAGES = ""

    def __init__(self, tmp_dir: Path, clients: int = 2) -> None:
        if not 1 <= clients <= 9:
            raise ValueError("clients must be 1..9")
        self.tmp_dir = Path(tmp_dir).resolve()
        self.clients = clients
        self.tag = secrets.token_hex(3)
        self.server_ns = f"dsrv-{self.tag}"
        self.client_ns = [f"dcl{i}-{self.tag}" for i in range(clients)]
        self.subnet = f"10.{1 + secrets.randbelow(254)}.{secrets.randbelow(256)}"
        self.server_ip = f"{self.subnet}.1"
        self.logs = self.tmp_dir / "logs"
        self._mounts = [self.tmp_dir / "mnt" / f"client{i}" for i in range(clients)]
        self._namespaces: list[str] = []
        self._servers: list[Popen] = []
        self._clients: list[Popen] = []
        self._procs: list[list[Popen]] = [[] for _ in range(clients)]
        self._started = False

    @classmethod
    def available(cls) -> str | None:
        """None if this bed can run on this machine, else the reason it cannot."""
        if os.geteuid() != 0:
            return f"the {cls.ENGINE} bed needs root (network namespaces, FUSE mounts)"
        for tool in ("ip", "nsenter", *cls.TOOLS):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (apt-get install {cls.PACKAGES})"
        if not os.path.exists("/dev/fuse"):
            return "/dev/fuse is missing"
        probe = f"dprobe-{secrets.token_hex(3)}"
        try:
            run(["ip", "netns", "add", probe])
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            return f"cannot create a network namespace: {exc}"
        run(["ip", "netns", "del", probe], check=False)
        return None

    def mount(self, i: int) -> Path:
        """Where client i sees the volume."""
        if not 0 <= i < self.clients:
            raise IndexError(f"no client {i} (clients: {self.clients})")
        return self._mounts[i]

    def spawn(self, i: int, argv: list[str], **popen_kwargs: Any) -> Popen:
        """Start a process "on client i" (one meant to use only mount(i)); killed with the
        client, and at stop()."""
        self.mount(i)
        popen_kwargs["start_new_session"] = True  # kill_client() kills its process group
        proc = subprocess.Popen(argv, **popen_kwargs)
        self._procs[i].append(proc)
        return proc

    def kill_client(self, i: int, timeout: float = 10.0) -> None:
        """Client i's host dies: SIGKILL every process spawned on it, then its FUSE daemon.
        The mount stays in place, dead (ENOTCONN), until stop()."""
        self.mount(i)
        for proc in [*self._procs[i], self._clients[i]]:
            kill_group(proc)
        left = reap([*self._procs[i], self._clients[i]], timeout)
        if left:
            raise RuntimeError(f"client {i}: processes still alive after SIGKILL: {left}")

    def partition(self, i: int) -> None:
        """Cut client i off the network (its switch port goes down); nothing is killed."""
        self.mount(i)
        run(["ip", "-n", self.server_ns, "link", "set", f"port{i}", "down"])

    def heal(self, i: int) -> None:
        """Reconnect client i's switch port."""
        self.mount(i)
        run(["ip", "-n", self.server_ns, "link", "set", f"port{i}", "up"])

    def start(self) -> DfsBed:
        if self._started:
            raise RuntimeError("a bed starts once")
        self._started = True
        try:
            for directory in (self.logs, *self._mounts):
                directory.mkdir(parents=True, exist_ok=True)
            self._make_network()
            self._start_servers()
            for i in range(self.clients):
                self._mount_client(i)
            self._check_shared()
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to see
                self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill everything, unmount, delete the namespaces. Idempotent."""
        errors: list[str] = []
        killed = [proc for procs in self._procs for proc in procs]
        killed += self._clients + self._servers
        for proc in killed:
            kill_group(proc)
        sockets: list[Path] = []
        for ns in self._namespaces:  # servers' children and anything else left there
            with contextlib.suppress(OSError, RuntimeError, subprocess.TimeoutExpired):
                for pid in run(["ip", "netns", "pids", ns]).split():
                    sockets += _socket_of(int(pid))
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), 9)
        if reap(killed, 10.0):
            errors.append(f"{self.ENGINE} processes still alive after SIGKILL")
        for path in self._mounts:
            for _ in range(3):
                if not mount_layers(path):
                    break
                try:
                    detach(path)
                except OSError as exc:
                    errors.append(f"unmount: {exc}")
                    break
        for ns in list(self._namespaces):
            try:
                run(["ip", "netns", "del", ns])
                self._namespaces.remove(ns)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
        self._remove_host_files(sockets)
        if errors:
            raise RuntimeError(f"{type(self).__name__}.stop: " + "; ".join(errors))

    def __enter__(self) -> DfsBed:
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

    def _start_servers(self) -> None:
        raise NotImplementedError

    def _client_argv(self, i: int) -> list[str]:
        raise NotImplementedError

    def _remove_host_files(self, sockets: list[Path]) -> None:
        """Remove what the servers left outside the bed's directory."""

    # -- setup ------------------------------------------------------------------------------

    def _make_network(self) -> None:
        make_switch(self.server_ns, self.server_ip, self.subnet, self.client_ns, self._namespaces)

    def _start_server(self, name: str, argv: list[str]) -> Popen:
        """Start a server process in the server namespace, its output in logs/<name>.out."""
        with open(self.logs / f"{name}.out", "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.server_ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._servers.append(proc)
        return proc

    def _mount_client(self, i: int) -> None:
        mountpoint = self._mounts[i]
        argv = ["nsenter", f"--net=/run/netns/{self.client_ns[i]}", *self._client_argv(i)]
        with open(self.logs / f"client{i}.out", "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._clients.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.ENGINE} client {i} exited: see logs/client{i}.*")
            if self.FSTYPE in mount_layers(mountpoint):
                with contextlib.suppress(OSError):
                    os.stat(mountpoint)
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"client {i} not mounted within {START_TIMEOUT} s")
            time.sleep(0.05)

    def _check_shared(self) -> None:
        """A file written through mount 0 is read back through every mount."""
        text = f"dfsbed {self.tag}\n"
        (self._mounts[0] / MARKER).write_text(text)
        deadline = time.monotonic() + 10
        for path in self._mounts:
            while True:
                with contextlib.suppress(OSError):
                    if (path / MARKER).read_text() == text:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{MARKER} written through mount 0 not seen in {path}")
                time.sleep(0.05)


class GlusterBed(DfsBed):
    """glusterd with a one-brick volume; glusterfs FUSE clients (see the module docstring)."""

    ENGINE = "GlusterFS"
    FSTYPE = "fuse.glusterfs"
    TOOLS = ("glusterd", "gluster", "glusterfs", "glusterfsd")
    PACKAGES = "glusterfs-server glusterfs-client"

    def __init__(self, tmp_dir: Path, clients: int = 2) -> None:
        super().__init__(tmp_dir, clients)
        self.volume = f"sp{self.tag}"
        self.brick = self.tmp_dir / "brick"
        self._state = self.tmp_dir / "glusterd"
        self._socket = self.tmp_dir / "glusterd.socket"

    def _start_servers(self) -> None:
        for directory in (self.brick, self._state):
            directory.mkdir(parents=True, exist_ok=True)
        config = self.tmp_dir / "glusterd.vol"
        config.write_text(
            "volume management\n"
            "    type mgmt/glusterd\n"
            f"    option working-directory {self._state}\n"
            f"    option glusterd-sockfile {self._socket}\n"
            "    option transport-type socket\n"
            f"    option transport.socket.bind-address {self.server_ip}\n"
            "    option ping-timeout 0\n"
            "    option event-threads 1\n"
            "end-volume\n"
        )
        argv = ["glusterd", "-N", "-f", str(config), "-p", str(self.tmp_dir / "glusterd.pid")]
        glusterd = self._start_server("glusterd", [*argv, "-l", str(self.logs / "glusterd.log")])
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # glusterd answers once its socket is up
            try:
                self._gluster("volume", "list")
                break
            except RuntimeError:
                if glusterd.poll() is not None:
                    raise RuntimeError("glusterd exited: see logs/glusterd.*") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._gluster("volume", "create", self.volume, f"{self.server_ip}:{self.brick}", "force")
        self._gluster("volume", "start", self.volume)

    def _gluster(self, *args: str) -> str:
        argv = ["ip", "netns", "exec", self.server_ns, "gluster", "--mode=script"]
        return run([*argv, f"--glusterd-sock={self._socket}", *args], timeout=START_TIMEOUT)

    def _client_argv(self, i: int) -> list[str]:
        argv = ["glusterfs", "-N", f"--volfile-server={self.server_ip}"]
        argv += [f"--volfile-id={self.volume}", f"--log-file={self.logs / f'client{i}.log'}"]
        return [*argv, str(self._mounts[i])]

    def _remove_host_files(self, sockets: list[Path]) -> None:
        shutil.rmtree(Path("/var/run/gluster/vols") / self.volume, ignore_errors=True)
        for socket in sockets:
            socket.unlink(missing_ok=True)
        brick_log = str(self.brick).strip("/").replace("/", "-") + ".log"
        (Path("/var/log/glusterfs/bricks") / brick_log).unlink(missing_ok=True)


class MooseBed(DfsBed):
    """mfsmaster and one mfschunkserver; mfsmount FUSE clients (see the module docstring)."""

    ENGINE = "MooseFS"
    FSTYPE = "fuse"
    TOOLS = ("mfsmaster", "mfschunkserver", "mfsmount")
    PACKAGES = "moosefs-master moosefs-chunkserver moosefs-client"
    EMPTY_METADATA = Path("/var/lib/mfs/metadata.mfs.empty")

    def _start_servers(self) -> None:
        master, chunkserver, chunks = (self.tmp_dir / n for n in ("master", "cs", "chunks"))
        for directory in (master, chunkserver, chunks):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.EMPTY_METADATA, master / "metadata.mfs")
        (self.tmp_dir / "exports.cfg").write_text("*\t/\trw,alldirs,admin,maproot=0:0\n")
        (self.tmp_dir / "topology.cfg").write_text("")
        (self.tmp_dir / "hdd.cfg").write_text(f"{chunks}\n")
        ip = self.server_ip
        common = "WORKING_USER = root\nWORKING_GROUP = root\n"
        (self.tmp_dir / "master.cfg").write_text(
            f"{common}DATA_PATH = {master}\n"
            f"EXPORTS_FILENAME = {self.tmp_dir / 'exports.cfg'}\n"
            f"TOPOLOGY_FILENAME = {self.tmp_dir / 'topology.cfg'}\n"
            f"MATOML_LISTEN_HOST = {ip}\nMATOCS_LISTEN_HOST = {ip}\nMATOCL_LISTEN_HOST = {ip}\n"
        )
        (self.tmp_dir / "cs.cfg").write_text(
            f"{common}DATA_PATH = {chunkserver}\n"
            f"HDD_CONF_FILENAME = {self.tmp_dir / 'hdd.cfg'}\n"
            f"MASTER_HOST = {ip}\nBIND_HOST = {ip}\nCSSERV_LISTEN_HOST = {ip}\n"
            "HDD_LEAVE_SPACE_DEFAULT = 64MiB\n"
        )
        self._start_server("master", ["mfsmaster", "-c", str(self.tmp_dir / "master.cfg"), "-f"])
        self._wait_for_log("master", "mfsmaster daemon initialized properly")
        self._start_server("cs", ["mfschunkserver", "-c", str(self.tmp_dir / "cs.cfg"), "-f"])
        self._wait_for_log("cs", "scanning folder")

    def _wait_for_log(self, name: str, text: str) -> None:
        log = self.logs / f"{name}.out"
        deadline = time.monotonic() + START_TIMEOUT
        while text not in log.read_text(errors="replace"):
            if self._servers[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)

    def _client_argv(self, i: int) -> list[str]:
        return ["mfsmount", str(self._mounts[i]), "-H", self.server_ip, "-f"]
