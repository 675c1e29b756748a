"""Where mlxrouter keeps its files, from platformdirs; each can be moved by an environment
variable so tests and service installs can point the daemon elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "mlxrouter"


@dataclass(frozen=True, slots=True)
class Paths:
    config_file: Path
    data_dir: Path
    models_dir: Path  # converted GGUFs and the demo model; always scanned as a model folder
    log_dir: Path
    cache_dir: Path

    @property
    def prompt_cache_dir(self) -> Path:
        """Prompt (KV) caches kept on disk (`pool.disk_cache_bytes`)."""
        return self.cache_dir / "prompt-cache"


def _env_path(name: str, default: str) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else Path(default)


def default_paths() -> Paths:
    """Resolve the paths now (not at import), so environment changes are honoured."""
    config_dir = _env_path("MLXROUTER_CONFIG_DIR", platformdirs.user_config_dir(APP_NAME))
    data_dir = _env_path("MLXROUTER_DATA_DIR", platformdirs.user_data_dir(APP_NAME))
    return Paths(
        config_file=config_dir / "config.yaml",
        data_dir=data_dir,
        models_dir=data_dir / "models",
        log_dir=_env_path("MLXROUTER_LOG_DIR", platformdirs.user_log_dir(APP_NAME)),
        cache_dir=_env_path("MLXROUTER_CACHE_DIR", platformdirs.user_cache_dir(APP_NAME)),
    )


def hf_hub_cache() -> Path:
    """The hub cache folder, resolved the way huggingface_hub does, but at call time
    (huggingface_hub reads its environment once at import)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"
