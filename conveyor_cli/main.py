"""``conveyor`` command line: login, submit, watch, ls, cancel, retry, logs, result, queues, workers.

Exit status: 0 success (or a task that SUCCEEDED), 1 error or FAILED task, 2 usage, 3 CANCELLED,
4 TIMED_OUT, 5 not logged in / token refused, 6 server trouble, 130 Ctrl-C, 141 our output was closed
(``conveyor ls | head -1``: quietly, as a program killed by SIGPIPE).
"""
from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conveyor_cli.client import EXIT_OUTPUT_CLOSED, CLIError, Client, NotAvailable, OutputClosed, json_body
from conveyor_cli.watch import EXIT_CODES, watch


def parse_param(item: str) -> tuple[str, Any]:
    """``key=value``; the value is JSON when it parses (``n=3``, ``flag=true``, ``xs=[1,2]``), else text.
    ``NaN``, ``Infinity`` and ``1e999`` are not JSON numbers (the API cannot take them): text too."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
    try:
        value = json.loads(raw)
        json.dumps(value, allow_nan=False)
    except (ValueError, RecursionError):
        return key, raw
    return key, value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text, flush=True)


# --- commands ------------------------------------------------------------------------------------

def cmd_login(client: Client, args: argparse.Namespace) -> int:
    try:
        username = args.username or input("username: ")
        password = args.password or os.environ.get("CONVEYOR_PASSWORD") or getpass.getpass("password: ")
    except EOFError:
        raise CLIError("no input: give -u/--username, and -p/--password or CONVEYOR_PASSWORD",
                       exit_code=2) from None
    client.login(username, password)
    print(f"logged in to {client.url} as {username}")
    return 0


def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"algorithm": args.algorithm, "params": dict(args.params)}
    for key in ("priority", "queue"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.label:
        body["labels"] = args.label
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    task = client.post("/api/v1/tasks/", body, headers=headers)
    emit(args, task, task["id"])
    if not args.wait:
        return 0
    return watch(client, task["id"], out=sys.stderr if args.json else sys.stdout, quiet=args.json)


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    return watch(client, args.id)


# The most the server gives in one page (its max_page_size); more rows are asked for page by page.
PAGE_MAX = 500


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {k: v for k, v in (("status", args.status), ("queue", args.queue),
                                                ("algorithm", args.algorithm)) if v}
    tasks: list[dict[str, Any]] = []
    while len(tasks) < args.limit:
        page = client.get("/api/v1/tasks/", params={**params, "page_size": min(args.limit - len(tasks), PAGE_MAX)})
        if not isinstance(page, dict):  # a server that does not paginate
            tasks += page
            break
        tasks += page["results"]
        cursor = parse_qs(urlsplit(page.get("next") or "").query).get("cursor")
        if not cursor or not page["results"]:
            break
        params["cursor"] = cursor[0]  # the next page of the same listing (the host in `next` may be internal)
    tasks = tasks[:args.limit]
    rows = [[t["id"], t["algorithm"], t["status"], f"{t['progress']['percent']:.0f}%", t["queue"], t["priority"],
             t["created_at"][:19].replace("T", " ")] for t in tasks]
    emit(args, tasks, table(rows, ["ID", "ALGORITHM", "STATUS", "PROGRESS", "QUEUE", "PRIO", "CREATED"]))
    return 0


# The most ids one bulk cancel or retry takes (the server's BULK_IDS_MAX); more are sent in several requests.
BULK_IDS_MAX = 1000
BULK_FILTERS = ("label", "status", "queue", "algorithm")


def bulk(client: Client, path: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """A bulk action's answer for ``args``: its ids (``BULK_IDS_MAX`` a request, the answers merged: counts
    added, lists joined) or its filters (--label, --status, …); None for one id (the caller's single call)."""
    filters = {name: getattr(args, name) for name in BULK_FILTERS if getattr(args, name)}
    if bool(args.ids) == bool(filters):
        raise CLIError("give task ids, or filters (--label, --status, --queue, --algorithm), not both",
                       exit_code=2)
    if filters:
        return client.post(path, {"filters": filters})
    ids = list(dict.fromkeys(args.ids))  # once each, also across requests
    if len(ids) == 1:
        return None
    parts = [client.post(path, {"task_ids": ids[start:start + BULK_IDS_MAX]})
             for start in range(0, len(ids), BULK_IDS_MAX)]
    return {key: merged([part[key] for part in parts]) for key in parts[0]}


def merged(values: list[Any]) -> Any:
    """One answer's value of several: numbers added, lists joined, objects joined."""
    if isinstance(values[0], dict):
        return {k: v for value in values for k, v in value.items()}
    return sum(values[1:], values[0])


def not_found(summary: dict[str, Any]) -> int:
    """Exit 1, the ids named, when an id names no task of yours."""
    if summary["not_found"]:
        return complain(f"not found: {' '.join(summary['not_found'])}", 1)
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    """``cancel ID``: that task's cancel, the task's new status printed (a finished task is a refused
    request, exit 1). ``cancel ID ID …`` or ``cancel --label L [--status S] [--queue Q] [--algorithm A]``:
    one bulk cancel (``POST /api/v1/tasks/cancel/``), its summary printed; exit 1 when an id names no task
    of yours."""
    summary = bulk(client, "/api/v1/tasks/cancel/", args)
    if summary is None:
        task = client.post(f"/api/v1/tasks/{args.ids[0]}/cancel/")
        note = " (cancel requested; the worker stops it)" if task["status"] == "RUNNING" else ""
        emit(args, task, f"{task['id']} {task['status']}{note}")
        return 0
    text = (f"cancelled {summary['cancelled']}, cancelling {summary['cancelling']} (running: their workers "
            f"stop them), already final {summary['already_final']}")
    emit(args, summary, text)
    return not_found(summary)


def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    """``retry ID``: that task's retry, the new task's id printed (a task not finished is a refused request,
    exit 1). ``retry ID ID …`` or ``retry --label L --status FAILED [--queue Q] [--algorithm A]``: one bulk
    retry (``POST /api/v1/tasks/retry/``), its summary printed, then the new tasks' ids, one a line; exit 1
    when an id names no task of yours. There a task that has a retry already is not retried again, so
    running the same command again (after a timeout, a 429 half-way) makes nothing twice; the single retry
    of one id makes a new task each time, as ``POST /tasks/{id}/retry/`` does."""
    summary = bulk(client, "/api/v1/tasks/retry/", args)
    if summary is None:
        task = client.post(f"/api/v1/tasks/{args.ids[0]}/retry/")
        emit(args, task, task["id"])
        return 0
    text = "\n".join([f"retried {summary['retried']}, already retried {summary['already_retried']} (not again), "
                       f"not finished {summary['not_final']} (left alone)", *summary["new_task_ids"]])
    emit(args, summary, text)
    return not_found(summary)


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    events: list[dict] = []
    after = args.after_seq
    while page := client.get(f"/api/v1/tasks/{args.id}/logs/", params={"after_seq": after}):
        events += page  # the server answers a page at a time: ask for the next until none is left
        after = page[-1]["seq"]
    lines = []
    for e in events:
        if e["event"] == "task.log":
            lines.append(e["data"].get("line", ""))
        elif not args.lines_only:
            lines.append(f"# {e['created_at'][:23]} {e['event']} {e['status']}")
    emit(args, events, "\n".join(lines))
    return 0


def cmd_result(client: Client, args: argparse.Namespace) -> int:
    """A stored (large) result comes as an attachment and is streamed as it is, whatever its size or type;
    an inline one comes wrapped (``{"task_id", "status", "result"}``) and is written as its ``result``."""
    with client.stream("GET", f"/api/v1/tasks/{args.id}/result/") as response:
        if response.headers.get("content-disposition", "").startswith("attachment"):
            chunks = response.iter_bytes(1 << 20)
        else:
            response.read()
            chunks = iter([json.dumps(json_body(response)["result"], indent=2).encode() + b"\n"])
        size = write_out(chunks, args.output)
    if args.output:
        print(f"wrote {size} bytes to {args.output}", file=sys.stderr)
    return 0


def write_out(chunks: Iterator[bytes], path: str | None) -> int:
    """Write ``chunks`` to ``path`` (stdout without one); returns the number of bytes written."""
    size = 0
    try:
        with open(path, "wb") if path else contextlib.nullcontext(sys.stdout.buffer) as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
            out.flush()
    except OSError as exc:
        if not path:
            raise OutputClosed(str(exc)) from exc
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None
    return size


def cmd_queues(client: Client, args: argparse.Namespace) -> int:
    page = client.get("/api/v1/queues/")
    queues = page["results"] if isinstance(page, dict) and "results" in page else page
    rows = []
    for q in queues:
        counts = q.get("counts") or {}
        wait = q.get("oldest_waiting_seconds")
        rows.append([q.get("name"), "paused" if q.get("paused") else "active", counts.get("PENDING", 0),
                     counts.get("QUEUED", 0), q.get("running", counts.get("RUNNING", 0)), q.get("concurrency", ""),
                     "" if wait is None else f"{wait:.0f}", q.get("throughput_per_minute", "")])
    emit(args, queues, table(rows, ["QUEUE", "STATE", "PENDING", "QUEUED", "RUNNING", "CONCURRENCY",
                                      "OLDEST WAIT s", "PER MIN"]))
    return 0


def cmd_workers(client: Client, args: argparse.Namespace) -> int:
    page = client.get("/api/v1/workers/")
    workers = page["results"] if isinstance(page, dict) and "results" in page else page
    rows = [[w.get("hostname"), w.get("status", ""), ",".join(w.get("queues") or []), w.get("pool", ""),
             w.get("concurrency", ""), w.get("running", ""), (w.get("last_heartbeat") or "")[:19].replace("T", " ")]
            for w in workers]
    emit(args, workers, table(rows, ["WORKER", "STATUS", "QUEUES", "POOL", "CONCURRENCY", "RUNNING",
                                     "LAST HEARTBEAT"]))
    return 0


# --- parser --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description="Submit and watch Conveyor tasks.")
    parser.add_argument("--url", "--server", dest="url", default=os.environ.get("CONVEYOR_URL"),
                        help="server base URL (env CONVEYOR_URL; default: the one you logged in to)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of tables")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("login", help="get a token pair and store it in the config dir")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="prefer the prompt or CONVEYOR_PASSWORD")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("submit", help="submit a task: ALGORITHM key=value …")
    p.add_argument("algorithm")
    p.add_argument("params", nargs="*", type=parse_param, metavar="key=value")
    p.add_argument("--priority", help="0-9 or low/normal/high/critical")
    p.add_argument("--queue")
    p.add_argument("--label", action="append", help="repeatable")
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="watch it; exit with its outcome")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("watch", help="live progress of a task; exits with its outcome")
    p.add_argument("id")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("ls", help="list your tasks (operators: all)")
    p.add_argument("--status")
    p.add_argument("--queue")
    p.add_argument("--algorithm")
    p.add_argument("--limit", type=positive_int, default=20, help="this many rows (default 20), page by page")
    p.set_defaults(func=cmd_ls)

    bulk_command(sub, "cancel", cmd_cancel, help="cancel tasks: by id, or all of yours matching --label/--status/…",
                 status="only tasks in this status (repeatable)")
    bulk_command(sub, "retry", cmd_retry,
                 help="retry finished tasks as new ones: by id, or yours matching --label and --status FAILED/…",
                 status="only tasks in this final status (repeatable; required with filters): FAILED, TIMED_OUT, "
                        "CANCELLED, SUCCEEDED")

    p = sub.add_parser("logs", help="a task's log lines and state changes")
    p.add_argument("id")
    p.add_argument("--after-seq", type=int, default=0)
    p.add_argument("--lines-only", action="store_true", help="only the algorithm's log lines")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("result", help="a succeeded task's result")
    p.add_argument("id")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_result)

    sub.add_parser("queues", help="queues: depth, running, paused").set_defaults(func=cmd_queues)
    sub.add_parser("workers", help="workers and their heartbeats").set_defaults(func=cmd_workers)
    return parser


def bulk_command(sub: Any, name: str, func: Any, *, help: str, status: str) -> None:
    """``NAME ID [ID …] | --label L [--status S …] [--queue Q] [--algorithm A]`` (``bulk``)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--label", help="every task with this label")
    p.add_argument("--status", action="append", help=status)
    p.add_argument("--queue")
    p.add_argument("--algorithm")
    p.set_defaults(func=func)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(Client(args.url), args)
    except NotAvailable as exc:
        return complain(f"{exc}: this server does not offer `{args.command}`", exc.exit_code)
    except CLIError as exc:
        return complain(str(exc), exc.exit_code)
    except (OutputClosed, BrokenPipeError):
        return output_closed()
    except OSError as exc:  # a local file (the config dir, say): name it, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        return complain(f"{where}{exc.strerror or exc}", 1)
    except KeyboardInterrupt:
        return 130


def complain(message: str, code: int) -> int:
    try:
        print(f"conveyor: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr is gone too: the exit status says it
    return code


def output_closed() -> int:
    """Whoever read our output stopped (``| head -1``): exit quietly, as programs killed by SIGPIPE do.
    stdout is pointed at /dev/null so that the interpreter's last flush does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_OUTPUT_CLOSED


__all__ = ["main", "EXIT_CODES"]
