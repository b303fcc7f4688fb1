#!/bin/sh
# Ignores SIGTERM (and so does its child, which inherits the ignored signal): only SIGKILL stops them.
trap '' TERM
sleep 300 &
printf '{"log": "pids %s %s"}\n' "$$" "$!"
printf '{"progress": 10, "stage": "stubborn", "message": "ignoring SIGTERM"}\n'
while :; do sleep 0.1; done
