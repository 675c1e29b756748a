"""Login service files (launchd plist, systemd user unit) and the install/uninstall commands,
driven through a fake service manager: nothing here touches the real launchctl or systemctl."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mlxrouter import service
from mlxrouter.errors import MlxRouterError
from mlxrouter.service import (
    LABEL,
    ServiceError,
    ServiceFile,
    install,
    is_managed,
    render,
    show,
    uninstall,
)

UID = os.getuid()
TARGET = f"gui/{UID}/{LABEL}"


class FakeManager:
    """Records every command and plays a tiny launchctl/systemctl: a job is loaded after
    bootstrap and gone after bootout. `fail` maps a command prefix to (exit, stderr)."""

    def __init__(self, *, loaded: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.loaded = loaded
        self.fail: dict[tuple[str, ...], tuple[int, str]] = {}

    def __call__(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        self.calls.append(argv)
        assert kwargs.get("capture_output") is True
        assert kwargs.get("text") is True
        for prefix, (code, err) in self.fail.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return subprocess.CompletedProcess(argv, code, "", err)
        if argv[:2] == ["launchctl", "print"]:
            code = 0 if self.loaded else 113
            return subprocess.CompletedProcess(argv, code, "", "")
        if argv[:2] == ["launchctl", "bootstrap"]:
            self.loaded = True
        elif argv[:2] == ["launchctl", "bootout"]:
            if not self.loaded:
                return subprocess.CompletedProcess(
                    argv, 3, "", "Boot-out failed: 3: No such process"
                )
            self.loaded = False
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary home, with the daemon's own folders moved into it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("MLXROUTER_LOG_DIR", str(home / "logs"))
    monkeypatch.setenv("MLXROUTER_DATA_DIR", str(home / "data"))
    return home


@pytest.fixture
def exe(tmp_path: Path) -> Path:
    """A stand-in for the installed `mlxrouter` console script, in a folder with a space."""
    path = tmp_path / "my venv" / "bin" / "mlxrouter"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "conf dir" / "config.yaml"
    path.parent.mkdir()
    path.write_text("port: 8080\n")
    return path


def plist_of(svc: ServiceFile) -> dict[str, Any]:
    data = plistlib.loads(svc.content)
    assert isinstance(data, dict)
    return data


# ---- rendering ----------------------------------------------------------------------------


def test_plist_has_the_launchd_keys(
    home: Path, exe: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", "/models/hf home")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    svc = render(config, platform="darwin", home=home, executable=exe)
    assert svc.kind == "launchd"
    assert svc.path == home / "Library" / "LaunchAgents" / "io.github.mlxrouter.plist"
    data = plist_of(svc)
    assert data["Label"] == LABEL == "io.github.mlxrouter"
    args = data["ProgramArguments"]
    assert Path(args[0]).is_absolute()
    assert args == [str(exe), "serve", "--config", str(config)]
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    assert data["ExitTimeOut"] >= 30  # longer than the daemon's drain
    log_dir = home / "logs"
    assert Path(data["StandardOutPath"]).parent == log_dir
    assert Path(data["StandardErrorPath"]).parent == log_dir
    assert data["StandardOutPath"] != data["StandardErrorPath"]
    env = data["EnvironmentVariables"]
    assert env["PATH"] == os.environ["PATH"]
    assert env["HF_HOME"] == "/models/hf home"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["MLXROUTER_LOG_DIR"] == str(log_dir)
    assert "HUGGINGFACE_HUB_CACHE" not in env
    assert data["WorkingDirectory"] == str(home / "data")
    assert data[service.PLIST_MARKER_KEY] is True


def test_paths_are_made_absolute(
    home: Path, exe: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(config.parent)
    monkeypatch.setenv("HF_HUB_CACHE", "relative/hub")
    data = plist_of(render(Path("config.yaml"), platform="darwin", home=home, executable=exe))
    assert data["ProgramArguments"][-1] == str(config)
    assert data["EnvironmentVariables"]["HF_HUB_CACHE"] == str(config.parent / "relative/hub")


def test_no_config_path_leaves_out_the_flag(home: Path, exe: Path) -> None:
    data = plist_of(render(None, platform="darwin", home=home, executable=exe))
    assert data["ProgramArguments"] == [str(exe), "serve"]
    unit = render(None, platform="linux", home=home, executable=exe).text
    assert "--config" not in unit


def test_systemd_unit_has_the_service_keys(
    home: Path, exe: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", "/models/hf home")
    svc = render(config, platform="linux", home=home, executable=exe)
    assert svc.kind == "systemd"
    assert svc.path == home / ".config" / "systemd" / "user" / "mlxrouter.service"
    lines = svc.text.splitlines()
    assert lines[0].startswith("# Written by mlxrouter")
    assert f'ExecStart="{exe}" serve --config "{config}"' in lines
    for line in (
        "[Unit]",
        "After=network.target",
        "[Service]",
        "Type=simple",
        "Restart=on-failure",
        "RestartSec=2",
        "TimeoutStopSec=45",
        f"WorkingDirectory={home / 'data'}",
        f'Environment="PATH={os.environ["PATH"]}"',
        'Environment="HF_HOME=/models/hf home"',
        "[Install]",
        "WantedBy=default.target",
    ):
        assert line in lines
    assert svc.content.endswith(b"\n")


def test_systemd_unit_escapes_specials(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = tmp_path / "bin" / "mlxrouter"
    cfg = tmp_path / "100% $HOME" / 'say "hi".yaml'
    monkeypatch.setenv("HF_HOME", '/x/"q" 5%')
    text = render(cfg, platform="linux", home=home, executable=exe).text
    # Plain words stay bare; `%` and `$` are doubled; quotes and backslashes escaped.
    assert f'ExecStart={exe} serve --config "{tmp_path}/100%% $$HOME/say \\"hi\\".yaml"' in text
    assert 'Environment="HF_HOME=/x/\\"q\\" 5%%"' in text


def test_systemd_unit_refuses_newlines(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="newline"):
        render(tmp_path / "a\nb.yaml", platform="linux", home=home, executable=tmp_path / "x")


def test_systemd_unit_follows_xdg_config_home(
    home: Path, exe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    svc = render(None, platform="linux", home=home, executable=exe)
    assert svc.path == tmp_path / "xdg" / "systemd" / "user" / "mlxrouter.service"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative")  # ignored, as the XDG spec says
    svc = render(None, platform="linux", home=home, executable=exe)
    assert svc.path == home / ".config" / "systemd" / "user" / "mlxrouter.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_accepts_the_unit(
    home: Path, exe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "100% sure" / 'a "b".yaml'
    monkeypatch.setenv("HF_HOME", '/x/"q" $y 5%')
    monkeypatch.setenv("MLXROUTER_DATA_DIR", str(tmp_path / "data 1%"))
    (tmp_path / "data 1%").mkdir()
    svc = render(cfg, platform="linux", home=home, executable=exe)
    unit = tmp_path / "verify" / "mlxrouter.service"
    unit.parent.mkdir()
    unit.write_bytes(svc.content)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    # A misquoted executable fails the run; a bad line is only a warning naming the unit.
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "mlxrouter.service" not in output, output


def test_show_names_the_path_and_writes_nothing(home: Path, exe: Path, config: Path) -> None:
    text = show(config, platform="linux", home=home, executable=exe)
    svc = render(config, platform="linux", home=home, executable=exe)
    assert text.splitlines()[0] == f"# {svc.path}"
    assert svc.text in text
    assert "<key>Label</key>" in show(config, platform="darwin", home=home, executable=exe)
    assert not svc.path.exists()
    assert not (home / "Library").exists()
    assert not (home / "logs").exists()


# ---- install / uninstall: launchd ----------------------------------------------------------


def test_install_launchd_writes_and_bootstraps(home: Path, exe: Path, config: Path) -> None:
    fake = FakeManager()
    svc = install(config, runner=fake, platform="darwin", home=home, executable=exe)
    assert svc.path == home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert svc.path.read_bytes() == svc.content
    assert is_managed(svc.path)
    assert (home / "logs").is_dir()
    assert (home / "data").is_dir()
    assert fake.calls == [
        ["launchctl", "enable", TARGET],
        ["launchctl", "print", TARGET],
        ["launchctl", "bootstrap", f"gui/{UID}", str(svc.path)],
        ["launchctl", "kickstart", TARGET],
    ]


def test_install_launchd_again_is_idempotent(home: Path, exe: Path, config: Path) -> None:
    fake = FakeManager()
    svc = install(config, runner=fake, platform="darwin", home=home, executable=exe)
    before = svc.path.stat()
    fake.calls.clear()
    again = install(config, runner=fake, platform="darwin", home=home, executable=exe)
    assert again == svc
    after = svc.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # Already loaded: only made sure it is enabled and running.
    assert fake.calls == [
        ["launchctl", "enable", TARGET],
        ["launchctl", "print", TARGET],
        ["launchctl", "kickstart", TARGET],
    ]


def test_install_launchd_after_unload_bootstraps_again(home: Path, exe: Path, config: Path) -> None:
    fake = FakeManager()
    svc = install(config, runner=fake, platform="darwin", home=home, executable=exe)
    fake.loaded = False  # e.g. `launchctl bootout` by hand
    fake.calls.clear()
    install(config, runner=fake, platform="darwin", home=home, executable=exe)
    assert ["launchctl", "bootstrap", f"gui/{UID}", str(svc.path)] in fake.calls


def test_install_launchd_changed_content_reloads(
    home: Path, exe: Path, config: Path, tmp_path: Path
) -> None:
    fake = FakeManager()
    install(config, runner=fake, platform="darwin", home=home, executable=exe)
    other = tmp_path / "other.yaml"
    other.write_text("port: 9000\n")
    fake.calls.clear()
    svc = install(other, runner=fake, platform="darwin", home=home, executable=exe)
    assert plist_of(svc)["ProgramArguments"][-1] == str(other)
    assert svc.path.read_bytes() == svc.content
    assert fake.calls == [
        ["launchctl", "enable", TARGET],
        ["launchctl", "print", TARGET],
        ["launchctl", "bootout", TARGET],
        ["launchctl", "print", TARGET],
        ["launchctl", "bootstrap", f"gui/{UID}", str(svc.path)],
        ["launchctl", "kickstart", TARGET],
    ]


def test_uninstall_launchd_boots_out_and_removes(home: Path, exe: Path, config: Path) -> None:
    fake = FakeManager()
    svc = install(config, runner=fake, platform="darwin", home=home, executable=exe)
    fake.calls.clear()
    assert uninstall(runner=fake, platform="darwin", home=home) == svc.path
    assert not svc.path.exists()
    assert fake.calls == [["launchctl", "bootout", TARGET]]
    fake.calls.clear()
    assert uninstall(runner=fake, platform="darwin", home=home) is None
    assert fake.calls == []


def test_uninstall_launchd_ignores_not_loaded(home: Path, exe: Path, config: Path) -> None:
    fake = FakeManager()
    svc = install(config, runner=fake, platform="darwin", home=home, executable=exe)
    fake.loaded = False
    assert uninstall(runner=fake, platform="darwin", home=home) == svc.path
    assert not svc.path.exists()


def test_uninstall_launchd_reports_a_real_failure(home: Path, exe: Path, config: Path) -> None:
    fake = FakeManager()
    svc = install(config, runner=fake, platform="darwin", home=home, executable=exe)
    fake.fail[("launchctl", "bootout")] = (5, "Boot-out failed: 5: Input/output error\nmore")
    with pytest.raises(ServiceError, match=r"launchctl bootout .* failed \(exit 5\)") as info:
        uninstall(runner=fake, platform="darwin", home=home)
    assert "Input/output error" in info.value.message
    assert "more" not in info.value.message
    assert svc.path.exists()  # still loaded, so still on disk


# ---- install / uninstall: systemd ----------------------------------------------------------


def test_install_systemd_writes_and_enables(home: Path, exe: Path, config: Path) -> None:
    fake = FakeManager()
    svc = install(config, runner=fake, platform="linux", home=home, executable=exe)
    assert svc.path == home / ".config" / "systemd" / "user" / "mlxrouter.service"
    assert svc.path.read_bytes() == svc.content
    assert oct(svc.path.stat().st_mode & 0o777) == oct(0o644)
    assert fake.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "mlxrouter.service"],
    ]
    before = svc.path.stat()
    fake.calls.clear()
    assert install(config, runner=fake, platform="linux", home=home, executable=exe) == svc
    assert svc.path.stat().st_ino == before.st_ino
    assert fake.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "mlxrouter.service"],
    ]


def test_install_systemd_changed_content_restarts(
    home: Path, exe: Path, config: Path, tmp_path: Path
) -> None:
    fake = FakeManager()
    install(config, runner=fake, platform="linux", home=home, executable=exe)
    fake.calls.clear()
    svc = install(None, runner=fake, platform="linux", home=home, executable=exe)
    assert "--config" not in svc.path.read_text()
    assert fake.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "try-restart", "mlxrouter.service"],
        ["systemctl", "--user", "enable", "--now", "mlxrouter.service"],
    ]


def test_uninstall_systemd_disables_removes_and_reloads(
    home: Path, exe: Path, config: Path
) -> None:
    fake = FakeManager()
    svc = install(config, runner=fake, platform="linux", home=home, executable=exe)
    fake.calls.clear()
    assert uninstall(runner=fake, platform="linux", home=home) == svc.path
    assert not svc.path.exists()
    assert fake.calls == [
        ["systemctl", "--user", "disable", "--now", "mlxrouter.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert uninstall(runner=fake, platform="linux", home=home) is None


# ---- ownership, failures ------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["darwin", "linux"])
def test_foreign_file_needs_force(home: Path, exe: Path, config: Path, platform: str) -> None:
    fake = FakeManager()
    path = service.service_path(platform=platform, home=home)
    path.parent.mkdir(parents=True)
    foreign = b"[Service]\nExecStart=/usr/bin/something-else\n"
    path.write_bytes(foreign)
    assert not is_managed(path)

    with pytest.raises(ServiceError, match="not written by mlxrouter"):
        install(config, runner=fake, platform=platform, home=home, executable=exe)
    assert path.read_bytes() == foreign
    with pytest.raises(ServiceError, match="not written by mlxrouter"):
        uninstall(runner=fake, platform=platform, home=home)
    assert path.read_bytes() == foreign
    assert fake.calls == []  # a foreign service is not stopped either

    svc = install(config, force=True, runner=fake, platform=platform, home=home, executable=exe)
    assert path.read_bytes() == svc.content
    assert is_managed(path)


@pytest.mark.parametrize("platform", ["darwin", "linux"])
def test_uninstall_force_removes_a_foreign_file(home: Path, platform: str) -> None:
    path = service.service_path(platform=platform, home=home)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not ours")
    assert uninstall(force=True, runner=FakeManager(), platform=platform, home=home) == path
    assert not path.exists()


def test_a_plist_without_the_mark_is_foreign(tmp_path: Path) -> None:
    path = tmp_path / "x.plist"
    path.write_bytes(plistlib.dumps({"Label": LABEL}))
    assert not is_managed(path)
    path.write_bytes(plistlib.dumps({"Label": LABEL, "MlxrouterManaged": True}))
    assert is_managed(path)
    path.write_bytes(b"\x00garbage")
    assert not is_managed(path)
    assert not is_managed(tmp_path / "missing.plist")


FAILURES = {
    "darwin": (("launchctl", "bootstrap"), f"launchctl bootstrap gui/{UID}"),
    "linux": (("systemctl", "--user", "enable"), "systemctl --user enable --now"),
}


@pytest.mark.parametrize("platform", sorted(FAILURES))
def test_a_failing_command_raises(home: Path, exe: Path, config: Path, platform: str) -> None:
    prefix, shown = FAILURES[platform]
    fake = FakeManager()
    fake.fail[prefix] = (1, "Failed to connect to bus: No medium found\nsecond line")
    with pytest.raises(ServiceError) as info:
        install(config, runner=fake, platform=platform, home=home, executable=exe)
    message = info.value.message
    assert shown in message
    assert "exit 1" in message
    assert "Failed to connect to bus: No medium found" in message
    assert "second line" not in message
    assert "\n" not in message
    assert isinstance(info.value, MlxRouterError)


def test_a_missing_service_manager_raises(home: Path, exe: Path, config: Path) -> None:
    def runner(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory", args[0])

    with pytest.raises(ServiceError, match="cannot run `systemctl --user daemon-reload`"):
        install(config, runner=runner, platform="linux", home=home, executable=exe)


@pytest.mark.parametrize("platform", ["win32", "freebsd14", "cygwin"])
def test_unsupported_platform(home: Path, exe: Path, config: Path, platform: str) -> None:
    message = "service install supports macOS (launchd) and Linux (systemd)"
    fake = FakeManager()
    with pytest.raises(ServiceError, match=r"supports macOS \(launchd\) and Linux") as info:
        render(config, platform=platform, home=home, executable=exe)
    assert info.value.message == message
    with pytest.raises(ServiceError, match="supports macOS"):
        show(config, platform=platform, home=home, executable=exe)
    with pytest.raises(ServiceError, match="supports macOS"):
        install(home / "missing.yaml", runner=fake, platform=platform, home=home, executable=exe)
    with pytest.raises(ServiceError, match="supports macOS"):
        uninstall(runner=fake, platform=platform, home=home)
    assert fake.calls == []


def test_a_missing_config_file_is_refused(home: Path, exe: Path) -> None:
    # `serve --config` on a missing file exits at once, so launchd/systemd would loop on it.
    fake = FakeManager()
    with pytest.raises(ServiceError, match="does not exist"):
        install(home / "nope.yaml", runner=fake, platform="linux", home=home, executable=exe)
    assert fake.calls == []
    assert not (home / ".config").exists()


# ---- finding the executable ---------------------------------------------------------------


def test_find_executable_prefers_the_one_beside_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "mlxrouter").write_text("#!/bin/sh\n")
    (venv / "mlxrouter").chmod(0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mlxrouter").write_text("#!/bin/sh\n")
    (elsewhere / "mlxrouter").chmod(0o755)
    monkeypatch.setenv("PATH", str(elsewhere))
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    assert service.find_executable() == venv / "mlxrouter"

    (venv / "mlxrouter").unlink()
    assert service.find_executable() == elsewhere / "mlxrouter"

    (elsewhere / "mlxrouter").unlink()
    with pytest.raises(ServiceError, match="cannot find the mlxrouter executable"):
        service.find_executable()


def test_render_uses_find_executable_by_default(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mlxrouter").write_text("#!/bin/sh\n")
    (bindir / "mlxrouter").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    data = plist_of(render(None, platform="darwin", home=home))
    assert data["ProgramArguments"][0] == str(bindir / "mlxrouter")


# ---- a missing config file ------------------------------------------------------------------


def test_config_warning_names_a_missing_file(
    tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLXROUTER_CONFIG_DIR", str(tmp_path / "default"))
    assert service.config_warning(config) is None
    missing = tmp_path / "nope.yaml"
    warning = service.config_warning(missing)
    assert warning is not None and str(missing) in warning and "does not exist" in warning
    # No --config: the service reads the default file, when there is one.
    default = tmp_path / "default" / "config.yaml"
    warning = service.config_warning(None)
    assert warning is not None and str(default) in warning and "built-in defaults" in warning
    default.parent.mkdir()
    default.write_text("port: 8080\n")
    assert service.config_warning(None) is None


@pytest.fixture
def fake_managers(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`systemctl` and `launchctl` scripts that log their arguments, alone on PATH, and HOME
    moved, so the real `service install` command runs without touching this machine."""
    bindir = tmp_path / "fake-bin"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    for name in ("systemctl", "launchctl"):
        script = bindir / name
        # `launchctl print` fails: the job is not loaded yet.
        script.write_text(
            f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n[ "$1" = print ] && exit 113\nexit 0\n'
        )
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setenv("HOME", str(home))
    return calls


@pytest.mark.skipif(
    sys.platform != "darwin" and not sys.platform.startswith("linux"), reason="no service here"
)
def test_cli_show_and_install_warn_about_a_missing_config(
    tmp_path: Path,
    home: Path,
    fake_managers: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlxrouter.cli import main as cli_main

    monkeypatch.setenv("MLXROUTER_CONFIG_DIR", str(tmp_path / "default"))
    missing = tmp_path / "nope.yaml"
    assert cli_main(["service", "show", "--config", str(missing)]) == 0
    captured = capsys.readouterr()
    assert "serve" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlxrouter: warning: ")
    assert str(missing) in err[0]

    assert cli_main(["service", "install"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("installed and started: ")
    assert str(home) in captured.out  # the unit went into the moved home
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "default" / "config.yaml") in err[0]
    assert fake_managers.read_text()  # the fake manager was driven, not the real one

    # With the file in place the same commands say nothing on stderr.
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "config.yaml").write_text("port: 8080\n")
    assert cli_main(["service", "show"]) == 0
    assert cli_main(["service", "install"]) == 0
    assert capsys.readouterr().err == ""
