#!/bin/sh
# Exits at once, successfully, leaving a background child behind in its process group.
sleep 300 &
printf '{"log": "pids %s %s"}\n' "$$" "$!"
printf '{"result": {"left_behind": %s}}\n' "$!"
