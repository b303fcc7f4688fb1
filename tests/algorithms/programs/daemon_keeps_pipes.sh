#!/bin/sh
# Starts a daemon in a session of its own (it escapes the program's group and session, as documented) that
# keeps the program's stdout and stderr open, then reports its result and exits successfully.
setsid sleep 300 &
# Until setsid() has run, the daemon is still in the program's session (and stopped with it when the
# program exits): on a busy machine that can take a while. Field 6 of /proc/<pid>/stat is the session.
while [ "$(cut -d' ' -f6 "/proc/$!/stat")" != "$!" ]; do sleep 0.01; done
printf '{"result": {"daemon": %s}}\n' "$!"
