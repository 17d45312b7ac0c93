"""The command line states no defaults of its own: each option of a setting takes config.py's."""

from dataclasses import fields

from geventsched.cli import build_parser
from geventsched.config import MasterConfig, WorkerConfig


def _option_defaults(command, config):
    parsed = vars(build_parser().parse_args([command]))
    return {f.name: (parsed[f.name], f.default) for f in fields(config) if f.name in parsed}


def test_worker_options_default_to_worker_config():
    defaults = _option_defaults("worker", WorkerConfig)
    assert {"channels", "concurrency", "threads", "grace", "codec", "max_payload"} <= set(defaults)
    assert all(cli == config for cli, config in defaults.values()), defaults


def test_master_options_default_to_master_config():
    defaults = _option_defaults("master", MasterConfig)
    assert {"channels", "strategy", "prefetch", "max_attempts", "deadline_slack", "max_inflight_bytes",
            "durability"} <= set(defaults)
    assert all(cli == config for cli, config in defaults.values()), defaults


def test_tune_gc_freezes_what_exists_and_raises_the_thresholds():
    """What ``worker``, ``master``, ``bench`` and the suite do once started (in a process of its own
    here: it would change this one's collector for the rest of the run)."""
    import subprocess
    import sys

    code = ("import gc; from geventsched import config; config.tune_gc(); "
            "print(gc.get_threshold() == config.GC_THRESHOLDS, gc.get_freeze_count() > 1000)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "True"], done.stderr
