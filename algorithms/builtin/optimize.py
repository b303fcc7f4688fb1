"""``optimize.minimize``: scipy.optimize on a named test function, or a linear program given in the params.

Local methods (BFGS, L-BFGS-B, Nelder-Mead, Powell, CG, TNC, SLSQP, trust-constr) and global ones
(differential_evolution, dual_annealing) report progress per iteration through scipy's callback;
a cancel stops the search at the next iteration. Linear programs are solved by HiGHS (``linprog``),
which has no per-iteration callback: progress is reported when it starts and when it ends.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from algorithms.context import RunContext
from algorithms.registry import algorithm

Method = Literal["BFGS", "L-BFGS-B", "Nelder-Mead", "Powell", "CG", "TNC", "SLSQP", "trust-constr",
                 "differential_evolution", "dual_annealing"]
GLOBAL = {"differential_evolution", "dual_annealing"}


def rastrigin(x: Any) -> float:
    x = np.asarray(x)
    return float(10 * x.size + np.sum(x * x - 10 * np.cos(2 * np.pi * x)))


def ackley(x: Any) -> float:
    x = np.asarray(x)
    return float(-20 * np.exp(-0.2 * np.sqrt(np.mean(x * x))) - np.exp(np.mean(np.cos(2 * np.pi * x))) + 20 + np.e)


def sphere(x: Any) -> float:
    return float(np.sum(np.asarray(x) ** 2))


def himmelblau(x: Any) -> float:
    return float((x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2)


def beale(x: Any) -> float:
    a, b = x[0], x[1]
    return float((1.5 - a + a * b) ** 2 + (2.25 - a + a * b ** 2) ** 2 + (2.625 - a + a * b ** 3) ** 2)


def _rosen(x: Any) -> float:
    from scipy.optimize import rosen

    return float(rosen(x))


# name: (function, search box half-width, known minimiser for n dimensions, two-dimensional only)
FUNCTIONS: dict[str, tuple[Callable[[Any], float], float, Callable[[int], list[float]], bool]] = {
    "rosenbrock": (_rosen, 5.0, lambda n: [1.0] * n, False),
    "rastrigin": (rastrigin, 5.12, lambda n: [0.0] * n, False),
    "ackley": (ackley, 32.768, lambda n: [0.0] * n, False),
    "sphere": (sphere, 10.0, lambda n: [0.0] * n, False),
    "himmelblau": (himmelblau, 5.0, lambda n: [3.0, 2.0], True),  # one of its four minima
    "beale": (beale, 4.5, lambda n: [3.0, 0.5], True),
}


class LinearProgram(BaseModel):
    """minimise c·x subject to A_ub·x ≤ b_ub, A_eq·x = b_eq, bounds (default x ≥ 0)."""

    model_config = ConfigDict(extra="forbid")
    c: list[float] = Field(min_length=1, max_length=10_000)
    A_ub: list[list[float]] | None = None
    b_ub: list[float] | None = None
    A_eq: list[list[float]] | None = None
    b_eq: list[float] | None = None
    bounds: list[tuple[float | None, float | None]] | None = None

    @model_validator(mode="after")
    def _shapes(self) -> LinearProgram:
        n = len(self.c)
        for a, b, name in ((self.A_ub, self.b_ub, "ub"), (self.A_eq, self.b_eq, "eq")):
            if (a is None) != (b is None):
                raise ValueError(f"A_{name} and b_{name} go together")
            if a is not None and b is not None:
                if len(a) != len(b):
                    raise ValueError(f"A_{name} has {len(a)} rows but b_{name} has {len(b)} values")
                if any(len(row) != n for row in a):
                    raise ValueError(f"every row of A_{name} needs {n} values (one per variable in c)")
        if self.bounds is not None and len(self.bounds) not in (1, n):
            raise ValueError(f"bounds needs 1 or {n} (lower, upper) pairs")
        return self


class MinimizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    function: Literal["rosenbrock", "rastrigin", "ackley", "sphere", "himmelblau", "beale"] | None = Field(
        None, description="a named test function; or give `linear_program`")
    dimensions: int = Field(2, ge=1, le=1000, description="for rosenbrock, rastrigin, ackley, sphere")
    x0: list[float] | None = Field(None, description="start point (default: a seeded random point in the box)")
    method: Method = "L-BFGS-B"
    max_iterations: int = Field(1000, ge=1, le=1_000_000)
    tolerance: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    linear_program: LinearProgram | None = None

    @model_validator(mode="after")
    def _one_problem(self) -> MinimizeParams:
        if (self.function is None) == (self.linear_program is None):
            raise ValueError("give exactly one of `function` and `linear_program`")
        if self.function and FUNCTIONS[self.function][3] and self.dimensions != 2:
            raise ValueError(f"{self.function} is two-dimensional: dimensions must be 2")
        if self.x0 is not None and len(self.x0) != self.dimensions:
            raise ValueError(f"x0 has {len(self.x0)} values but dimensions is {self.dimensions}")
        return self


class _Stop(Exception):
    pass


def _minimize_function(ctx: RunContext, p: MinimizeParams) -> dict[str, Any]:
    from scipy import optimize

    assert p.function is not None
    fn, half_width, known, _ = FUNCTIONS[p.function]
    n = p.dimensions
    rng = np.random.default_rng(p.seed)
    x0 = np.asarray(p.x0, dtype=float) if p.x0 is not None else rng.uniform(-half_width, half_width, n)
    bounds = [(-half_width, half_width)] * n
    history: list[float] = []

    def callback(intermediate_result: Any) -> None:
        history.append(float(intermediate_result.fun))
        it = len(history)
        ctx.progress(min(99.0, 100.0 * it / p.max_iterations), stage="iterate", message=f"iteration {it}",
                     metrics={"iteration": it, "f": history[-1], "best_f": min(history)})
        if ctx.cancelled():
            raise StopIteration  # scipy ends the search and returns what it has

    if p.method == "differential_evolution":
        res = optimize.differential_evolution(fn, bounds, maxiter=p.max_iterations, tol=p.tolerance or 0.01,
                                              seed=p.seed, callback=callback, polish=True, x0=x0)
    elif p.method == "dual_annealing":
        def anneal_cb(x: Any, f: float, context: int) -> bool:
            history.append(float(f))
            ctx.progress(min(99.0, 100.0 * len(history) / p.max_iterations), stage="iterate",
                         message=f"minimum {len(history)} found", metrics={"iteration": len(history), "f": float(f)})
            return ctx.cancelled()

        res = optimize.dual_annealing(fn, bounds, maxiter=p.max_iterations, seed=p.seed, x0=x0, callback=anneal_cb)
    else:
        uses_bounds = p.method in {"L-BFGS-B", "TNC", "SLSQP", "Powell", "Nelder-Mead", "trust-constr"}
        res = optimize.minimize(fn, x0, method=p.method, tol=p.tolerance, callback=callback,
                                bounds=bounds if uses_bounds else None, options={"maxiter": p.max_iterations})
    target = np.asarray(known(n))
    return {
        "problem": "function", "function": p.function, "method": p.method, "dimensions": n,
        "success": bool(res.success), "message": str(res.message), "x": [float(v) for v in res.x],
        "fun": float(res.fun), "iterations": int(getattr(res, "nit", len(history))), "evaluations": int(res.nfev),
        "x0": [float(v) for v in x0], "known_minimum": {"x": target.tolist(), "fun": float(fn(target))},
        "distance_to_known_minimum": float(np.linalg.norm(np.asarray(res.x) - target)),
        "history": history[-1000:],
    }


def _linear_program(ctx: RunContext, p: MinimizeParams) -> dict[str, Any]:
    from scipy import optimize

    lp = p.linear_program
    assert lp is not None
    ctx.progress(0, stage="solve", message=f"HiGHS: {len(lp.c)} variables")
    res = optimize.linprog(lp.c, A_ub=lp.A_ub, b_ub=lp.b_ub, A_eq=lp.A_eq, b_eq=lp.b_eq,
                           bounds=lp.bounds if lp.bounds is not None else (0, None), method="highs",
                           options={"maxiter": p.max_iterations})
    ctx.progress(100, stage="done", message=str(res.message), metrics={"iterations": int(res.nit)})
    return {
        "problem": "linear_program", "method": "highs", "success": bool(res.success), "status": int(res.status),
        "message": str(res.message), "x": None if res.x is None else [float(v) for v in res.x],
        "fun": None if res.fun is None else float(res.fun), "iterations": int(res.nit),
        "slack": None if getattr(res, "slack", None) is None else [float(v) for v in res.slack],
        "duals_ub": None if getattr(res, "ineqlin", None) is None else [float(v) for v in res.ineqlin.marginals],
    }


@algorithm(
    "optimize.minimize",
    params=MinimizeParams,
    description="scipy.optimize: minimise a named test function (Rosenbrock, Rastrigin, Ackley, …) "
                "or solve a linear program; progress per iteration.",
    timeout_seconds=1800,
    examples=[{"function": "rosenbrock", "dimensions": 5, "method": "L-BFGS-B"},
              {"function": "rastrigin", "dimensions": 3, "method": "differential_evolution"},
              {"linear_program": {"c": [-1, -2], "A_ub": [[1, 1], [1, -1]], "b_ub": [4, 2]}}],
)
def minimize(ctx: RunContext, p: MinimizeParams) -> dict[str, Any]:
    started = time.monotonic()
    result = _minimize_function(ctx, p) if p.function else _linear_program(ctx, p)
    if result.get("fun") is not None:
        ctx.progress(100, stage="done", message=f"f = {result['fun']:.6g}", metrics={"fun": result["fun"]})
    result["seconds"] = round(time.monotonic() - started, 4)
    return result
