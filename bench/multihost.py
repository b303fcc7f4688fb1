"""Multi-host check with network namespaces (root only): the CLI around bench/multihost_stack.py.

cv-svc (10.77.0.1) runs a private PostgreSQL, redis-server, daphne and beat; cv-w1 and cv-w2 run one
Celery worker each and reach the services only over the veth links. Each "host" has its own MEDIA_ROOT, as
separate machines have separate disks. The check: tasks run on both workers, progress reaches a WebSocket
client of the web host, results and artifacts written on a worker host download through the web host.
``make test`` runs the same check and asserts it (tests/multihost/test_multihost.py); this script only
records what it saw.

    python -m bench.multihost      # makes the namespaces (scripts/netns_up.sh) and removes them afterwards

Writes bench/results/multihost.json. Extra environment (e.g. STORAGE_BACKEND/STORAGE_OPTIONS for an
S3-compatible store) is passed to every process; MULTIHOST_SHARED_MEDIA=1 gives every host one MEDIA_ROOT.
"""
from __future__ import annotations

import json
import os
from typing import Any

from bench.harness import RESULTS
from bench.multihost_stack import MultiHost, check


def main() -> dict[str, Any]:
    shared = os.environ.get("MULTIHOST_SHARED_MEDIA") == "1"
    with MultiHost(shared_media=shared) as hosts:
        out = check(hosts, tasks=12)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"multihost{'-shared' if shared else ''}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
