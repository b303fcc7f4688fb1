"""Demo algorithms: the seeds' simulated ``demo.hello``, a ``demo.noop`` for benchmarks, and small
misbehaving ones that tests and operators use to see retries, timeouts and cancellation."""
from __future__ import annotations

import hashlib
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from algorithms.context import RunContext
from algorithms.registry import algorithm

MIB = 1024 * 1024


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


class StallParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(60, ge=0, le=86_400, description="how long to hang after the first progress report")


@algorithm("demo.stall", params=StallParams, progress_timeout=3,
           description="Reports progress once, then hangs without progress or cancel checks (declares "
                       "progress_timeout=3 s: its worker kills and re-runs it as stuck).")
def stall(ctx: RunContext, params: StallParams) -> dict[str, Any]:
    ctx.progress(10.0, stage="start", message="about to hang")
    time.sleep(params.seconds)
    return {"stalled": params.seconds}


class FlakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_times: int = Field(1, ge=0, le=100, description="attempts that raise before one succeeds")


@algorithm("demo.flaky", params=FlakyParams, description="Raises on its first `fail_times` attempts.")
def flaky(ctx: RunContext, params: FlakyParams) -> dict[str, Any]:
    if ctx.attempt <= params.fail_times:
        raise RuntimeError(f"planned failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


BLOB_JSON_MAX_MB = 64  # a returned result is built whole in the worker's memory (about 35 bytes a number)


class BlobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["binary", "json"] = Field(
        "binary", description="binary: streamed with ctx.open_result(); json: a list of numbers returned "
                              f"as a result (stored in a file once it is over RESULT_INLINE_MAX; at most "
                              f"{BLOB_JSON_MAX_MB} MiB, as it is built in memory)")
    size_mb: float = Field(1, ge=0, le=16_384, description="MiB of deterministic bytes to produce")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="the same seed gives the same bytes")

    @field_validator("size_mb")
    @classmethod
    def _json_fits_in_memory(cls, size_mb: float, info: ValidationInfo) -> float:
        if info.data.get("format") == "json" and size_mb > BLOB_JSON_MAX_MB:
            raise ValueError(f"at most {BLOB_JSON_MAX_MB} with format json (a returned result is built in "
                             "memory; format binary streams any size)")
        return size_mb


@algorithm(
    "demo.blob",
    params=BlobParams,
    description="Produces `size_mb` MiB of deterministic bytes from `seed`, to exercise large results.",
    examples=[{"size_mb": 1, "seed": 42}, {"size_mb": 1, "seed": 7, "format": "json"}],
)
def blob(ctx: RunContext, params: BlobParams) -> Any:
    total = int(params.size_mb * MIB)
    rng = np.random.default_rng(params.seed)
    if params.format == "json":
        # ~8 bytes of JSON per number ("1234567,"), so size_mb MiB of JSON.
        return {"seed": params.seed, "values": rng.integers(1_000_000, 9_999_999, total // 8).tolist()}
    sha = hashlib.sha256()
    summary = {"size_mb": params.size_mb, "seed": params.seed}
    with ctx.open_result(content_type="application/octet-stream", summary=summary) as out:
        written = 0
        while written < total:
            if ctx.cancelled():
                return None
            chunk = rng.bytes(min(MIB, total - written))
            out.write(chunk)
            sha.update(chunk)
            written += len(chunk)
            ctx.progress(100.0 * written / total if total else 100.0, stage="write",
                         message=f"{written // MIB}/{total // MIB} MiB")
    ctx.log(f"wrote {written} bytes, sha256 {sha.hexdigest()}")
    return None


class FilesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(2, ge=0, le=100, description="text artifacts to write")
    fail_on_attempts: int = Field(0, ge=0, le=10, description="attempts that also write failed-attempt.txt, then raise")


@algorithm("demo.files", params=FilesParams, description="Writes `count` small text artifacts (file-0.txt, …).")
def files(ctx: RunContext, params: FilesParams) -> dict[str, Any]:
    for index in range(params.count):
        with ctx.open_artifact(f"file-{index}.txt", "w") as out:
            out.write(f"artifact {index} of task {ctx.task_id}\n")
    if ctx.attempt <= params.fail_on_attempts:
        with ctx.open_artifact("failed-attempt.txt", "w") as out:
            out.write(f"attempt {ctx.attempt} failed\n")
        raise RuntimeError(f"planned failure on attempt {ctx.attempt}")
    return {"files": params.count, "attempt": ctx.attempt}
