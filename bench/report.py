"""Writes benchmark results into docs/benchmarks.md, between generated-section markers, leaving the
hand-written text around them alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import harness

DOC = harness.ROOT / "docs" / "benchmarks.md"


def _replace(doc: str, name: str, body: str) -> str:
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in doc and end in doc:
        return doc[: doc.index(start)] + block + doc[doc.index(end) + len(end):]
    return doc.rstrip() + "\n\n" + block + "\n"


def write_section(name: str, body: str, path: Path = DOC) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    path.write_text(_replace(doc, name, body))


def throughput_markdown(results: dict[str, Any], command: str) -> str:
    meta = results["meta"]
    a = meta["args"]
    lines = [
        f"Run {meta['started']} at commit `{meta['commit']}` on {meta['cpus']} CPUs "
        f"(load average before/after: {meta['load_before'][0]:.1f} / {meta['load_after'][0]:.1f}); "
        f"worker: prefork, concurrency {a['concurrency']}, queue window {a['window']}; "
        f"{a['tasks']} tasks per round, best of {a['rounds']} interleaved rounds; "
        + ("no `VACUUM (ANALYZE)` between phases (`--no-settle`)." if a.get("no_settle") else
           "`VACUUM (ANALYZE)` before each measured phase, as autovacuum would (off on this machine)."),
        "",
        f"Command: `{command}`",
        "",
        "**End-to-end throughput** (`demo.noop` through `POST /api/v1/tasks/batch/` until every task is "
        "SUCCEEDED, vs raw Celery no-op tasks on the same broker and worker):",
        "",
        "| broker | raw Celery tasks/s | Conveyor, 1 id/message | ratio | Conveyor, batched dispatch | ratio "
        "| Conveyor, deep queue | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, b in results["brokers"].items():
        t = b["throughput"]
        lines.append(f"| {name} | {t['raw_celery']['tasks_per_second']} | {t['conveyor']['tasks_per_second']} | "
                     f"**{t['ratio']}** | {t['conveyor_batched']['tasks_per_second']} (≤{t['dispatch_batch']} ids) | "
                     f"**{t['ratio_batched']}** | {t['conveyor_deep']['tasks_per_second']} (≤{t['deep_batch']} ids, "
                     f"window {t['deep_window']}) | **{t['ratio_deep']}** |")
    lines += ["", "**Dispatch latency** on an idle worker, ms (Conveyor: submit → RUNNING; raw Celery: send → "
              "task start):", "",
              "| broker | n | raw p50 | raw p99 | Conveyor p50 | Conveyor p99 |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, b in results["brokers"].items():
        r, c = b["latency"]["raw_celery"], b["latency"]["conveyor"]
        lines.append(f"| {name} | {c['n']} | {r['p50_ms']} | {r['p99_ms']} | {c['p50_ms']} | {c['p99_ms']} |")
    lines += ["", "**Memory** (RSS of the process group, MiB: web = daphne; worker = parent + 2 pool children + "
              "embedded beat), idle and peak during the throughput rounds:", "",
              "| broker | web idle | web peak | worker idle | worker peak |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, b in results["brokers"].items():
        m = b.get("rss_mb")
        if m:
            lines.append(f"| {name} | {m['idle']['web']} | {m['peak_under_load']['web']} | {m['idle']['worker']} | "
                         f"{m['peak_under_load']['worker']} |")
    for name, b in results["brokers"].items():
        if "submit_api" not in b:
            continue
        lines += ["", f"**Submit API** (single `POST /api/v1/tasks/`, JWT, vs `POST /bench/insert/` doing one "
                  f"INSERT in the same daphne process; broker {name}; {a['submit_seconds']} s per level):", "",
                  "| concurrency | bare req/s | bare p50 ms | bare p99 ms | submit req/s | submit p50 ms | "
                  "submit p99 ms | req/s ratio | non-2xx |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for c, row in b["submit_api"].items():
            bare, sub = row["bare_insert"], row["conveyor_submit"]
            bad = {k: v for part in (bare, sub) for k, v in part["statuses"].items() if not k.startswith("2")}
            lines.append(f"| {c} | {bare['requests_per_second']} | {bare['p50_ms']} | {bare['p99_ms']} | "
                         f"{sub['requests_per_second']} | {sub['p50_ms']} | {sub['p99_ms']} | {row['ratio_rps']} | "
                         f"{bad or 'none'} |")
    return "\n".join(lines)


def write_throughput(results: dict[str, Any], *, command: str) -> None:
    write_section("throughput", throughput_markdown(results, command))
    print(f"updated {DOC}")
