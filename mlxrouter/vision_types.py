"""Which checkpoints are vision-language models, asked of mlx-vlm's own model registry without
importing it (importing mlx_vlm loads MLX and transformers, which only the engine's thread may
do, and takes seconds).

mlx-vlm resolves a config's `model_type` (after its `MODEL_REMAPPING` aliases, in
`mlx_vlm/utils.py`) to the package `mlx_vlm.models.<model_type>`. Recent mlx-vlm releases also
carry text-only families (llama, qwen2, ...), so a type counts as vision only when its
package's `ModelConfig` declares a `vision_config`. Both are read from the installed package's
source with `ast`: no list is copied here, and a new mlx-vlm release brings its new families.

Blocking (a directory listing and a few hundred small files, read once per process).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: what to install to serve vision models, in errors and listings
VISION_EXTRA = "mlxrouter[vision]"


def vision_installed() -> bool:
    """mlx-vlm can be imported (the `mlxrouter[vision]` extra is installed)."""
    return _package_dir() is not None


@functools.cache
def _package_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("mlx_vlm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def vision_model_types() -> frozenset[str]:
    """Every config `model_type` mlx-vlm serves as a vision-language model (lower case,
    aliases included); empty without mlx-vlm."""
    package = _package_dir()
    if package is None:
        return frozenset()
    models = package / "models"
    try:
        folders = sorted(p for p in models.iterdir() if (p / "__init__.py").is_file())
    except OSError as exc:
        log.warning("cannot list mlx-vlm's models: %s", exc)
        return frozenset()
    vision = {folder.name for folder in folders if _declares_vision(folder / "config.py")}
    aliases = _remapping(package / "utils.py")
    vision |= {alias for alias, target in aliases.items() if target in vision}
    return frozenset(vision)


def _declares_vision(config_py: Path) -> bool:
    """The module's `ModelConfig` has a `vision_config` field."""
    tree = _parse(config_py)
    if tree is None:
        return False
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "ModelConfig":
            return any(
                isinstance(item, ast.AnnAssign)
                and isinstance(item.target, ast.Name)
                and item.target.id == "vision_config"
                for item in node.body
            )
    return False


def _remapping(utils_py: Path) -> dict[str, str]:
    """mlx-vlm's `MODEL_REMAPPING` literal: alias model_type -> package name."""
    tree = _parse(utils_py)
    for node in tree.body if tree is not None else []:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "MODEL_REMAPPING" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in value.items()}
    return {}


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
