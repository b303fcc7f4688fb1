"""Test-only algorithms of tests/queueing/test_e2e_shutdown_cleanup.py: runs that ignore a cancel, so that
their pool child is killed, and leave something behind unless the worker cleans up after it (a scratch
folder, processes of their own), and an external program found stuck.

A worker of the test's own loads them (``tests.queueing.cleanup_settings`` installs this app); the test
process adds them to its registry for the test's submits only (``algorithms()``, through a fixture).
Imported while the app registry is being filled (INSTALLED_APPS), so nothing that imports models
(``algorithms.registry`` does, through DRF) is imported at the top."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from typing import TYPE_CHECKING, Any

from django.apps import AppConfig
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from algorithms.registry import Algorithm


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 600


def scratch_hog(ctx: Any, params: Params) -> None:
    """Spools into its scratch folder, says where, and ignores a cancel."""
    (ctx.scratch_dir / "spool.bin").write_bytes(b"x" * (1 << 20))
    ctx.log(f"scratch {ctx.scratch_dir}")
    time.sleep(params.seconds)


def spawns_processes(ctx: Any, params: Params) -> None:
    """Starts processes of its own (a child, and a child in a session of its own with a child of its
    own, as a daemon-like tool would), says their pids, and ignores a cancel."""
    child = subprocess.Popen(["sleep", "1000"])
    leader = subprocess.Popen(["sh", "-c", "sleep 1001 & echo $!; wait"], stdout=subprocess.PIPE,
                              start_new_session=True)
    assert leader.stdout is not None
    grandchild = int(leader.stdout.readline())
    ctx.log(f"pids {child.pid} {leader.pid} {grandchild} in {os.getpid()}")
    time.sleep(params.seconds)


def algorithms() -> list[Algorithm]:
    from algorithms import registry
    from algorithms.registry import Algorithm

    # test.stubborn (tests/algorithms/external_test.toml: ignores SIGTERM, has a child), found stuck 2 s
    # after its one progress report: its worker kills its pool child and gives the task up.
    stubborn = registry.get("test.stubborn")
    return [
        Algorithm(name="cleanup.scratch_hog", fn=scratch_hog, params_model=Params),
        Algorithm(name="cleanup.spawns_processes", fn=spawns_processes, params_model=Params),
        dataclasses.replace(stubborn, name="cleanup.stuck_program", progress_timeout=2),
    ]


class CleanupAlgorithmsConfig(AppConfig):
    name = "tests.queueing"
    label = "cleanup_algorithms"

    def ready(self) -> None:
        from algorithms import registry

        for alg in algorithms():
            registry.register(alg)
