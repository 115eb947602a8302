"""supervisord in the foreground of `spool up`, and how our signals reach it and its workers.

supervisord runs as our child in its own process group, so a terminal's Ctrl-C reaches us only
and we tell it once; if we die, it gets SIGTERM (Linux) and shuts down in order. Signals: the
first Ctrl-C/SIGTERM shuts supervisord down in order (each worker finishes its running task),
a second one makes the workers stop now (running tasks go back), a third kills everything.
The second is a QUIT sent to each worker, not a second TERM: supervisord's TERM and ours could
reach a worker at one instant and count as one signal (see spool.signals).
SIGHUP is a hang-up (stop in order, as Ctrl-C; ignored under nohup) only when the terminal
`spool up` started on is gone; otherwise it was sent on purpose (`kill -HUP`, systemd's
ExecReload) and reaches the workers only, which load their task code again (see spool.reload).
The workers' pids and the HUP go through supervisord's XML-RPC interface on its unix socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, cast

from spool.deploy.supervisor import PROGRAM, socket_credentials
from spool.signals import Terminal

RPC_TIMEOUT_SECONDS = 5.0
WAIT_SLICE_SECONDS = 0.2


def supervise(conf: Path, socket_path: Path | None, log_dir: Path, env: dict[str, str]) -> int:
    """Run supervisord until it exits; turn our signals into its orderly shutdown."""
    received: list[int] = []
    reloads: list[int] = []
    terminal = Terminal.now()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            received.append(signum)
        elif not terminal.hung_up():
            reloads.append(signum)
        elif not terminal.nohup:
            received.append(signum)  # its terminal was closed: stop as for Ctrl-C

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in caught}
    proc = subprocess.Popen(
        # -s: its log goes to its logfile only; a line written to a hung-up terminal would
        # kill it before it stops the workers (EIO)
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-s", "-c", str(conf)],
        env=env,
        stdin=subprocess.DEVNULL,
        process_group=0,  # our terminal's Ctrl-C reaches us only; we tell supervisord once
        preexec_fn=term_when_parent_dies(),
    )
    try:
        code = wait_forwarding(proc, received, reloads, socket_path, conf)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if proc.poll() is None:  # we are leaving by an exception: shut down in order
            proc.terminate()
            proc.wait()
    if code != 0:
        say(
            f"spool up: supervisord exited with {describe_exit(code)}; "
            f"see {log_dir}/supervisord.log",
            error=True,
        )
        return 1
    say("spool up: stopped")
    return 0


def say(line: str, error: bool = False) -> None:
    """Print a line on our terminal; once it is gone (hung up: EIO), print nothing more."""
    try:
        print(line, file=sys.stderr if error else sys.stdout, flush=True)
    except OSError:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open until we exit)


def wait_forwarding(
    proc: subprocess.Popen[bytes],
    received: list[int],
    reloads: list[int],
    socket_path: Path | None,
    conf: Path,
) -> int:
    """Wait for supervisord; 1st signal: shut down in order, 2nd: workers stop now, 3rd: KILL.
    A SIGHUP in `reloads`: the workers reload their task code."""
    handled = 0
    programs: list[tuple[str, int]] = []
    while True:
        try:
            return proc.wait(timeout=WAIT_SLICE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        if reloads and not received:
            reloads.clear()
            say(f"spool up: SIGHUP: {reload_workers(socket_path, conf)}")
        while handled < len(received):
            handled += 1
            if handled == 1:
                programs = program_pids(socket_path, conf) if socket_path else []
                say(
                    "spool up: stopping; the workers finish their running tasks "
                    "(Ctrl-C again: put them back and stop now)"
                )
                proc.send_signal(signal.SIGTERM)
            elif handled == 2:
                say("spool up: stopping now; running tasks go back to their queues")
                # (asked again: the first answer may be missing, supervisord was starting)
                programs = (program_pids(socket_path, conf) if socket_path else []) or programs
                stop_workers_now(programs)
            else:
                say("spool up: killing supervisord and the workers")
                signal_all([pid for _, pid in programs], signal.SIGKILL)
                proc.kill()


def stop_workers_now(programs: list[tuple[str, int]]) -> None:
    """QUIT each worker: it stops its attempt and puts the task back. An operator's own layout
    without a spool-worker program gets a second TERM, which its workers take the same way."""
    workers = [pid for group, pid in programs if group == PROGRAM]
    if workers:
        signal_all(workers, signal.SIGQUIT)
    else:
        signal_all([pid for _, pid in programs], signal.SIGTERM)


@contextlib.contextmanager
def supervisor_rpc(socket_path: Path, conf: Path) -> Iterator[Any]:
    """supervisord's XML-RPC interface over its unix socket, with the name and password of
    `conf` (calls raise OSError or xmlrpc.client.Error when it does not answer)."""
    from supervisor.xmlrpc import SupervisorTransport

    username, password = socket_credentials(conf)
    transport = SupervisorTransport(username, password, f"unix://{socket_path}")
    proxy = xmlrpc.client.ServerProxy("http://localhost", transport=transport)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(RPC_TIMEOUT_SECONDS)
    try:
        yield proxy.supervisor
    finally:
        socket.setdefaulttimeout(previous)
        transport.close()


def program_pids(socket_path: Path, conf: Path) -> list[tuple[str, int]]:
    """(group, pid) of supervisord's running programs, asked over its socket ([] if it does not
    answer)."""
    try:
        with supervisor_rpc(socket_path, conf) as rpc:
            infos = cast(list[dict[str, Any]], rpc.getAllProcessInfo())
    except (OSError, xmlrpc.client.Error):
        return []
    return [(str(info.get("group")), int(info["pid"])) for info in infos if info.get("pid")]


def reload_workers(socket_path: Path | None, conf: Path) -> str:
    """SIGHUP to the worker programs only (as `supervisorctl signal HUP spool-worker:*`);
    say what happened."""
    if socket_path is None:
        return "no control socket in the config: run `spool reload` to reload the workers"
    try:
        with supervisor_rpc(socket_path, conf) as rpc:
            rpc.signalProcessGroup(PROGRAM, "HUP")
    except (OSError, xmlrpc.client.Error) as exc:
        return f"cannot signal the workers ({exc}): run `spool reload`"
    return "the workers reload their task code after their running tasks"


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def term_when_parent_dies() -> Callable[[], None] | None:
    """A preexec_fn (Linux): supervisord gets SIGTERM, and shuts down in order, if we die."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # `spool up` died before the prctl
            os._exit(1)

    return preexec
