#!/usr/bin/env bash
# Three "hosts" on one machine for the multi-host check (bench/multihost_stack.py, which runs this script
# itself; tests/multihost, python -m bench.multihost): network namespaces joined by
# veth pairs to a bridge, addresses only inside the sandbox. cv-svc (10.77.0.1) runs PostgreSQL, Redis and
# the web server; cv-w1 (10.77.0.2) and cv-w2 (10.77.0.3) run one Celery worker each. Needs root.
# Undo with scripts/netns_down.sh. Idempotent.
set -euo pipefail
BR=cvbr0
ip link show "$BR" >/dev/null 2>&1 || { ip link add "$BR" type bridge; ip addr add 10.77.0.254/24 dev "$BR"; }
ip link set "$BR" up
i=1
for ns in cv-svc cv-w1 cv-w2; do
  if ! ip netns list | grep -qw "$ns"; then
    ip netns add "$ns"
    ip link add "veth-$ns" type veth peer name eth0 netns "$ns"
    ip link set "veth-$ns" master "$BR" up
    ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  fi
  i=$((i + 1))
done
echo "namespaces up: cv-svc 10.77.0.1, cv-w1 10.77.0.2, cv-w2 10.77.0.3 (bridge $BR)"
