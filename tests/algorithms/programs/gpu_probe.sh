#!/bin/sh
# Stands in for a CUDA program (tests/queueing/test_resources.py): says which worker host ran it.
printf '{"result": {"ran": true}}\n'
