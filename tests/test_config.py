from __future__ import annotations

from pathlib import Path

import pytest

from mlxrouter.config import Config, load_config, parse_config
from mlxrouter.errors import ConfigError
from mlxrouter.units import ByteSize, Duration, MemoryLimit


def test_defaults_match_the_documented_ones() -> None:
    config = parse_config("")
    assert config.host == "127.0.0.1"
    assert config.port == 8080
    assert config.hf_cache is True
    assert config.model_dirs == []
    assert config.pool.max_models == 2
    assert config.pool.max_memory is None
    assert config.pool.idle_ttl == Duration.FOREVER and config.pool.idle_ttl.forever
    assert config.api_key is None


def test_full_config_parses(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        """
host: 0.0.0.0
port: 9000
hf_cache: /somewhere/hub
model_dirs: [~/models]
models:
  fast: {model: org/name}
  mine: {path: /models/mine, pinned: true, ttl: 10m}
default_model: fast
pool: {max_models: 3, max_memory: 60%, idle_ttl: 300}
api_key: secret
"""
    )
    config = load_config(path)
    assert config.port == 9000
    assert config.hf_cache_dir() == Path("/somewhere/hub")
    assert config.models["mine"].pinned is True
    assert config.pool.max_memory == MemoryLimit(share=0.6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus: 1", "unknown field `bogus`"),
        ("pool: {bogus: 1}", "`pool`: Object contains unknown field `bogus`"),
        ("port: eighty", "`port`: Expected `int`, got `str`"),
        ("pool: {max_models: 0}", "`pool.max_models`"),
        ("model_dirs: /one/folder", "`model_dirs`"),
        ("pool: {max_memory: 8QB}", "`pool.max_memory`"),
        ("pool: {idle_ttl: soon}", "`pool.idle_ttl`"),
        ("models: {x: {path: /a, model: b}}", "`models.x` takes `path` or `model`, not both"),
        ("models: {x: {path: /a, colour: red}}", "unknown field `colour`"),
        ("- just\n- a list", "top level must be a mapping"),
    ],
)
def test_bad_config_names_the_key_and_the_file(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="my.yaml")
    assert str(info.value).startswith("my.yaml")
    assert expected in str(info.value)


def test_invalid_yaml_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"my\.yaml, line 3: mapping values"):
        parse_config("host: a\nport: 1\nbad: key: here\n", source="my.yaml")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_no_file_means_defaults() -> None:
    assert load_config(None) == Config()


def test_hf_cache_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert parse_config("").hf_cache_dir() == tmp_path / "hub"
    assert parse_config("hf_cache: false").hf_cache_dir() is None


def test_models_data_dir_is_always_scanned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLXROUTER_DATA_DIR", str(tmp_path))
    dirs = parse_config("model_dirs: [/a]").model_dir_paths()
    assert dirs == [Path("/a"), tmp_path / "models"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (123, 123),
        ("8GB", 8 * 10**9),
        ("8GiB", 8 * 2**30),
        ("512MiB", 512 * 2**20),
        ("1.5g", 1_500_000_000),
    ],
)
def test_parse_bytes(value: str | int, expected: int) -> None:
    assert ByteSize.parse(value) == expected


def test_memory_limit_bytes_or_a_share_of_memory() -> None:
    assert MemoryLimit.parse("60%").resolve(1000) == 600
    assert MemoryLimit.parse("60%").resolve(None) is None  # the machine's size is unknown
    assert MemoryLimit.parse("1KiB").resolve(1000) == 1024
    with pytest.raises(ValueError, match="share"):
        MemoryLimit.parse("150%")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, 30.0),
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        (-1, Duration.FOREVER),
        ("-1", Duration.FOREVER),
        ("forever", Duration.FOREVER),
    ],
)
def test_parse_duration(value: str | float, expected: float) -> None:
    assert Duration.parse(value) == expected


def test_sizes_and_durations_are_decoded_once_into_typed_values() -> None:
    config = parse_config(
        "pool: {max_memory: 8GiB, idle_ttl: 10m, prompt_cache_bytes: 1MiB}\n"
        "models: {a: {path: /a, ttl: forever}, b: {path: /b, ttl: 30}}\n"
    )
    assert config.pool.max_memory == MemoryLimit(nbytes=8 * 2**30)
    assert isinstance(config.pool.idle_ttl, Duration) and config.pool.idle_ttl == 600
    assert isinstance(config.pool.prompt_cache_bytes, ByteSize)
    assert config.pool.prompt_cache_bytes == 2**20
    assert config.models["a"].ttl == Duration.FOREVER
    assert config.models["b"].ttl == 30
    assert parse_config("pool: {idle_ttl: null}").pool.idle_ttl.forever
