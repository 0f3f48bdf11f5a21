"""SIGHUP's reload, in process: what it refuses keeps every running setting."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from tests.sinks import CollectingSink
from vault_observe.config import Config
from vault_observe.errors import ConfigError
from vault_observe.pipeline import Daemon
from vault_observe.reload import reload


def daemon_with(config: Config, new: Config | Exception) -> Daemon:
    daemon = Daemon(config, [CollectingSink()])

    def reload_config() -> Config:
        if isinstance(new, Exception):
            raise new
        return new

    daemon.reload_config = reload_config
    return daemon


def test_a_config_that_cannot_be_read_keeps_the_running_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config(input=str(tmp_path / "in.log"), sample_rate=3)
    daemon = daemon_with(config, ConfigError(f"{tmp_path}/vo.toml: not valid TOML: Expected value"))
    workers = list(daemon.workers)
    with caplog.at_level(logging.INFO, logger="vault_observe"):
        assert reload(daemon) is False
    assert daemon.config is config and daemon.workers == workers and daemon.core.sample_rate == 3
    assert "not valid TOML: Expected value; the running settings stay" in caplog.text


def test_a_sink_setting_that_cannot_be_used_keeps_the_running_sinks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config(input=str(tmp_path / "in.log"))
    new = dataclasses.replace(config, zipkin="ftp://x", sample_rate=5, origins={"zipkin": "vo.toml: zipkin"})
    daemon = daemon_with(config, new)
    workers = list(daemon.workers)
    with caplog.at_level(logging.INFO, logger="vault_observe"):
        assert reload(daemon) is False
    assert daemon.config is config and daemon.workers == workers and daemon.core.sample_rate == 1
    assert "vo.toml: zipkin 'ftp://x': not an http(s) URL" in caplog.text


def test_follow_keeps_its_sinks_and_applies_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config(input=str(tmp_path / "in.log"), follow=True)
    new = dataclasses.replace(config, stdout=True, sample_rate=7, ttl=99.0)
    daemon = daemon_with(config, new)
    workers = list(daemon.workers)
    with caplog.at_level(logging.INFO, logger="vault_observe"):
        assert reload(daemon) is True
    assert daemon.workers == workers and not daemon.config.stdout
    assert daemon.core.sample_rate == daemon.config.sample_rate == 7
    assert daemon.config.ttl == 10.0  # needs a restart
    assert "with --follow a new sink set needs a restart" in caplog.text
    assert "SIGHUP: ttl changed (10.0 -> 99.0) but needs a restart" in caplog.text
