"""Config loading: files, drop-ins in name order, flags last; every bad input named precisely."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cri import config, configdocs
from tests.daemon import calyx_command


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_any_file(tmp_path: Path) -> None:
    c = config.load(tmp_path / "missing.toml", tmp_path / "missing.d")
    assert c.server.socket == "/run/calyx/calyx.sock"
    assert c.cgroup.driver == "cgroupfs"
    assert list(c.runtime.handlers) == ["runc"]


def test_dropins_apply_in_name_order_after_the_file_and_flags_last(tmp_path: Path) -> None:
    main = write(tmp_path / "calyx.toml", '[network]\nbridge = "from-main"\nsubnet = "10.1.0.0/16"\n')
    write(tmp_path / "d" / "20-b.toml", '[network]\nbridge = "from-20"\n')
    write(tmp_path / "d" / "10-a.toml", '[network]\nbridge = "from-10"\n[server]\nworkers = 3\n')
    write(tmp_path / "d" / "ignored.txt", "[network]\nbridge = 1\n")
    c = config.load(main, tmp_path / "d")
    assert c.network.bridge == "from-20"
    assert c.network.subnet == "10.1.0.0/16"
    assert c.server.workers == 3
    c = config.load(main, tmp_path / "d", ["network.bridge=from-flag"])
    assert c.network.bridge == "from-flag"


def test_named_tables_merge_with_defaults(tmp_path: Path) -> None:
    main = write(
        tmp_path / "calyx.toml",
        '[runtime.handlers.crun]\nruntime_path = "/usr/bin/crun"\n'
        '[images.registries."registry.k8s.io"]\nmirrors = ["http://127.0.0.1:5000"]\n',
    )
    c = config.load(main, None)
    assert set(c.runtime.handlers) == {"runc", "crun"}
    assert c.runtime.handlers["crun"].runtime_path == "/usr/bin/crun"
    assert c.images.registries["registry.k8s.io"].mirrors == ["http://127.0.0.1:5000"]
    assert c.images.registries["registry.k8s.io"].insecure is False


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[server]\nsockett = 'x'\n", "server.sockett", "unknown option"),
        ("[nosuch]\na = 1\n", "nosuch", "unknown option"),
        ("[server]\nworkers = 'many'\n", "server.workers", "expected int"),
        ("[server]\nworkers = true\n", "server.workers", "expected int"),
        ("[network]\ncni_bin_dirs = '/opt/cni/bin'\n", "network.cni_bin_dirs", "expected a list"),
        ("[network]\ncni_bin_dirs = [1]\n", "network.cni_bin_dirs[0]", "expected str"),
        ("server = 3\n", "server", "expected a table"),
        ("[runtime.handlers.x]\nruntime_pth = 'a'\n", "runtime.handlers.x.runtime_pth", "unknown option"),
        ("[server\n", "-", "not valid TOML"),
    ],
)
def test_bad_files_name_the_file_the_key_and_the_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = write(tmp_path / "calyx.toml", text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path, None)
    assert err.value.source == str(path)
    assert err.value.key == key
    assert reason in err.value.reason


def test_an_error_in_a_dropin_names_the_dropin(tmp_path: Path) -> None:
    main = write(tmp_path / "calyx.toml", "")
    bad = write(tmp_path / "d" / "50-bad.toml", "[cgroup]\ndriverr = 'systemd'\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(main, tmp_path / "d")
    assert err.value.source == str(bad)
    assert str(bad) in str(err.value) and "cgroup.driverr" in str(err.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("cgroup.driver=docker", "cgroup.driver"),
        ("server.log_level=loud", "server.log_level"),
        ("server.socket_mode=rw", "server.socket_mode"),
        ("runtime.default_handler=crun", "runtime.default_handler"),
        ("network.cni_plugin_timeout_seconds=0", "network.cni_plugin_timeout_seconds"),
        ("network.cni_plugin_timeout_seconds=-1.5", "network.cni_plugin_timeout_seconds"),
        ("network.cni_plugin_timeout_seconds=inf", "network.cni_plugin_timeout_seconds"),
    ],
)
def test_values_checked_beyond_their_type(override: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load(None, None, [override])
    assert err.value.key == key


def test_effective_config_round_trips_through_toml(tmp_path: Path) -> None:
    c = config.load(None, None, ['images.registries."h:5000".insecure=true', "server.workers=5"])
    again = write(tmp_path / "again.toml", configdocs.to_toml(c))
    assert configdocs.to_dict(config.load(again, None)) == configdocs.to_dict(c)


def test_defaults_listing_is_valid_toml_and_documents_every_option() -> None:
    text = configdocs.defaults_toml()
    assert configdocs.to_dict(config.Config()) == configdocs.to_dict(
        config._merge(config.Config(), tomllib.loads(text), "", "")
    )
    for key, _default, doc in configdocs.iter_options():
        assert doc, f"{key} has no doc"
        if "<name>" not in key:
            assert key.rsplit(".", 1)[1] in text


def test_readme_reference_table_is_current() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert configdocs.reference_table() in readme, "refresh it with: bash tests/update-readme.sh"


def test_cli_config_prints_the_effective_config(tmp_path: Path) -> None:
    main = write(tmp_path / "calyx.toml", "[cgroup]\ndriver = 'systemd'\n")
    out = calyx_command(
        "config", "--config", str(main), "--config-dir", str(tmp_path / "none"), "--socket", "/x.sock"
    )
    assert out.returncode == 0, out.stderr
    printed = tomllib.loads(out.stdout)
    assert printed["cgroup"]["driver"] == "systemd"
    assert printed["server"]["socket"] == "/x.sock"


def test_cli_config_redacts_registry_passwords_unless_asked(tmp_path: Path) -> None:
    main = write(
        tmp_path / "calyx.toml",
        "[images.registries.'reg.example']\nusername = 'u'\npassword = 's3cret-value'\n",
    )
    common = ("config", "--config", str(main), "--config-dir", str(tmp_path / "none"))
    out = calyx_command(*common)
    assert out.returncode == 0, out.stderr
    assert "s3cret-value" not in out.stdout
    registry = tomllib.loads(out.stdout)["images"]["registries"]["reg.example"]
    assert registry == {**registry, "username": "u", "password": configdocs.REDACTED}
    shown = calyx_command(*common, "--show-secrets")
    assert tomllib.loads(shown.stdout)["images"]["registries"]["reg.example"]["password"] == "s3cret-value"


def test_cli_refuses_a_bad_config_with_exit_2_and_the_reason(tmp_path: Path) -> None:
    main = write(tmp_path / "calyx.toml", "[server]\nworkers = 'x'\n")
    for command in ("config", "serve"):
        out = calyx_command(command, "--config", str(main), "--config-dir", str(tmp_path / "none"))
        assert out.returncode == 2
        assert f"{main}: server.workers: expected int" in out.stderr


def test_cli_version() -> None:
    out = calyx_command("version")
    assert out.returncode == 0 and out.stdout.startswith("calyx 0.1.0")
