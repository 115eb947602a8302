"""The layers of docs/architecture.md hold: a module imports only from its own layer or the
layers below it (function-level imports count), except for the exceptions listed there."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import PROJECT_DIR

LAYERS = [  # bottom first, as in docs/architecture.md
    ("bottom", "errors config tables signals"),
    ("the disk", "layout fsio envelope faults mounts"),
    ("way in", "producer unique manifest signature registry"),
    ("way through", "worker queues claim claimed workers index watch execute taskcode "
     "recorder finish conclude recovery lease cluster settle retention events stats manage "
     "lookup"),
    ("read side", "listing paging status counts throughput metrics top logs"),
    ("deploy", "supervisor up doctor reload"),
    ("services", "scheduler schedule notify sinks notify_config mqtt_intake"),
    ("facade", "app"),
    ("front doors", "cli web webapi openapi __init__ __main__"),
]  # fmt: skip
# (read side, deploy and services are one level: none of them imports another's modules)
RANK = {"read side": 4, "deploy": 4, "services": 4, "facade": 5, "front doors": 6}
KNOWN_EXCEPTIONS = {  # docs/architecture.md, "Known exceptions"
    ("config", "notify_config"),
    ("registry", "app"),
    ("worker", "counts"),
    ("taskcode", "reload"),
}


def layer_of() -> dict[str, tuple[int, str]]:
    found = {}
    for position, (name, modules) in enumerate(LAYERS):
        for module in modules.split():
            found[module] = (RANK.get(name, position), name)
    return found


def spool_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spool"):
            parts = node.module.split(".")
            names |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("spool.")}
    return names - {"__version__"}


def test_every_module_has_a_layer() -> None:
    modules = {p.stem for p in (PROJECT_DIR / "spool").glob("*.py")}
    assert modules - set(layer_of()) == set(), "add the new module to docs/architecture.md"


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    layers = layer_of()
    upward = []
    for path in sorted((PROJECT_DIR / "spool").glob("*.py")):
        rank, name = layers[path.stem]
        for imported in spool_imports(path):
            their_rank, their_name = layers[imported]
            same_level_other_group = their_rank == rank and their_name != name and rank == 4
            if (their_rank > rank or same_level_other_group) and (
                path.stem,
                imported,
            ) not in KNOWN_EXCEPTIONS:
                upward.append(f"{path.stem} ({name}) imports {imported} ({their_name})")
    assert upward == []
