#!/bin/sh
# Writes a result file bigger than RESULT_INLINE_MAX and names it as the task's result.
head -c 600000 /dev/zero | tr '\0' 'x' > "$CONVEYOR_OUTPUT_DIR/result.txt"
echo "side note" > "$CONVEYOR_OUTPUT_DIR/note.txt"
printf '{"result_file": "result.txt", "content_type": "text/plain", "summary": {"bytes": 600000}}\n'
