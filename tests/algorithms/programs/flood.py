"""Writes argv[1] MiB of argv[2]-byte lines (100 by default) as fast as it can: progress messages on stdout,
or with argv[3] = "stderr" plain lines on stderr; then its result."""
import sys

mib, size = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 100
if sys.argv[3:] == ["stderr"]:
    out, line = sys.stderr.buffer, b"y" * (size - 1) + b"\n"
else:
    head, tail = b'{"progress": 50, "stage": "flood", "message": "', b'"}\n'
    out, line = sys.stdout.buffer, head + b"x" * (size - len(head) - len(tail)) + tail
for _ in range(mib * 1024 * 1024 // size):
    out.write(line)
out.flush()
print('{"result": {"flooded": %d}}' % mib, flush=True)
