"""The multi-host test bed (tests/hostbed.py) behaves like hosts sharing a network file system:
one shared namespace of files, atomic renames at the server, host-local locks, dead hosts and
partitioned hosts, and stale client caches when caching is on."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import wait_until
from tests.hostbed import HostBed, mount_layers

StartBed = Callable[..., HostBed]

RENAMER = """
import json, os, sys
directory, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # start together; host B goes backwards, so they meet midway
won = []
for n in range(count) if tag == "a" else reversed(range(count)):
    try:
        os.rename(f"{directory}/f{n:03}", f"{directory}/{tag}{n:03}")
    except FileNotFoundError:
        continue
    won.append(n)
print(json.dumps(won))
"""

TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(3)
"""


def assert_cleaned_up(bed: HostBed) -> None:
    """No namespace, mount or process of the bed is left."""
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert bed.tag not in namespaces
    for i in range(bed.hosts):
        assert mount_layers(bed.mount(i)) == []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert bed.tag.encode() not in cmdline, cmdline


def test_files_and_renames_are_shared(hostbed: StartBed) -> None:
    bed = hostbed()
    a, b = bed.mount(0) / "shared", bed.mount(1) / "shared"
    a.mkdir()
    (a / "hello").write_text("from A")
    assert "hello" in os.listdir(b)
    assert (b / "hello").read_text() == "from A"
    assert (bed.export / "shared" / "hello").read_text() == "from A"

    count = 200
    for n in range(count):
        (a / f"f{n:03}").write_text(str(n))
    racers = [
        bed.spawn(
            i,
            [sys.executable, "-c", RENAMER, str(directory), tag, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, directory, tag in [(0, a, "a"), (1, b, "b")]
    ]
    for racer in racers:
        assert racer.stdout is not None
        assert racer.stdout.readline() == "ready\n"
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    outputs = [racer.communicate(timeout=60)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0]
    won_a, won_b = (set(json.loads(output)) for output in outputs)
    print(f"rename race: host A won {len(won_a)}, host B won {len(won_b)}")
    assert not won_a & won_b
    assert won_a | won_b == set(range(count))
    assert won_a and won_b
    left = sorted(os.listdir(bed.export / "shared"))
    assert left == sorted(["hello"] + [f"{'a' if n in won_a else 'b'}{n:03}" for n in range(count)])
    assert all((b / f"a{n:03}").read_text() == str(n) for n in won_a)


def test_inotify_sees_only_the_local_host(hostbed: StartBed) -> None:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver

    bed = hostbed()
    (bed.mount(0) / "watched").mkdir()
    seen: dict[int, list[str]] = {0: [], 1: []}

    class Handler(FileSystemEventHandler):
        def __init__(self, host: int) -> None:
            self.host = host

        def on_created(self, event: FileSystemEvent) -> None:
            seen[self.host].append(os.path.basename(str(event.src_path)))

    observer = InotifyObserver()
    for i in (0, 1):
        observer.schedule(Handler(i), str(bed.mount(i) / "watched"))
    observer.start()
    try:
        (bed.mount(0) / "watched" / "new").write_text("x")
        wait_until(lambda: "new" in seen[0], timeout=10)
        assert (bed.mount(1) / "watched" / "new").read_text() == "x"
        time.sleep(1)
        assert seen[1] == []  # host B's watch never fires for host A's change
    finally:
        observer.stop()
        observer.join(10)


def test_locks_are_host_local(hostbed: StartBed) -> None:
    bed = hostbed()
    (bed.mount(0) / "lock").write_text("")
    fd_a = os.open(bed.mount(0) / "lock", os.O_RDWR)
    fd_b = os.open(bed.mount(1) / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd_a, fcntl.LOCK_EX)
        # another host's lock on the same file does not conflict: no cross-mount locking
        fcntl.flock(fd_b, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # another process on the same host does conflict
        same_host = bed.spawn(0, [sys.executable, "-c", TRY_LOCK, str(bed.mount(0) / "lock")])
        assert same_host.wait(timeout=30) == 3
        fcntl.flock(fd_a, fcntl.LOCK_UN)
        again = bed.spawn(0, [sys.executable, "-c", TRY_LOCK, str(bed.mount(0) / "lock")])
        assert again.wait(timeout=30) == 0
    finally:
        os.close(fd_a)
        os.close(fd_b)


def test_a_killed_host_is_dead_and_the_others_live_on(hostbed: StartBed) -> None:
    bed = hostbed()
    a, b = bed.mount(0), bed.mount(1)
    appender = "import sys\nwhile True:\n    with open(sys.argv[1], 'a') as f: f.write('x')"
    writer = bed.spawn(
        0, [sys.executable, "-c", appender, str(a / "log")], stderr=subprocess.DEVNULL
    )
    wait_until(lambda: (b / "log").exists() and (b / "log").stat().st_size > 0)
    started = time.monotonic()
    bed.kill_host(0)
    print(f"kill_host took {time.monotonic() - started:.3f} s")
    assert writer.poll() == -9

    def dead() -> bool:
        try:
            os.listdir(a)
        except OSError as exc:
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED), exc
            return True
        return not bed.mounted(0)

    wait_until(dead, timeout=5)
    size = (b / "log").stat().st_size
    time.sleep(0.2)
    assert (b / "log").stat().st_size == size  # nothing writes any more
    (b / "after").write_text("B lives")
    assert (bed.export / "after").read_text() == "B lives"

    bed.stop()
    bed.stop()  # idempotent
    assert_cleaned_up(bed)


def test_a_partitioned_host_hangs_and_recovers_when_healed(hostbed: StartBed) -> None:
    bed = hostbed()
    a, b = bed.mount(0), bed.mount(1)
    result: dict[str, object] = {}

    def stat_on_a() -> None:
        try:
            os.stat(a / ".hostbed")
            result["ok"] = time.monotonic() - started
        except OSError as exc:
            result["error"] = exc

    bed.partition(0)
    started = time.monotonic()
    thread = threading.Thread(target=stat_on_a, daemon=True)
    thread.start()
    thread.join(1.5)
    assert thread.is_alive(), result  # hangs, like a hard NFS mount
    (b / "during").write_text("B works")  # the other host is not affected
    assert (bed.export / "during").read_text() == "B works"
    time.sleep(max(0.0, started + 3 - time.monotonic()))
    bed.heal(0)
    healed = time.monotonic() - started
    thread.join(30)
    assert not thread.is_alive()
    assert "ok" in result, result
    print(
        f"partition: healed after {healed:.2f} s, the hung stat returned after {result['ok']:.2f} s"
    )
    (a / "after").write_text("A again")
    assert (b / "after").read_text() == "A again"
    assert bed.mounted(0)


def test_caching_client_sees_stale_listings(hostbed: StartBed) -> None:
    bed = hostbed(cache=True)
    a, b = bed.mount(0) / "dir", bed.mount(1) / "dir"
    a.mkdir()
    wait_until(b.is_dir, timeout=30)
    assert os.listdir(b) == []  # B now caches an empty listing
    (a / "new").write_text("x")
    created = time.monotonic()
    seen_by_name = None
    while "new" not in os.listdir(b):
        if seen_by_name is None and (b / "new").exists():
            seen_by_name = time.monotonic() - created
        assert time.monotonic() - created < 45, "listing never refreshed"
        time.sleep(0.05)
    stale = time.monotonic() - created
    by_name = "never" if seen_by_name is None else f"after {seen_by_name:.3f} s"
    print(
        f"cache=True: B's listing was stale for {stale:.2f} s; a lookup by name found it {by_name}"
    )
    assert (b / "new").read_text() == "x"
