#!/usr/bin/env python3
"""external.py_stats: a Python program run through the external-process adapter.

Reads its params as JSON from stdin ({"values": [...], "delay": 0.1}), reports progress as JSON lines,
writes a CSV into $CONVEYOR_OUTPUT_DIR (an artifact) and prints {"result": ...}. Standard library
only: it runs under whatever python3 the worker has, not Conveyor's virtualenv.
"""
import json
import math
import os
import sys
import time


def emit(**message):
    print(json.dumps(message), flush=True)


def main():
    params = json.load(sys.stdin)
    values = params["values"]
    total, squares = 0.0, 0.0
    for i, value in enumerate(values, start=1):
        total += value
        squares += value * value
        time.sleep(params.get("delay", 0))
        emit(progress=100.0 * i / len(values), stage="sum", message=f"{i}/{len(values)}",
             metrics={"running_mean": total / i})
    mean = total / len(values)
    std = math.sqrt(max(0.0, squares / len(values) - mean * mean))
    print(f"computed the statistics of {len(values)} values")  # a plain line: logged as is
    with open(os.path.join(os.environ["CONVEYOR_OUTPUT_DIR"], "values.csv"), "w") as fh:
        fh.write("index,value\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    emit(result={"count": len(values), "mean": mean, "std": std, "min": min(values), "max": max(values)})


if __name__ == "__main__":
    main()
