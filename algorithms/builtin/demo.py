"""Demo algorithms: the seeds' simulated ``demo.hello``, a ``demo.noop`` for benchmarks, and small
misbehaving ones that tests and operators use to see retries, timeouts and cancellation."""
from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from algorithms.context import RunContext
from algorithms.registry import algorithm


class HelloParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(3, ge=0, le=3600, description="total run time")
    steps: int = Field(10, ge=1, le=10_000, description="progress reports, evenly spaced")


@algorithm(
    "demo.hello",
    params=HelloParams,
    description="Sleeps `seconds` in `steps`, reporting progress after each step; logs 'hello world'.",
    examples=[{"seconds": 3, "steps": 10}],
)
def hello(ctx: RunContext, params: HelloParams) -> dict[str, Any]:
    ctx.log("hello world")
    for step in range(1, params.steps + 1):
        if ctx.cancelled():
            return {"greeting": "hello world", "completed_steps": step - 1}
        time.sleep(params.seconds / params.steps)
        ctx.progress(100.0 * step / params.steps, stage="sleep", message=f"step {step}/{params.steps}")
    return {"greeting": "hello world", "completed_steps": params.steps}


@algorithm("demo.noop", description="Returns at once; used by benchmarks.")
def noop(ctx: RunContext, params: BaseModel) -> dict[str, Any]:
    return {"ok": True}


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(10, ge=0, le=86_400)
    ignore_cancel: bool = Field(False, description="keep sleeping when cancelled (to exercise the kill path)")


@algorithm("demo.sleep", params=SleepParams, description="Sleeps; optionally ignores cancellation.")
def sleep(ctx: RunContext, params: SleepParams) -> dict[str, Any]:
    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline:
        if ctx.cancelled() and not params.ignore_cancel:
            return {"slept": False}
        time.sleep(0.05)
    return {"slept": True}


class FlakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_times: int = Field(1, ge=0, le=100, description="attempts that raise before one succeeds")


@algorithm("demo.flaky", params=FlakyParams, description="Raises on its first `fail_times` attempts.")
def flaky(ctx: RunContext, params: FlakyParams) -> dict[str, Any]:
    if ctx.attempt <= params.fail_times:
        raise RuntimeError(f"planned failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}
