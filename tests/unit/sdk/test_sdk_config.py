"""Where the SDK finds its API key and gateway: arguments, then environment, then config file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hutch import AuthenticationError, HutchError, InvalidArgumentError
from hutch._config import DEFAULT_ENDPOINT, config_path, parse_endpoint, resolve


def _write_config(home: Path, **values: object) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps(values))


def test_arguments_win_over_environment_and_file(tmp_path: Path) -> None:
    _write_config(tmp_path, api_key="hk_file", endpoint="10.0.0.1:1")
    env = {"HUTCH_HOME": str(tmp_path), "HUTCH_API_KEY": "hk_env", "HUTCH_ENDPOINT": "10.0.0.2:2"}
    config = resolve("hk_arg", "127.0.0.1:3", environ=env)
    assert (config.api_key, config.endpoint) == ("hk_arg", "127.0.0.1:3")


def test_environment_wins_over_file(tmp_path: Path) -> None:
    _write_config(tmp_path, api_key="hk_file", endpoint="10.0.0.1:1")
    env = {"HUTCH_HOME": str(tmp_path), "HUTCH_API_KEY": "hk_env", "HUTCH_ENDPOINT": "10.0.0.2:2"}
    config = resolve(environ=env)
    assert (config.api_key, config.endpoint) == ("hk_env", "10.0.0.2:2")


def test_each_setting_comes_from_its_own_first_source(tmp_path: Path) -> None:
    _write_config(tmp_path, api_key="hk_file", endpoint="127.0.0.1:4444")
    config = resolve(environ={"HUTCH_HOME": str(tmp_path), "HUTCH_API_KEY": "hk_env"})
    assert (config.api_key, config.endpoint) == ("hk_env", "127.0.0.1:4444")
    config = resolve(endpoint="127.0.0.1:5555", environ={"HUTCH_HOME": str(tmp_path)})
    assert (config.api_key, config.endpoint) == ("hk_file", "127.0.0.1:5555")


def test_config_file_alone_is_enough(tmp_path: Path) -> None:
    _write_config(tmp_path, api_key="hk_file", endpoint="127.0.0.1:50051")
    config = resolve(environ={"HUTCH_HOME": str(tmp_path)})
    assert config.api_key == "hk_file"
    assert config.target == "127.0.0.1:50051"
    assert not config.secure


def test_endpoint_defaults_to_the_local_stack(tmp_path: Path) -> None:
    config = resolve(environ={"HUTCH_HOME": str(tmp_path), "HUTCH_API_KEY": "hk_env"})
    assert config.endpoint == DEFAULT_ENDPOINT


def test_empty_environment_variables_count_as_unset(tmp_path: Path) -> None:
    _write_config(tmp_path, api_key="hk_file")
    env = {"HUTCH_HOME": str(tmp_path), "HUTCH_API_KEY": "", "HUTCH_ENDPOINT": ""}
    config = resolve(environ=env)
    assert (config.api_key, config.endpoint) == ("hk_file", DEFAULT_ENDPOINT)


def test_missing_key_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError) as caught:
        resolve(environ={"HUTCH_HOME": str(tmp_path)})
    assert "hutch local up" in caught.value.message
    assert "HUTCH_API_KEY" in caught.value.message
    assert str(tmp_path / "config.json") in caught.value.message


def test_hutch_home_defaults_to_dot_hutch_in_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_path({}) == tmp_path / ".hutch" / "config.json"
    _write_config(tmp_path / ".hutch", api_key="hk_home")
    assert resolve(environ={}).api_key == "hk_home"


def test_malformed_config_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HutchError, match="not valid JSON"):
        resolve(environ={"HUTCH_HOME": str(tmp_path)})
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(HutchError, match="JSON object"):
        resolve(environ={"HUTCH_HOME": str(tmp_path)})


def test_config_file_is_not_read_when_arguments_suffice(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    config = resolve("hk_arg", "127.0.0.1:1", environ={"HUTCH_HOME": str(tmp_path)})
    assert config.api_key == "hk_arg"


def test_api_key_stays_out_of_repr(tmp_path: Path) -> None:
    config = resolve("hk_secret", environ={"HUTCH_HOME": str(tmp_path)})
    assert "hk_secret" not in repr(config)


def test_request_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        resolve("hk", request_timeout=0, environ={"HUTCH_HOME": str(tmp_path)})
    assert resolve("hk", request_timeout=2.5, environ={"HUTCH_HOME": str(tmp_path)}).request_timeout == 2.5


@pytest.mark.parametrize(
    ("endpoint", "target", "secure"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051", False),
        ("localhost:7000", "localhost:7000", False),
        ("[::1]:7000", "[::1]:7000", False),
        ("127.0.0.1", "127.0.0.1:50051", False),
        ("http://gateway.example.com:8080", "gateway.example.com:8080", False),
        ("http://gateway.example.com", "gateway.example.com:80", False),
        ("https://gateway.example.com", "gateway.example.com:443", True),
        ("https://127.0.0.1:9000", "127.0.0.1:9000", True),
        ("gateway.example.com:50051", "gateway.example.com:50051", True),
        ("gateway.example.com", "gateway.example.com:443", True),
        ("10.1.2.3:50051", "10.1.2.3:50051", True),
        ("unix:/run/hutch.sock", "unix:/run/hutch.sock", False),
    ],
)
def test_endpoint_forms(endpoint: str, target: str, secure: bool) -> None:
    assert parse_endpoint(endpoint) == (target, secure)


def test_insecure_forces_plain_text(tmp_path: Path) -> None:
    assert parse_endpoint("https://gateway.example.com", insecure=True) == ("gateway.example.com:443", False)
    env = {"HUTCH_HOME": str(tmp_path), "HUTCH_INSECURE": "1"}
    assert not resolve("hk", "gateway.example.com:50051", environ=env).secure


@pytest.mark.parametrize("endpoint", ["ftp://host:1", "host:port", "http://host:1/path", "http://", ""])
def test_bad_endpoints_are_rejected(endpoint: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_endpoint(endpoint)
