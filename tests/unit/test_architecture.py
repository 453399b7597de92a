"""The shape of the code: imports point one way, down the flow of a series (docs/architecture.md).

Read from the source with :mod:`ast` (every ``import``, at any depth, type-checking blocks included),
so a module that is never imported by a test is checked too. The layers below are the picture in
docs/architecture.md; a module may import its own layer and the layers below it, never above.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("config",),
    ("common",),
    ("spool",),
    ("gateway", "worker"),  # the two sides of the spool: neither imports the other (below)
    ("batch",),  # whole folders offline, on the worker's pipeline
    ("training",),
    ("evaluation",),
    ("pediface",),  # the CLI, at the very top, imported by nothing
)
"""Top-level packages from the ground floor up."""

WORKER_FLOW: tuple[str, ...] = (
    "worker.types",
    "worker.grid",
    "worker.csa",
    "worker.volume",
    "worker.deface",
    "worker.qc",
    "worker.render",
    "worker.facecheck",
    "worker.writer",
    "worker.deid",
    "worker.segmentation",
    "worker.delivery",
    "worker.pipeline",
    "worker.steps",
    "worker.jobs",
    "worker.app",
    "worker.sample",
)
"""The worker's modules in the order of the flow: a module imports only those before it."""

HEAVY = ("torch", "nnunetv2", "SimpleITK", "dynamic_network_architectures", "cv2", "numpy")
"""What the gateway (and what it stands on) must never load: the slim image has none of them."""

PACKAGES = tuple(p for layer in LAYERS for p in layer)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names), with the line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # ``from worker import steps`` imports the module worker.steps
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _layer(module: str) -> int | None:
    top = module.split(".")[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    return None


def _flow_position(module: str) -> int | None:
    for index, prefix in enumerate(WORKER_FLOW):
        if module == prefix or module.startswith(prefix + "."):
            return index
    return None


def upward_imports(modules: dict[str, Path]) -> list[str]:
    """Every import that runs back up, as ``file:line: importer -> imported (why)``."""
    problems = []
    for name, path in modules.items():
        mine = _layer(name)
        for line, imported in _imports(path):
            theirs = _layer(imported)
            if imported not in modules and imported.rsplit(".", 1)[0] not in modules:
                continue  # a third-party module, or a name imported from a module
            shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
            where = f"{shown}:{line}: {name} -> {imported}"
            if theirs is not None and mine is not None and theirs > mine:
                problems.append(f"{where} (layer {LAYERS[theirs]} is above {LAYERS[mine]})")
            elif {name.split(".")[0], imported.split(".")[0]} == {"gateway", "worker"}:
                problems.append(f"{where} (the gateway and the worker only meet in the spool)")
            elif name.startswith("worker") and imported.startswith("worker"):
                a, b = _flow_position(name), _flow_position(imported)
                if a is not None and b is not None and b > a:
                    problems.append(f"{where} ({WORKER_FLOW[b]} comes after {WORKER_FLOW[a]} in the flow)")
    return problems


def test_every_package_has_a_layer() -> None:
    tops = {
        p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name not in ("tests", "bench")
    }
    assert tops == set(PACKAGES), "a new top-level package needs its place in LAYERS and docs/architecture.md"
    worker = {n for n in _modules() if n.startswith("worker.")}
    unplaced = sorted(n for n in worker if _flow_position(n) is None)
    assert not unplaced, f"worker modules without a place in WORKER_FLOW: {unplaced}"


def test_no_import_runs_back_up() -> None:
    problems = upward_imports(_modules())
    assert not problems, "imports that run back up the flow:\n" + "\n".join(problems)


def test_a_reintroduced_upward_import_is_caught(tmp_path: Path) -> None:
    """The check itself can fail: an import of the CLI from the spool, and of the worker's
    masker from the gateway, are both reported."""
    modules = _modules()
    spool = tmp_path / "spool_store.py"
    spool.write_text("from pediface.cli import app\n")
    gateway = tmp_path / "gateway_scp.py"
    gateway.write_text("def f():\n    from worker.deface.nnunet import NnUNetMasker\n")
    qc = tmp_path / "worker_qc.py"
    qc.write_text("from worker.jobs import JobRunner\n")
    problems = upward_imports({**modules, "spool.store": spool, "gateway.scp": gateway, "worker.qc": qc})
    assert any("spool.store -> pediface.cli" in p for p in problems)
    assert any("gateway.scp -> worker.deface.nnunet" in p for p in problems)
    assert any("worker.qc -> worker.jobs" in p for p in problems)


def heavy_imports(modules: dict[str, Path], package: str) -> list[str]:
    """``path:line: module`` of every import of a :data:`HEAVY` library by a module of ``package``."""
    heavy = []
    for name, path in modules.items():
        if name.split(".")[0] != package:
            continue
        for line, imported in _imports(path):
            if imported.split(".")[0] in HEAVY:
                heavy.append(f"{path.name}:{line}: {imported}")
    return heavy


@pytest.mark.parametrize("package", ["config", "common", "spool", "gateway"])
def test_the_serving_edge_never_imports_heavy_libraries(package: str) -> None:
    heavy = heavy_imports(_modules(), package)
    assert not heavy, f"{package} must stay light (the gateway image has no torch):\n" + "\n".join(heavy)


def test_a_heavy_import_in_the_gateway_is_caught(tmp_path: Path) -> None:
    """The check itself can fail: torch imported at the top of the SCP module and nnunetv2 inside a
    function of the console are both reported."""
    scp = tmp_path / "scp.py"
    scp.write_text("import torch\n")
    console = tmp_path / "console.py"
    console.write_text("def f():\n    from nnunetv2.inference import predict_from_raw_data\n")
    modules = {**_modules(), "gateway.scp": scp, "gateway.console": console}
    assert sorted(heavy_imports(modules, "gateway")) == [
        "console.py:2: nnunetv2.inference",
        "console.py:2: nnunetv2.inference.predict_from_raw_data",  # a from-import names both
        "scp.py:1: torch",
    ]


def test_docs_architecture_draws_these_layers() -> None:
    """docs/architecture.md shows the same layers and worker order as this test enforces."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawn: dict[int, list[str]] = {}
    for number, rest in re.findall(r"^layer (\d+)\s+(.*)$", text, flags=re.M):
        drawn[int(number)] = re.findall(r"\b([a-z]+)/", rest)
    assert [tuple(drawn[n]) for n in sorted(drawn)] == list(LAYERS)
    flow = re.search(r"```\n(worker\.types .*?)\n```", text, flags=re.S)
    assert flow is not None, "the worker's order is drawn in docs/architecture.md"
    assert tuple(re.findall(r"worker\.[a-z_]+", flow.group(1))) == WORKER_FLOW


def test_dlib_is_imported_by_the_face_check_only() -> None:
    """The face detector's library stays out of everything but worker.facecheck (the gateway image, the
    evaluation, the CLI reach it through that module)."""
    importers = sorted(
        name for name, path in _modules().items() if any(m.split(".")[0] == "dlib" for _, m in _imports(path))
    )
    assert importers == ["worker.facecheck"]
