"""What an external program writes that the adapter cannot use: a progress message with a field of the
wrong type is logged like any other unrecognised line, and an endless line is never held whole."""
from __future__ import annotations

import os
import sys
import textwrap
import threading
import tracemalloc

import pytest

from algorithms import process
from tests.conftest import unconsumed_queue

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Each test declares its own ``odd.output``; the first declaration of a name would keep it."""
    from algorithms import registry

    monkeypatch.setattr(registry, "_registry", dict(registry._registry))


def run_program(alice, tmp_path, source: str):
    """Declare ``source`` as an external algorithm and run one task of it in this process."""
    from algorithms import external
    from jobs import execution, runner, services
    from jobs.models import Status, Task, TaskEvent

    (tmp_path / "p.py").write_text(source)
    (tmp_path / "x.toml").write_text(textwrap.dedent(f'''
        [[algorithm]]
        name = "odd.output"
        argv = ["{sys.executable}", "{{here}}/p.py"]
    '''))
    external.register_file(tmp_path / "x.toml")
    spec = services.build_spec(algorithm="odd.output", params={}, queue=unconsumed_queue())
    task, _ = services.submit(owner=alice, spec=spec)
    Task.objects.filter(id=task.id).update(status=Status.QUEUED)
    outcome = runner.run(execution.claim(task_id=task.id, worker="w-1"))
    logged = [e.data["line"] for e in TaskEvent.objects.filter(task_id=task.id, event="task.log").order_by("seq")]
    return outcome, logged


@pytest.mark.parametrize("line", [
    '{"progress": "50%"}',
    '{"progress": 50, "stage": 7}',
    '{"progress": 50, "message": ["a"]}',
    '{"progress": NaN}',
    '{"progress": true}',
])
def test_a_progress_message_of_the_wrong_types_is_a_log_line(alice, tmp_path, line):
    source = f"print({line!r}); print('{{\"progress\": 60, \"stage\": \"s\"}}'); print('{{\"result\": 1}}')"

    outcome, logged = run_program(alice, tmp_path, source)

    assert outcome.status == "SUCCEEDED", outcome.error
    assert outcome.result == 1
    assert line in logged


def test_an_endless_line_is_cut_without_being_held_whole(monkeypatch):
    monkeypatch.setattr(process, "LINE_MAX", 1 << 20, raising=False)
    read, write = os.pipe()
    lines = process._Lines(0)  # unbounded: this test takes the lines only at the end

    def produce() -> None:
        with os.fdopen(write, "wb") as out:
            for _ in range(32):  # 32 MiB with no newline, then a normal line
                out.write(b"x" * (1 << 20))
            out.write(b"\n{\"result\": 1}\n")

    tracemalloc.start()
    try:
        writer = threading.Thread(target=produce)
        writer.start()
        with os.fdopen(read, "rb") as stream:
            process._pump(stream, "stdout", lines, threading.Event(), threading.Event())
        writer.join()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    got = []
    while not lines.empty():
        got.append(lines.get_nowait())
    assert [kind for kind, _ in got] == ["stdout"] * 3
    cut, message, end = (text for _, text in got)
    assert cut.startswith("x" * 10_000) and cut.endswith(f"[line cut: longer than {1 << 20} bytes]")
    assert len(cut) < process.CUT_KEPT + 100
    assert (message, end) == ('{"result": 1}', None)
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_a_chatty_programs_lines_are_written_together_in_order_with_its_messages(alice, tmp_path, monkeypatch):
    """Lines already waiting are logged in one transaction (not one commit each), every line still its own
    event, each stream's in the order the program wrote them, and before a message written after them."""
    from jobs import execution, services
    from jobs.models import TaskEvent

    writes: list[int] = []
    append_log = execution.append_log
    monkeypatch.setattr(execution, "append_log", lambda **kw: (writes.append(len(kw["lines"])), append_log(**kw))[1])
    source = textwrap.dedent("""
        import sys
        for i in range(3000):
            print(f"noise {i}", file=sys.stderr if i % 3 == 0 else sys.stdout)
            if i == 1499:
                print('{"progress": 50, "stage": "half"}')
        print('{"result": 1}')
    """)

    outcome, logged = run_program(alice, tmp_path, source)

    assert outcome.status == "SUCCEEDED", outcome.error
    number = lambda line: int(line.split()[-1])  # noqa: E731
    out = [number(line) for line in logged if line.startswith("noise")]
    err = [number(line) for line in logged if line.startswith("[stderr] noise")]
    assert out == [i for i in range(3000) if i % 3] and err == list(range(0, 3000, 3))
    assert sum(writes) == len(logged) and len(writes) < len(logged) / 10  # all of them, batched
    events = list(TaskEvent.objects.filter(event__in=["task.log", "task.progress"]).order_by("seq")
                  .values_list("event", "data"))
    half = [event for event, _ in events].index("task.progress")
    before = [number(data["line"]) for event, data in events[:half] if data["line"].startswith("noise")]
    assert before == [i for i in range(1500) if i % 3]  # stdout's lines before the message, not one after
