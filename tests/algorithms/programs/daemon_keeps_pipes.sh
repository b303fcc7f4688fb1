#!/bin/sh
# Starts a daemon in a session of its own (it escapes the program's group and session, as documented) that
# keeps the program's stdout and stderr open, then reports its result and exits successfully.
setsid sleep 300 &
printf '{"result": {"daemon": %s}}\n' "$!"
