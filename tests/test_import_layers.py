"""The import graph points down: every ``tunery`` package imports only packages in layers below
its own, so there is no arrow back up and no cycle between packages. A new package must be placed
in ``LAYERS`` (the test names it otherwise) — deciding where it sits is the point."""

from __future__ import annotations

import ast
from pathlib import Path

import tunery

SRC = Path(tunery.__file__).parent

# Bottom to top. A package may import its own modules and any package in a lower layer.
LAYERS: list[set[str]] = [
    {"tunery", "errors", "checksums", "settings", "lifetime"},  # "tunery": the package root (__version__)
    {"logs", "datasets", "models", "storage", "quickstart", "graders", "outbound"},
    {"training"},
    {"jobspec"},  # what a job is asked to do; it knows the training config it turns into
    {"store"},
    {"queue"},
    {"jobs", "inference"},
    {"worker", "api"},
    {"web"},
    {"app"},
    {"cli"},
]
# Training runs as a plain script on a GPU box: it knows nothing of the service around it. Inference
# is its own process: the API resolves names in the store and hands it plain references.
ONLY: dict[str, set[str]] = {"training": {"tunery", "errors", "datasets", "models", "graders"},
                             # datasets: images in chat requests are decoded and checked as dataset images are
                             "inference": {"tunery", "errors", "settings", "lifetime", "logs", "models", "storage",
                                           "training", "datasets"},
                             "graders": {"tunery"}}
# The inference core (continuous batching over a model object the caller holds) imports nothing of
# tunery but itself, so training's GRPO recipe samples through it in-process although the inference
# package as a whole (its engine) sits above training.
INFERENCE_CORE = {"tunery.inference.scheduler", "tunery.inference.sampling", "tunery.inference.batch",
                  "tunery.inference.detokenize"}


def _package(module_path: Path) -> str:
    return module_path.relative_to(SRC).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(imported tunery module, line)`` for every import in ``path``, function-local ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "tunery" else [node.module]
            found += [(n, node.lineno) for n in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
    return [(name, line) for name, line in found if name == "tunery" or name.startswith("tunery.")]


def _target_package(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "tunery"
    return parts[1] if (SRC / parts[1]).is_dir() or (SRC / f"{parts[1]}.py").exists() else "tunery"


def _layer_of() -> dict[str, int]:
    return {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _edges() -> list[tuple[str, str, str]]:
    """``(from package, to package, where)`` for every import between two different packages."""
    edges = []
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" in path.parts:
            continue  # Alembic scripts import the tables by design and are never imported
        pkg = _package(path)
        for module, line in _imports(path):
            target = _target_package(module)
            if target != pkg and module not in INFERENCE_CORE:
                edges.append((pkg, target, f"{path.relative_to(SRC.parent)}:{line} imports {module}"))
    return edges


def test_every_package_has_a_layer() -> None:
    layer = _layer_of()
    packages = {_package(p) for p in SRC.rglob("*.py")} - {"__init__"} | {"tunery"}
    assert sorted(packages - layer.keys()) == []


def test_imports_only_point_down() -> None:
    layer = _layer_of()
    upward = [where for src, dst, where in _edges() if layer[dst] >= layer[src]]
    assert upward == []


def test_training_imports_nothing_of_the_service() -> None:
    bad = [where for src, dst, where in _edges() if src in ONLY and dst not in ONLY[src]]
    assert bad == []


def test_the_inference_core_imports_only_itself() -> None:
    core = [SRC / "inference" / f"{m.rsplit('.', 1)[1]}.py" for m in INFERENCE_CORE]
    bad = [f"{path.name}:{line} imports {module}" for path in core for module, line in _imports(path)
           if module not in INFERENCE_CORE and module != "tunery.inference"]
    assert bad == []


def test_route_modules_are_only_mounted_never_imported() -> None:
    """Domain operations live below HTTP (``tunery.jobs``); nothing reaches into a route module."""
    bad = [where for path in SRC.rglob("*.py") for module, line in _imports(path)
           if module.startswith("tunery.api.routes") and path.relative_to(SRC).parts[:2] not in
           {("api", "app.py"), ("api", "routes")}
           for where in [f"{path.relative_to(SRC.parent)}:{line} imports {module}"]]
    assert bad == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The parser finds imports wherever they are, function-local ones too."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tunery.api.app import install_api\n")
    assert _imports(module) == [("tunery.api.app", 2)]
