#!/bin/sh
# external.sh_countdown: a POSIX shell program run through the external-process adapter.
# Its one param arrives as a whole argument from the argv template ("{count}"); the JSON params are
# also on stdin and in $CONVEYOR_PARAMS. Progress and the result are JSON lines on stdout.
count="$1"
i=0
while [ "$i" -lt "$count" ]; do
    i=$((i + 1))
    printf '{"progress": %d, "stage": "count", "message": "%d of %d"}\n' $((100 * i / count)) "$i" "$count"
    sleep 0.1
done
echo "lift-off" > "$CONVEYOR_OUTPUT_DIR/countdown.txt"
echo "counted to $count"
printf '{"result": {"counted": %d, "params": %s}}\n' "$count" "$(cat "$CONVEYOR_PARAMS")"
