"""``conveyor`` command line: login, submit (one task, or a file of them), watch, ls, cancel, retry, logs,
result, queues, workers.

Exit status: 0 success (or a task that SUCCEEDED), 1 error or FAILED task, 2 usage, 3 CANCELLED,
4 TIMED_OUT, 5 not logged in / token refused, 6 server trouble, 130 Ctrl-C, 141 our output was closed
(``conveyor ls | head -1``: quietly, as a program killed by SIGPIPE).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import json
import os
import re
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conveyor_cli.client import (EXIT_OUTPUT_CLOSED, CLIError, Client, NotAvailable, OutputClosed, error_message,
                                 json_body)
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
    if args.from_file is not None:
        return submit_file(client, args)
    if args.algorithm is None:
        raise CLIError("give ALGORITHM [key=value …], or --from-file FILE", exit_code=2)
    if args.batch_size is not None:
        raise CLIError("--batch-size goes with --from-file", exit_code=2)
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


# The most tasks one batch submit takes (the server's TASK_BATCH_MAX, 1000 unless its operator changed it):
# the default --batch-size of ``submit --from-file``.
BATCH_MAX = 1000
# What one task of a batch may say: the body of a single submit (``POST /api/v1/tasks/``). The server refuses
# a key it does not know too, but checked here every bad line of the file is named before anything is sent.
TASK_KEYS = ("algorithm", "params", "priority", "queue", "max_retries", "timeout_seconds", "labels", "webhook_url")
# The server's longest Idempotency-Key.
IDEMPOTENCY_KEY_MAX = 200
# How many bad lines one refusal names (it counts them all).
BAD_LINES_SHOWN = 20


def chunk_key(key: str, number: int) -> str:
    """The Idempotency-Key of the ``number``-th (from 1) batch of ``submit --from-file --idempotency-key
    KEY``. Not ``KEY#<n>``: the server stores a batch's tasks under ``<batch key>#<index>`` and refuses
    keys ending in "#" and digits for single tasks, so ``KEY#chunk-<n>`` (its tasks: ``KEY#chunk-<n>#<i>``)."""
    return f"{key}#chunk-{number}"


def read_tasks(path: str) -> list[tuple[int, dict[str, Any]]]:
    """The tasks of a JSON-lines file (``-``: stdin), with their line numbers; blank lines skipped. Every bad
    line is a usage error (exit 2) naming it, raised before anything is sent."""
    name = "stdin" if path == "-" else path
    try:
        with contextlib.nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb") as fh:
            raw_lines = fh.read().splitlines()
    except OSError as exc:
        raise CLIError(f"cannot read {name}: {exc.strerror or exc}", exit_code=2) from None
    tasks: list[tuple[int, dict[str, Any]]] = []
    bad: list[str] = []
    for number, raw in enumerate(raw_lines, 1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            bad.append(f"line {number}: not UTF-8 text")
            continue
        if not text.strip():
            continue
        problem = task_problem(text)
        if problem:
            bad.append(f"line {number}: {problem}")
        else:
            tasks.append((number, json.loads(text)))
    if bad:
        more = f"\n  … and {len(bad) - BAD_LINES_SHOWN} more" if len(bad) > BAD_LINES_SHOWN else ""
        raise CLIError(f"{name}: {len(bad)} bad line{'s' if len(bad) > 1 else ''}, nothing was sent\n  "
                       + "\n  ".join(bad[:BAD_LINES_SHOWN]) + more, exit_code=2)
    if not tasks:
        raise CLIError(f"{name}: no tasks (one JSON object a line: {{\"algorithm\": …, \"params\": {{…}}}})",
                       exit_code=2)
    return tasks


def task_problem(text: str) -> str:
    """What is wrong with one line of ``submit --from-file`` ("" when nothing is)."""
    try:
        item = json.loads(text)
        json.dumps(item, allow_nan=False)  # NaN, Infinity, 1e999: Python reads them, the API cannot
    except RecursionError:
        return "not JSON: nested too deep"
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg}, at column {exc.colno})"
    except ValueError:  # json.dumps: NaN, Infinity or a float out of range
        return 'NaN and infinities are not JSON numbers (write them as strings: "NaN", "Infinity")'
    if not isinstance(item, dict):
        return f"not a JSON object (a task is {{\"algorithm\": …, \"params\": {{…}}}}), got {type(item).__name__}"
    if not isinstance(item.get("algorithm"), str) or not item["algorithm"]:
        return "no \"algorithm\" (a non-empty string)"
    unknown = [key for key in item if key not in TASK_KEYS]
    if unknown:
        keys = ", ".join(map(repr, unknown))
        return f"unknown key{'s' if len(unknown) > 1 else ''} {keys} (a task takes: {', '.join(TASK_KEYS)})"
    return ""


def submit_file(client: Client, args: argparse.Namespace) -> int:
    """``submit --from-file FILE``: one task per line, sent as batch submits (``POST /api/v1/tasks/batch/``)
    of ``--batch-size`` (default BATCH_MAX) tasks each, in order; each batch all or nothing. ``--queue`` and
    ``--priority`` apply to the lines without their own, ``--label`` is added to every line's labels. The new
    ids are printed, one a line as each batch is made (``--json``: ``{"tasks": [...]}`` once, what was made
    also when a later batch fails). ``--idempotency-key K``: batch n is sent with ``K#chunk-<n>``, so running
    the same command again (the same file, key and batch size) makes nothing twice and finishes what a
    failure left undone. ``--wait`` is a usage error here: follow them with ``ls --label``."""
    if args.algorithm is not None or args.params:
        raise CLIError("give ALGORITHM [key=value …] or --from-file FILE, not both", exit_code=2)
    if args.wait:
        raise CLIError("--wait follows one task; for a --from-file batch use `conveyor ls --label L` "
                       "(give the batch a --label) or `conveyor watch ID`", exit_code=2)
    size = args.batch_size or BATCH_MAX
    key = args.idempotency_key
    if key is not None and len(chunk_key(key, 10 ** 6)) > IDEMPOTENCY_KEY_MAX:  # room for any chunk number
        raise CLIError(f"--idempotency-key: at most {IDEMPOTENCY_KEY_MAX - len(chunk_key('', 10 ** 6))} characters "
                       f"with --from-file (batch n is sent with KEY#chunk-<n>)", exit_code=2)
    lines = read_tasks(args.from_file)
    made: list[dict[str, Any]] = []
    try:
        for number, start in enumerate(range(0, len(lines), size), 1):
            chunk = lines[start:start + size]
            tasks = send_chunk(client, [with_defaults(item, args) for _, item in chunk], [n for n, _ in chunk],
                               key=chunk_key(key, number) if key else None)
            made += tasks
            if not args.json:
                print("\n".join(t["id"] for t in tasks), flush=True)
    except CLIError as exc:
        if made:
            first, last = lines[0][0], lines[len(made) - 1][0]
            done = (f"{len(made)} tasks (lines {first}-{last}) were" if len(made) > 1 else f"1 task (line {first}) was")
            again = (f"run the same command again (the same file, --idempotency-key {key} and batch size) to "
                     f"submit the rest without making those again" if key else
                     "sending the file again makes them again: cut those lines, or use --idempotency-key next time")
            exc.args = (f"{exc}\n{done} submitted (their ids are printed); {again}",)
        raise
    finally:
        if args.json and made:
            print(json.dumps({"tasks": made}, indent=2), flush=True)
    return 0


def with_defaults(item: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A line's task with the command's ``--queue``/``--priority`` where it has none and its ``--label``s added."""
    body = dict(item)
    for name in ("queue", "priority"):
        if getattr(args, name) is not None:
            body.setdefault(name, getattr(args, name))
    if args.label and isinstance(body.get("labels", []), list):
        body["labels"] = list(dict.fromkeys([*body.get("labels", []), *args.label]))
    return body


ITEM_FIELD = re.compile(r"^tasks\[(\d+)\]\.?")


def send_chunk(client: Client, items: list[dict[str, Any]], numbers: list[int], *, key: str | None) -> list[Any]:
    """One batch submit; a refusal (400) names the file's lines (``line 1004: params.seconds``), not the
    batch's indexes. A batch sent before with ``key`` (200, not 201) is said on stderr."""
    headers = {"Idempotency-Key": key} if key else None
    where = f"lines {numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else f"line {numbers[0]}"
    try:
        response = client.request("POST", "/api/v1/tasks/batch/", json={"tasks": items}, headers=headers,
                                  ok=(200, 201, 400))
        body = json_body(response)
    except NotAvailable:
        raise
    except CLIError as exc:
        exc.args = (f"the batch of {where}: {exc}",)
        raise
    if response.status_code == 400:
        error = body.get("error") if isinstance(body, dict) else None
        fields = error.get("fields") if isinstance(error, dict) else None
        if not isinstance(fields, dict) or not fields:
            raise CLIError(f"the server refused the batch of {where}: {error_message(response)}")

        def named(field: str) -> str:
            """``tasks[3].params.seconds`` → ``line 1004: params.seconds``: the file's line, not the index."""
            match = ITEM_FIELD.match(field)
            if not match or int(match.group(1)) >= len(numbers):
                return field
            rest = field[match.end():]
            return f"line {numbers[int(match.group(1))]}" + (f": {rest}" if rest else "")

        problems = [f"{named(field)}: {'; '.join(map(str, texts))}" for field, texts in fields.items()]
        raise CLIError(f"the server refused the batch of {where}:\n  " + "\n  ".join(problems))
    if response.status_code == 200:
        print(f"conveyor: the batch of {where} was sent before with Idempotency-Key {key}: its tasks, not new ones",
              file=sys.stderr, flush=True)
    return body["tasks"]


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    return watch(client, args.id)


# The most the server gives in one page (its max_page_size); more rows are asked for page by page.
PAGE_MAX = 500


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    """The task list (``GET /api/v1/tasks/``) with the filters cancel and retry take: ``--label L``,
    ``--status S`` (repeatable: any of them, sent as ``status=A&status=B``), ``--queue Q``, ``--algorithm A``."""
    params: dict[str, Any] = filters_of(args)
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
# The task filters of ls, cancel and retry (``add_filters``), named as the task list and the bulk
# actions' ``filters`` name them.
TASK_FILTERS = ("label", "status", "queue", "algorithm")


def filters_of(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in TASK_FILTERS if getattr(args, name)}


def bulk(client: Client, path: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """A bulk action's answer for ``args``: its ids (``BULK_IDS_MAX`` a request, the answers merged: counts
    added, lists joined) or its filters (--label, --status, …); None for one id (the caller's single call)."""
    filters = filters_of(args)
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
            lines.append(f"# {e['created_at'][:23]} {e['event']} {e['status']}{why(e.get('data'))}")
    emit(args, events, "\n".join(lines))
    return 0


def why(data: Any) -> str:
    """``": <error> (<reason>)"``: what a state change's data says of its cause (``error``: what went wrong,
    ``reason``: why it moved), either alone, or "" for none; a line break of it goes on a ``#   `` line."""
    if not isinstance(data, dict):
        return ""
    error, reason = (str(data.get(key) or "").strip() for key in ("error", "reason"))
    text = f"{error} ({reason})" if error and reason and reason != error else error or reason
    return ": " + "\n#   ".join(text.splitlines()) if text else ""


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

def global_options(*, after_command: bool) -> argparse.ArgumentParser:
    """--url and --json, taken before the command and after it (``conveyor ls --json``). After it they have
    no default (SUPPRESS): a command's parser writes its defaults over what was parsed before the command,
    so a default there would undo ``--json ls``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--url", "--server", dest="url",
                        default=argparse.SUPPRESS if after_command else os.environ.get("CONVEYOR_URL"),
                        help="server base URL (env CONVEYOR_URL; default: the one you logged in to)")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS if after_command else False,
                        help="print the API's JSON instead of tables")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description="Submit and watch Conveyor tasks.",
                                     parents=[global_options(after_command=False)])
    sub = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(sub.add_parser, parents=[global_options(after_command=True)])

    p = command("login", help="get a token pair and store it in the config dir")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="prefer the prompt or CONVEYOR_PASSWORD")
    p.set_defaults(func=cmd_login)

    p = command("submit", help="submit a task: ALGORITHM key=value …; or many: --from-file FILE")
    p.add_argument("algorithm", nargs="?")
    p.add_argument("params", nargs="*", type=parse_param, metavar="key=value")
    p.add_argument("--from-file", metavar="FILE",
                   help="one task per line, a JSON object as the API's submit takes it ('-': stdin); sent as "
                        "batch submits; prints the new ids")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help=f"with --from-file: tasks per batch submit (default {BATCH_MAX}, the server's TASK_BATCH_MAX)")
    p.add_argument("--priority", help="0-9 or low/normal/high/critical (--from-file: for lines without one)")
    p.add_argument("--queue", help="--from-file: for lines without one")
    p.add_argument("--label", action="append", help="repeatable (--from-file: added to every line's)")
    p.add_argument("--idempotency-key", metavar="KEY", help="--from-file: batch n is sent with KEY#chunk-<n>")
    p.add_argument("--wait", action="store_true", help="watch it; exit with its outcome (not with --from-file)")
    p.set_defaults(func=cmd_submit)

    p = command("watch", help="live progress of a task; exits with its outcome")
    p.add_argument("id")
    p.set_defaults(func=cmd_watch)

    p = command("ls", help="list your tasks (operators: all), newest first")
    add_filters(p, label="only tasks with this label", status="only tasks in this status (repeatable: any of them)")
    p.add_argument("--limit", type=positive_int, default=20, help="this many rows (default 20), page by page")
    p.set_defaults(func=cmd_ls)

    bulk_command(command, "cancel", cmd_cancel, help="cancel tasks: by id, or all of yours matching --label/--status/…",
                 status="only tasks in this status (repeatable)")
    bulk_command(command, "retry", cmd_retry,
                 help="retry finished tasks as new ones: by id, or yours matching --label and --status FAILED/…",
                 status="only tasks in this final status (repeatable; required with filters): FAILED, TIMED_OUT, "
                        "CANCELLED, SUCCEEDED")

    p = command("logs", help="a task's log lines and state changes")
    p.add_argument("id")
    p.add_argument("--after-seq", type=int, default=0)
    p.add_argument("--lines-only", action="store_true", help="only the algorithm's log lines")
    p.set_defaults(func=cmd_logs)

    p = command("result", help="a succeeded task's result")
    p.add_argument("id")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_result)

    command("queues", help="queues: depth, running, paused").set_defaults(func=cmd_queues)
    command("workers", help="workers and their heartbeats").set_defaults(func=cmd_workers)
    return parser


def bulk_command(command: Any, name: str, func: Any, *, help: str, status: str) -> None:
    """``NAME ID [ID …] | --label L [--status S …] [--queue Q] [--algorithm A]`` (``bulk``)."""
    p = command(name, help=help)
    p.add_argument("ids", nargs="*", metavar="ID")
    add_filters(p, label="every task with this label", status=status)
    p.set_defaults(func=func)


def add_filters(p: argparse.ArgumentParser, *, label: str, status: str) -> None:
    """``--label L [--status S …] [--queue Q] [--algorithm A]``: the task filters (``TASK_FILTERS``) of
    ls, cancel and retry, defined once so that the three name and take them alike."""
    p.add_argument("--label", help=label)
    p.add_argument("--status", action="append", help=status)
    p.add_argument("--queue", help="only tasks of this queue")
    p.add_argument("--algorithm", help="only tasks of this algorithm")


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
