"""Where Conveyor's time goes: py-spy records the worker (parent and pool children) and the web server
while a throughput round runs, and prints the hottest Conveyor/Django/Celery frames (inclusive %).

    python -m bench.profile --tasks 2000 [--broker redis] [--batched]

Raw collapsed stacks are kept in bench/results/profile-<who>.txt (open them in speedscope).
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

from bench import bench_throughput as bt
from bench import harness


def top(path: Path, n: int = 40) -> list[tuple[float, str]]:
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].split("/")[-1] if " (" in frame else frame
            if name not in seen:
                seen.add(name)
                inclusive[name] += int(count)
    return [(100.0 * c / total, f) for f, c in inclusive.most_common(n)] if total else []


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", default="redis")
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--batched", action="store_true", help="use the batched-dispatch queue (several ids per message)")
    args = p.parse_args(argv)
    url = harness.BROKERS[args.broker]
    harness.setup_django(url)
    harness.prepare_database(concurrency=16)
    bt.truncate()
    port = harness.free_port()
    web, worker, broker = harness.web(url, port), harness.worker(url, concurrency=args.concurrency), bt.Broker(url)
    spies = []
    try:
        web.start()
        worker.start()
        harness.wait_http(port, proc=web)
        bt.wait_worker_ready(broker, worker)
        client, _ = bt.api_client(port)
        outs = {"worker": harness.RESULTS / "profile-worker.txt", "web": harness.RESULTS / "profile-web.txt"}
        for who, proc in (("worker", worker), ("web", web)):
            spies.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid), "--subprocesses",
                 "--idle", "-r", str(args.rate), "-f", "raw", "-o", str(outs[who]), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        result = bt.conveyor_throughput(client, args.tasks, 500, harness.BATCH_QUEUE if args.batched else harness.QUEUE)
        print(result)
    finally:
        for spy in spies:
            spy.send_signal(2)
            spy.wait(30)
        broker.close()
        worker.stop()
        web.stop()
    for who, path in outs.items():
        print(f"\n== {who} (inclusive % of samples, idle included) ==")
        for share, frame in top(path):
            print(f"{share:5.1f}%  {frame}")


if __name__ == "__main__":
    main(sys.argv[1:])
