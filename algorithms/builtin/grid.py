"""``grid.power_flow``: AC power flow (Newton-Raphson) on the standard IEEE cases, solved by PYPOWER.

PYPOWER's own ``newtonpf`` does the work, one Newton step per call, so that each iteration's
mismatch can be reported as progress; ``pfsoln`` then computes the flows exactly as ``runpf`` does.
Bus numbers are the published ones (1-based), restored by ``int2ext``.
"""
from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from algorithms.context import RunContext
from algorithms.registry import algorithm

CASES = {9: "case9", 14: "case14", 30: "case30", 39: "case39", 57: "case57", 118: "case118", 300: "case300"}


class PowerFlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    case: Literal[9, 14, 30, 39, 57, 118, 300] = Field(14, description="IEEE / MATPOWER test case, by bus count")
    tolerance: float = Field(1e-8, gt=0, le=1e-2, description="largest power mismatch accepted, per unit")
    max_iterations: int = Field(10, ge=1, le=100)
    load_scale: float = Field(1.0, gt=0, le=5, description="multiply every load (P and Q) by this")
    flat_start: bool = Field(False, description="start from 1.0 pu / 0 degrees instead of the case's voltages")


def _mismatch(Ybus: Any, Sbus: Any, V: Any, pv: Any, pq: Any) -> float:
    mis = V * np.conj(Ybus * V) - Sbus
    parts = np.r_[mis[pv].real, mis[pq].real, mis[pq].imag]
    return float(np.max(np.abs(parts))) if parts.size else 0.0


@algorithm(
    "grid.power_flow",
    params=PowerFlowParams,
    description="AC power flow (Newton-Raphson, PYPOWER) on IEEE 9/14/30/39/57/118/300-bus cases; "
                "bus voltages, branch flows and losses.",
    timeout_seconds=600,
    examples=[{"case": 14}, {"case": 118, "load_scale": 1.1}],
)
def power_flow(ctx: RunContext, p: PowerFlowParams) -> dict[str, Any]:
    import importlib

    from pypower.bustypes import bustypes
    from pypower.ext2int import ext2int
    from pypower.idx_brch import BR_STATUS, F_BUS, PF, PT, QF, QT, T_BUS, TAP
    from pypower.idx_bus import BUS_I, PD, QD, VA, VM
    from pypower.idx_gen import GEN_BUS, GEN_STATUS, PG, QG, VG
    from pypower.int2ext import int2ext
    from pypower.makeSbus import makeSbus
    from pypower.makeYbus import makeYbus
    from pypower.newtonpf import newtonpf
    from pypower.pfsoln import pfsoln
    from pypower.ppoption import ppoption

    started = time.monotonic()
    ppc = getattr(importlib.import_module(f"pypower.{CASES[p.case]}"), CASES[p.case])()
    ppc["bus"][:, [PD, QD]] *= p.load_scale
    if p.flat_start:
        ppc["bus"][:, VM], ppc["bus"][:, VA] = 1.0, 0.0
    if ppc["branch"].shape[1] <= QT:  # room for the flows, as runpf makes
        ppc["branch"] = np.c_[ppc["branch"], np.zeros((ppc["branch"].shape[0], QT + 1 - ppc["branch"].shape[1]))]
    internal = ext2int(ppc)
    base_mva, bus, gen, branch = internal["baseMVA"], internal["bus"], internal["gen"], internal["branch"]
    ref, pv, pq = bustypes(bus, gen)
    on = np.flatnonzero(gen[:, GEN_STATUS] > 0)
    gbus = gen[on, GEN_BUS].astype(int)
    V = bus[:, VM] * np.exp(1j * np.pi / 180 * bus[:, VA])
    V[gbus] = gen[on, VG] / np.abs(V[gbus]) * V[gbus]
    Ybus, Yf, Yt = makeYbus(base_mva, bus, branch)
    Sbus = makeSbus(base_mva, bus, gen)
    one_step = ppoption(PF_ALG=1, PF_TOL=p.tolerance, PF_MAX_IT=1, VERBOSE=0, OUT_ALL=0)

    mismatch = _mismatch(Ybus, Sbus, V, pv, pq)
    ctx.log(f"iteration 0: mismatch {mismatch:.3e} pu")
    ctx.progress(0, stage="newton", message=f"iteration 0: mismatch {mismatch:.3e} pu",
                 metrics={"iteration": 0, "mismatch_pu": mismatch})
    iterations, converged = 0, mismatch < p.tolerance
    while not converged and iterations < p.max_iterations and not ctx.cancelled():
        V, _, _ = newtonpf(Ybus, Sbus, V, ref, pv, pq, one_step)
        iterations += 1
        mismatch = _mismatch(Ybus, Sbus, V, pv, pq)
        converged = bool(mismatch < p.tolerance)
        line = f"iteration {iterations}: mismatch {mismatch:.3e} pu"
        ctx.log(line)  # progress is coalesced; the log keeps every iteration
        ctx.progress(100.0 * iterations / p.max_iterations if not converged else 95.0, stage="newton",
                     message=line, metrics={"iteration": iterations, "mismatch_pu": mismatch})
    if not np.all(np.isfinite(V)):
        converged = False
    bus, gen, branch = pfsoln(base_mva, bus, gen, branch, Ybus, Yf, Yt, V, ref, pv, pq)
    internal["bus"], internal["gen"], internal["branch"] = bus, gen, branch
    solved = int2ext(internal)
    bus, gen, branch = solved["bus"], solved["gen"], solved["branch"]

    injection_p = -bus[:, PD].copy()
    injection_q = -bus[:, QD].copy()
    index = {int(b): i for i, b in enumerate(bus[:, BUS_I])}
    for row in gen[gen[:, GEN_STATUS] > 0]:
        injection_p[index[int(row[GEN_BUS])]] += row[PG]
        injection_q[index[int(row[GEN_BUS])]] += row[QG]
    live = branch[branch[:, BR_STATUS] > 0]
    losses = float(np.sum(live[:, PF] + live[:, PT]))
    ctx.progress(100, stage="done", message=f"{'converged' if converged else 'did not converge'} "
                 f"in {iterations} iterations; losses {losses:.3f} MW",
                 metrics={"iterations": iterations, "mismatch_pu": mismatch, "losses_mw": round(losses, 4)})
    return {
        "case": f"ieee{p.case}", "converged": converged, "iterations": iterations, "mismatch_pu": mismatch,
        "base_mva": float(base_mva), "losses_mw": round(losses, 6),
        "buses": [{"bus": int(row[BUS_I]), "vm_pu": round(float(row[VM]), 6), "va_degree": round(float(row[VA]), 6),
                   "p_mw": round(float(injection_p[i]), 6) + 0.0, "q_mvar": round(float(injection_q[i]), 6) + 0.0}
                  for i, row in enumerate(bus)],
        "lines": [{"from_bus": int(row[F_BUS]), "to_bus": int(row[T_BUS]), "transformer": bool(row[TAP] != 0),
                   "in_service": bool(row[BR_STATUS] > 0),
                   "p_from_mw": round(float(row[PF]), 6), "q_from_mvar": round(float(row[QF]), 6),
                   "p_to_mw": round(float(row[PT]), 6), "q_to_mvar": round(float(row[QT]), 6),
                   "loss_mw": round(float(row[PF] + row[PT]), 6)}
                  for row in branch],
        "seconds": round(time.monotonic() - started, 4),
    }
