"""The layers of docs/architecture.md hold: a module imports only from its own layer or the
layers below it (function-level imports count), except for the exceptions listed there.

The queue's core is the modules at the top of `spool/`, in layers of their own; each
subpackage is one layer."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import PROJECT_DIR

PACKAGE = PROJECT_DIR / "spool"
LAYERS = [  # bottom first, as in docs/architecture.md
    ("bottom", "errors tables signals logs"),
    ("the disk", "layout fsio envelope faults mounts"),
    ("settings", "config notify_config"),
    ("way in", "producer unique manifest signature registry chain"),
    ("way through", "worker dispatch handover attempt queues claim claimed workers index watch "
     "execute channel child output "
     "context taskcode recorder commit decision finish conclude recovery lease cluster settle "
     "retention "
     "events stats counts manage lookup reload eager workflows"),
    ("read side", "inspect"),
    ("deploy", "deploy"),
    ("services", "services"),
    ("facade", "app"),
    ("front doors", "web"),
    ("command line", "cli __init__ __main__"),
]  # fmt: skip
# (read side, deploy and services are one level: none of them imports another's modules)
RANK = {"read side": 5, "deploy": 5, "services": 5, "facade": 6, "front doors": 7}
RANK["command line"] = 8
KNOWN_EXCEPTIONS = {  # docs/architecture.md, "Known exceptions": (module, the one it imports)
    ("registry", "app"),
}


def layer_of() -> dict[str, tuple[int, str]]:
    found = {}
    for position, (name, modules) in enumerate(LAYERS):
        for module in modules.split():
            found[module] = (RANK.get(name, position), name)
    return found


def module_name(path: Path) -> str:
    """`listing` for spool/inspect/listing.py is `inspect.listing`; a package is its name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def spool_imports(path: Path) -> set[str]:
    """The spool modules `path` imports, named as module_name names them."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spool"):
            inside = node.module.split(".")[1:]
            if inside:
                names.add(".".join(inside))
            else:
                names |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name[6:] for a in node.names if a.name.startswith("spool.")}
    return names - {"__version__"}


def layer_named(module: str, layers: dict[str, tuple[int, str]]) -> tuple[int, str]:
    """A subpackage's modules are its layer; a core module has its own entry."""
    return layers[module.split(".")[0]]


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    layers = layer_of()
    missing = {m for m in map(module_name, modules()) if m.split(".")[0] not in layers}
    assert missing == set(), "add the new module to docs/architecture.md"


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    layers = layer_of()
    upward = []
    for path in modules():
        module = module_name(path)
        rank, name = layer_named(module, layers)
        for imported in spool_imports(path):
            their_rank, their_name = layer_named(imported, layers)
            side_by_side = their_rank == rank == RANK["read side"] and their_name != name
            if (their_rank > rank or side_by_side) and (
                module,
                imported,
            ) not in KNOWN_EXCEPTIONS:
                upward.append(f"{module} ({name}) imports {imported} ({their_name})")
    assert upward == []


def test_the_core_stays_at_the_top_and_the_rest_is_in_rooms() -> None:
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages >= {"cli", "deploy", "inspect", "services", "web", "workflows"}
    assert not (PACKAGE / "listing.py").exists() and (PACKAGE / "worker.py").exists()


def test_no_module_is_over_400_lines() -> None:
    # (a module near 400 lines usually holds two concepts: split it along the line between them)
    long = {module_name(p): n for p in modules() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_every_known_exception_is_still_needed() -> None:
    found = {(module_name(p), i) for p in modules() for i in spool_imports(p)}
    assert KNOWN_EXCEPTIONS - found == set(), "remove it here and in docs/architecture.md"
