#!/bin/sh
# Echoes what it was given: argv, stdin, the params file, its environment, its working directory.
stdin=$(cat)
printf '{"result": {"argv": ["%s", "%s"], "stdin": %s, "file": %s, "cwd": "%s", "secret_key_set": %s}}\n' \
  "$1" "$2" "$stdin" "$(cat "$CONVEYOR_PARAMS")" "$(pwd)" "$( [ -n "${SECRET_KEY:-}" ] && echo true || echo false )"
