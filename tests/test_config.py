"""Settings are checked once, by one rule each, whichever way they come in."""

from __future__ import annotations

import argparse

import pytest

import corral
from corral.config import ExecutorConfig, WorkerConfig, check_task_options


@pytest.mark.parametrize("config", [
    WorkerConfig(),
    WorkerConfig(fresh=True),
    WorkerConfig(prefetch=0, max_tasks=7, idle_timeout=2.5, max_memory=10**9, spawn=True, reconnect=True),
    WorkerConfig(prefetch=12, idle_timeout=0.125),
])
def test_a_worker_configuration_survives_its_command_line(config):
    parser = argparse.ArgumentParser()
    WorkerConfig.add_arguments(parser)
    assert WorkerConfig.from_args(parser.parse_args(config.argv())) == config


@pytest.mark.parametrize("fields, says", [
    ({"prefetch": -1}, "prefetch must be an integer >= 0"),
    ({"max_tasks": 0}, "max_tasks must be an integer >= 1"),
    ({"max_tasks": True}, "max_tasks must be an integer"),
    ({"idle_timeout": float("nan")}, "idle_timeout must be a finite number of seconds > 0"),
    ({"max_memory": "lots"}, "is not a size"),
])
def test_a_bad_worker_configuration_says_what_is_wrong(fields, says):
    with pytest.raises(ValueError, match=says):
        WorkerConfig(**fields)


def test_lanes_only_where_the_supervisor_need_not_see_each_task():
    assert WorkerConfig().laned
    for fields in ({"fresh": True}, {"spawn": True}, {"max_tasks": 5}, {"max_memory": 10**9}, {"idle_timeout": 1.0},
                   {"prefetch": 3}):
        assert not WorkerConfig(**fields).laned, fields


@pytest.mark.parametrize("value", [True, -1, 1001, 2.0, "2"])
def test_retries_follow_one_rule_for_the_executor_and_its_tasks(value):
    with pytest.raises(ValueError, match="retries must be an integer >= 0"):
        ExecutorConfig(retries=value)
    with pytest.raises(ValueError, match="retries must be an integer >= 0"):
        corral.Executor(retries=value)
    with pytest.raises(ValueError, match="retries must be an integer >= 0"):
        check_task_options({"retries": value})  # what ex.options(retries=...) checks


def test_an_executors_own_workers_get_its_settings():
    config = ExecutorConfig(max_workers=3, prefetch=4, max_tasks_per_child=9, idle_timeout=5.0, max_memory="1GB")
    assert config.worker_config() == WorkerConfig(prefetch=5, max_tasks=9, idle_timeout=5.0, max_memory=10**9)
    assert ExecutorConfig(max_tasks_per_child=1).worker_config() == WorkerConfig(fresh=True)


QUIET = """
import logging, sys
import corral
from corral.logs import logger
if sys.argv[1] == "configured":
    logging.basicConfig(format="%(name)s %(levelname)s %(message)s")
logger("broker").warning("a message of corral's own")
"""


@pytest.mark.parametrize("how", ["quiet", "configured"])
def test_corral_logs_through_logging_and_is_quiet_unless_configured(how):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", QUIET, how], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if how == "quiet":
        assert out.stderr == ""
    else:
        assert "corral.broker WARNING a message of corral's own" in out.stderr
