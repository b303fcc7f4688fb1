#!/bin/sh
# A training whose loss diverges: NaN and infinities in its progress metrics, its result and the summary
# of a result file (Python's json module reads and writes them as the bare literals NaN, Infinity, -Infinity).
# {where}: "inline" sends {"result": …}; "file" makes result.json in $CONVEYOR_OUTPUT_DIR the result.
echo '{"progress": 50, "stage": "train", "message": "epoch 5", "metrics": {"loss": NaN, "grad_norm": Infinity, "lr": 0.1, "history": [1.5, -Infinity]}}'
if [ "$1" = "file" ]; then
  printf '[1.5, NaN]\n' > "$CONVEYOR_OUTPUT_DIR/result.json"
  echo '{"result_file": "result.json", "content_type": "application/json", "summary": {"last_loss": NaN}}'
else
  echo '{"result": {"loss": NaN, "best": -Infinity, "accuracy": 0.5}}'
fi
