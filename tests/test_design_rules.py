"""DESIGN.md's import rules, checked on the source (every import, lazy ones included) and in a
fresh interpreter, so the walls hold in effect and not only in prose."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "mlxrouter"

#: the only modules that may import mlx or mlx_lm (MLX work happens on the engine's thread;
#: the GGUF converter runs in the CLI's process)
MLX_MODULES = {
    "mlxrouter.engine.engine",
    "mlxrouter.engine.admission",
    "mlxrouter.engine.disk_cache",
    "mlxrouter.engine.loading",
    "mlxrouter.engine.sampling",
    "mlxrouter.engine.output",
    "mlxrouter.engine.constrain",
    "mlxrouter.engine.prefix",
    "mlxrouter.engine.solo",
    "mlxrouter.engine.embedding",
    "mlxrouter.engine.bert",
    "mlxrouter.engine.vision",
}
MLX_PACKAGES = ("mlxrouter.gguf",)

#: module -> project modules it must never import (prefix match)
FORBIDDEN = {
    "mlxrouter.config": ("mlxrouter.pool", "mlxrouter.engine", "mlxrouter.api"),
    "mlxrouter.registry": ("mlxrouter.pool", "mlxrouter.engine", "mlxrouter.api"),
    "mlxrouter.discovery": ("mlxrouter.pool", "mlxrouter.engine", "mlxrouter.api"),
    "mlxrouter.service": ("mlxrouter.api", "mlxrouter.engine"),
    "mlxrouter.status": ("mlxrouter.api", "mlxrouter.engine", "mlxrouter.pool"),
    "mlxrouter.daemon": ("mlxrouter.api",),
    "mlxrouter.images": ("mlxrouter.api", "mlxrouter.daemon", "mlxrouter.pool"),
    "mlxrouter.activity": (
        "mlxrouter.api",
        "mlxrouter.daemon",
        "mlxrouter.engine",
        "mlxrouter.pool",
    ),
    "mlxrouter.pool": ("mlxrouter.api", "mlxrouter.daemon"),
    "mlxrouter.engine": ("mlxrouter.api", "mlxrouter.daemon", "mlxrouter.pool"),
    # remote upstreams: the forwarding client knows only the engine's vocabulary; the health
    # loop feeds the registry, and neither knows the daemon or HTTP serving
    "mlxrouter.remote": ("mlxrouter.api", "mlxrouter.daemon", "mlxrouter.pool"),
    "mlxrouter.upstreams": ("mlxrouter.api", "mlxrouter.daemon"),
    # worker groups: processes and the pool's loader protocol; no MLX (the ranks import it)
    "mlxrouter.distributed": ("mlxrouter.api", "mlxrouter.daemon", "mlxrouter.engine.engine"),
}
#: pure modules: plain data in, plain data out; no other project module but these
PURE = {
    "mlxrouter.eviction": set(),
    "mlxrouter.units": set(),
    "mlxrouter.watcher": set(),
    "mlxrouter.discovery": {"mlxrouter.model_folder"},
    "mlxrouter.model_folder": set(),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, top-level or inside functions, made absolute."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            # `from . import x` imports the module x
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_rules_name_real_modules() -> None:
    named = [*MLX_MODULES, *FORBIDDEN, *PURE]
    assert all(any(_under(m, n) for m in MODULES) for n in named), "a rule names no module"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_engine_and_the_converter_import_mlx(module: str) -> None:
    mlx = {
        i
        for i in MODULES[module]
        if _under(i, "mlx") or _under(i, "mlx_lm") or _under(i, "mlx_vlm")
    }
    if module in MLX_MODULES or any(_under(module, p) for p in MLX_PACKAGES):
        return
    assert not mlx, f"{module} imports {sorted(mlx)}"


def test_only_the_vision_module_imports_mlx_vlm() -> None:
    """mlx-vlm (and the transformers processors it brings) loads only with a vision model."""
    importers = {m for m, imports in MODULES.items() if any(_under(i, "mlx_vlm") for i in imports)}
    assert importers == {"mlxrouter.engine.vision"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_walls_between_concerns(module: str) -> None:
    for owner, forbidden in FORBIDDEN.items():
        if not _under(module, owner):
            continue
        crossing = {i for i in MODULES[module] if any(_under(i, f) for f in forbidden)}
        assert not crossing, f"{module} imports {sorted(crossing)}"
    if module in PURE:
        project = {i for i in MODULES[module] if _under(i, "mlxrouter")}
        extra = {i for i in project if not any(_under(i, ok) for ok in PURE[module])}
        assert not extra, f"{module} should be pure but imports {sorted(extra)}"


def test_importing_the_server_side_does_not_load_mlx() -> None:
    """The pool, the daemon and the whole API import without MLX: only building an engine (a
    daemon) loads it."""
    code = (
        "import sys\n"
        "import mlxrouter.pool, mlxrouter.daemon, mlxrouter.api, mlxrouter.cli\n"
        "import mlxrouter.engine, mlxrouter.engine.types, mlxrouter.engine.bridge\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'mlx_vlm'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "", f"mlx modules loaded: {result.stdout.strip()}"
    # and the check can tell: touching the engine class loads mlx
    touched = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, mlxrouter.engine as e; e.Engine; print('mlx.core' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert touched.stdout.strip() == "True"
