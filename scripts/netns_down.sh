#!/usr/bin/env bash
# Remove what scripts/netns_up.sh created (processes still inside a namespace are killed with it).
set -u
for ns in cv-svc cv-w1 cv-w2; do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
  ip link del "veth-$ns" 2>/dev/null
done
ip link del cvbr0 2>/dev/null
echo "namespaces removed"
