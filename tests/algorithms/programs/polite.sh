#!/bin/sh
# Sleeps until terminated; SIGTERM ends it (the default action).
printf '{"log": "pids %s"}\n' "$$"
printf 'not json on stdout\n'
printf 'a line on stderr\n' >&2
while :; do sleep 0.1; done
