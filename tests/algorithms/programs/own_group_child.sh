#!/bin/sh
# Leaves a child that moves to a process group of its own, as timeout(1) and job-control shells do (it stays
# in the program's session), its stdio closed; then exits successfully, or with "wait", runs until stopped.
timeout 300 sleep 300 </dev/null >/dev/null 2>&1 &
printf '{"log": "pids %s %s"}\n' "$$" "$!"
printf '{"result": {"session": %s, "child": %s}}\n' "$$" "$!"
[ "$1" = "wait" ] || exit 0
while :; do sleep 0.1; done
