"""The config object: defaults, TOML file, flags winning, and one clear line per bad setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastmta.config import ConfigError, load_config, parse_hostport


def test_defaults_are_a_safe_loopback_mx() -> None:
    config = load_config()
    assert config.listen == ("127.0.0.1:2525",)
    assert config.spool == Path("fastmta-spool")
    assert config.local_domains == ("localhost",)
    assert config.relay_domains == ()
    assert config.relay_networks == ("127.0.0.0/8", "::1/128")
    assert config.max_message_size == 10 * 1024 * 1024
    assert config.max_recipients == 1000
    assert config.idle_timeout == 300
    assert config.mail_root == Path("fastmta-spool") / "mail"


def test_file_values_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "fastmta.toml"
    path.write_text(
        'listen = ["127.0.0.1:2600", "[::1]:2600"]\n'
        'max-message-size = "20M"\n'
        'local_domains = ["Example.ORG."]\n'
        'max_queue_lifetime = "2d"\n'
        '[transport_map]\n"example.net" = "smtp:[10.0.0.5]:2525"\n'
    )
    config = load_config(path, {"max_message_size": "1k", "hostname": "mx.example.org"})
    assert config.listen_addresses == [("127.0.0.1", 2600), ("::1", 2600)]
    assert config.max_message_size == 1024
    assert config.local_domains == ("example.org",)
    assert config.max_queue_lifetime == 2 * 86400
    assert dict(config.transport_map) == {"example.net": "smtp:[10.0.0.5]:2525"}
    assert config.hostname == "mx.example.org"
    assert config.config_file == path


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"max_message_size": "lots"}, "max_message_size"),
        ({"listen": ["127.0.0.1"]}, "listen"),
        ({"listen": ["[nothex]:25"]}, "listen"),
        ({"relay_networks": "10.0.0.0/33"}, "relay_networks"),
        ({"workers": "-1"}, "workers"),
        ({"idle_timeout": "soon"}, "idle_timeout"),
        ({"bare_line_endings": "fix"}, "bare_line_endings"),
        ({"tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"}, "tls_cert"),
        ({"tls_cert": "/etc/hostname"}, "tls_cert"),
        ({"retry_min_backoff": "1h", "retry_max_backoff": "10m"}, "retry_max_backoff"),
    ],
)
def test_bad_values_name_the_setting(overrides: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.setting == setting
    assert str(info.value).startswith(setting + ":")


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("max_mesage_size = 10\n")
    with pytest.raises(ConfigError, match="max_mesage_size: unknown setting"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:25", ("127.0.0.1", 25)), ("[::1]:2525", ("::1", 2525)), ("mx.example:587", ("mx.example", 587))],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(("flag", "value"), [
    ("--max-message-size", "huge"),
    ("--hostname", "a b"),  # would break the greeting: refused before any worker starts
    ("--hostname", "mx.example.org\r\n250 injected"),
])
def test_cli_reports_a_bad_setting_on_one_line_with_status_2(flag: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fastmta", "serve", flag, value, "--check-config"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert flag[2:].replace("-", "_") in lines[0]


def test_a_trailing_dot_of_the_hostname_is_dropped() -> None:
    assert load_config(None, {"hostname": "mx.example.org."}).hostname == "mx.example.org"


def test_cli_check_config_shows_flag_over_file(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text('max_recipients = 50\nhostname = "from-file.example"\n')
    result = subprocess.run(
        [sys.executable, "-m", "fastmta", "serve", "--config", str(path), "--max-recipients", "7",
         "--check-config"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "max_recipients = 7" in result.stdout
    assert "hostname = from-file.example" in result.stdout
