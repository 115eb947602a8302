"""Property: whatever mix of files lands in incoming/, one burst worker settles every one of them.

Runnable task files end in done/, everything else in failed/ with a rejection note; none is
lost, none is left in incoming/ or processing/, and the worker exits 0.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import drop_into, names, run_burst

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)

VALID_TASKS = st.one_of(
    st.builds(lambda x: {"task": "echo", "args": [x]}, JSON_VALUES),
    st.builds(
        lambda a, b: {"task": "add", "args": [a, b]},
        st.integers(-(10**9), 10**9),
        st.integers(-(10**9), 10**9),
    ),
    st.just({"task": "noop"}),
    st.builds(lambda x: {"task": "echo", "kwargs": {"x": x}}, JSON_VALUES),
).flatmap(
    lambda task: st.builds(
        lambda priority: {**task, "priority": priority} if priority is not None else task,
        st.none() | st.integers(0, 9),
    )
)

WRONG_FIELDS = st.sampled_from(
    [
        ("args", "not a list"),
        ("args", {"a": 1}),
        ("kwargs", [1, 2]),
        ("kwargs", "x"),
        ("priority", 10),
        ("priority", -1),
        ("priority", "1"),
        ("priority", 1.5),
        ("priority", True),
        ("id", "../x"),
        ("id", ""),
        ("id", 7),
        ("max_retries", -1),
        ("max_retries", "3"),
        ("timeout", 0),
        ("timeout", -2),
        ("timeout", "soon"),
        ("delay", -1),
        ("not_before", "tomorrow-ish"),
        ("unique_key", ""),
        ("history", {}),
    ]
)


def encode(obj: object) -> bytes:
    return json.dumps(obj).encode()


INVALID_FILES = st.one_of(
    st.binary(max_size=64),
    JSON_VALUES.filter(lambda v: not (isinstance(v, dict) and "task" in v)).map(encode),
    st.builds(lambda task, wrong: encode({**task, wrong[0]: wrong[1]}), VALID_TASKS, WRONG_FIELDS),
    st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
    .filter(lambda name: name not in {"echo", "add", "noop", "record", "fail"})
    .map(lambda name: encode({"task": f"unknown_{name}"})),
    st.sampled_from([b"", b"{", b"\xff\xfe{}", b"[]", b'"echo"', b"NaN", b'{"task": ""}']),
)

FILES = st.lists(
    st.one_of(
        VALID_TASKS.map(lambda task: (True, encode(task))),
        INVALID_FILES.map(lambda data: (False, data)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=FILES)
def test_a_burst_worker_settles_every_dropped_file_in_done_or_failed(
    files: list[tuple[bool, bytes]],
) -> None:
    with tempfile.TemporaryDirectory(prefix="spool-property-") as tmp:
        root = Path(tmp) / "spool"
        queue = root / "default"
        (queue / "incoming").mkdir(parents=True)
        for number, (_, data) in enumerate(files):
            drop_into(queue / "incoming", f"file-{number:02d}.json", data)

        result = run_burst(root)

        assert result.returncode == 0, result.stderr
        valid = {f"file-{n:02d}.json" for n, (ok, _) in enumerate(files) if ok}
        invalid = {f"file-{n:02d}.json" for n, (ok, _) in enumerate(files) if not ok}
        failed = names(queue / "failed")
        assert set(names(queue / "done")) == valid
        assert {n for n in failed if not n.endswith(".error.json")} == invalid
        assert {n for n in failed if n.endswith(".error.json")} == {
            n.removesuffix(".json") + ".error.json" for n in invalid
        }
        for n, (ok, data) in enumerate(files):
            if not ok:
                assert (queue / "failed" / f"file-{n:02d}.json").read_bytes() == data
        for state in ("incoming", "delayed", "processing"):
            assert names(queue / state) == [], state
