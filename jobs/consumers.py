"""WebSocket consumers: ``/ws/tasks/<id>/`` (one task) and ``/ws/dashboard/`` (every visible task).

The protocol (README, "WebSocket protocol"):

* Authenticate with an access JWT in ``?token=`` or as the first message ``{"type": "auth", "token": …}``.
  A missing, invalid or expired token closes the socket with 4401, a task that is not the user's (or
  does not exist) with 4403, before any task data is sent.
* On connect: ``task.snapshot`` (the current row; its ``seq`` is the last event it reflects). With
  ``?after_seq=N`` the stored events ``N+1 … snapshot.seq`` follow (``"replay": true``), then the live
  stream. Every ``task.*`` event after the snapshot has a ``seq`` one above the one before it.
* A malformed ``?after_seq=`` (not an integer, or given twice) closes the socket with 4400, before authentication.
* When the access token expires the socket is closed with 4401; refresh it and reconnect with
  ``?after_seq=<last seq>``. Every ``WS_RECHECK_SECONDS`` the consumer reads the user again: deactivated
  or with a password changed since the token is 4401, no longer allowed to see what the socket streams
  (an operator demoted) is 4403.
* The server sends ``{"event": "ping"}`` every ``WS_PING_SECONDS``; ``{"type": "ping"}`` is answered
  with ``{"event": "pong"}``.
* Every ``WS_RECHECK_SECONDS`` the socket also catches up from the database with any event it should
  have streamed and did not: the channel layer loses what is published while its Redis connection is
  being re-established, and when that was a task's last event no later one would show the gap.

No gaps, no duplicates: the consumer joins the channel-layer group *before* it reads the database,
and holds live messages back until the snapshot and replay are out (they wait in the channel's queue
behind the handler that sends them; ``buffer`` catches any that a future Channels dispatches
concurrently). An event committed before the read is in the rows (its live copy is dropped by
``seq``); one committed after it is published after the group join (whose SUBSCRIBE was written to
Redis before the read began), so it arrives live. Live events of one task come from several processes
(web, worker, beat), so seq N+2 may arrive before N+1: the consumer then sends N+1 from the database
first (it is committed: N+2 was numbered under the task's row lock after N+1's commit) and drops the
late live copy as a duplicate. Replays and gap fills read ``REPLAY_PAGE`` rows at a time.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http import QueryDict
from django.utils import timezone
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer

from config.errors import InvalidInput
from config.permissions import is_operator
from jobs import events, selectors
from jobs.api.serializers import after_seq_of
from jobs.errors import TaskNotFound
from jobs.models import FINAL as FINAL_STATUSES

log = logging.getLogger(__name__)

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
QUEUES_GROUP = "queues.all"
WORKERS_GROUP = "workers.all"
REPLAY_PAGE = 1_000
DASHBOARD_SNAPSHOT_TASKS = 100
# The tasks a dashboard socket keeps a seq for (the newest seen, least recently first out): enough for the
# sweeps it shows; a task pushed out is streamed as it comes, as one never seen.
DASHBOARD_TRACKED_TASKS = 2_000
FINAL_EVENTS = frozenset({"task.succeeded", "task.failed", "task.cancelled", "task.timed_out"})


def _queues_group() -> str:
    """The group queue events go to: queueing/events.py names it when that module exists."""
    try:
        from queueing import events as queue_events  # type: ignore[attr-defined]
    except ImportError:
        return QUEUES_GROUP
    return getattr(queue_events, "QUEUES_GROUP", QUEUES_GROUP)


def _jsonable(data: Any) -> Any:
    """DRF serializer output (UUIDs, datetimes) as plain JSON types."""
    return json.loads(JSONRenderer().render(data))


def user_from_token(token: str | None) -> Any | None:
    """The active user an access JWT names, or None (missing, not a string, malformed, expired, refresh token…)."""
    if not token or not isinstance(token, str):
        return None
    from rest_framework_simplejwt.authentication import JWTAuthentication
    from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken, TokenError
    from rest_framework_simplejwt.settings import api_settings as jwt_settings

    auth = JWTAuthentication()
    try:
        validated = auth.get_validated_token(token.encode())
        user = auth.get_user(validated)
    except (InvalidToken, TokenError, AuthenticationFailed):
        return None
    if not user.is_active:
        return None
    is_operator(user)  # cache the group lookup now, while we are on a sync thread
    user._conveyor_token_exp = validated.get("exp")
    user._conveyor_token_password = validated.get(jwt_settings.REVOKE_TOKEN_CLAIM)  # see ``_recheck``
    return user


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Authentication, the ping loop, and buffer-then-stream delivery shared by both endpoints."""

    groups_to_join: list[str]

    async def connect(self) -> None:
        self.user: Any = None
        self.ready = False
        self.buffer: list[dict[str, Any]] = []
        self.joined: list[str] = []
        self.ping_task: asyncio.Task[None] | None = None
        self.expiry_task: asyncio.Task[None] | None = None
        self.auth_timer: asyncio.Task[None] | None = None
        self.recheck_task: asyncio.Task[None] | None = None
        self.delivering = asyncio.Lock()  # live events and the re-check's catch-up, one at a time
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.query = {k: v[-1] for k, v in query.items()}
        await self.accept()
        try:  # the query as the REST API reads it: ``?after_seq`` given twice is refused there too
            self.after_seq = after_seq_of(QueryDict(self.scope.get("query_string", b"")))
        except (ValidationError, InvalidInput):
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        token = self.query.get("token")
        if token:
            await self.authenticate(token)
        else:
            # The token may come as the first message (keeps it out of access logs and URLs).
            self.auth_timer = asyncio.create_task(self._auth_deadline())

    async def _auth_deadline(self) -> None:
        await asyncio.sleep(settings.CONVEYOR.get("WS_AUTH_TIMEOUT_SECONDS", 10))
        if self.user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def authenticate(self, token: str | None) -> None:
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        self.user = await database_sync_to_async(user_from_token)(token)
        if self.user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        refused = await database_sync_to_async(self.refusal)(self.user)
        if refused:
            await self.close(code=refused)
            return
        # Join first, read second: see the module docstring.
        for group in self.groups_to_join:
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.append(group)
        if not await self.send_initial():
            return
        for message in self.buffer:
            await self.deliver(message)
        self.buffer = []
        self.ready = True
        self.ping_task = asyncio.create_task(self._ping_loop())
        self.recheck_task = asyncio.create_task(self._recheck_loop())
        self.expiry_task = asyncio.create_task(self._expire(getattr(self.user, "_conveyor_token_exp", None)))

    async def _expire(self, exp: float | None) -> None:
        """Close with 4401 when the access token expires; the client refreshes it and resumes
        with ``after_seq``, so a socket never outlives the credentials that opened it."""
        if exp is None:
            return
        await asyncio.sleep(max(0.0, exp - timezone.now().timestamp()))
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _recheck_loop(self) -> None:
        """Nor the rights behind them, by more than ``WS_RECHECK_SECONDS``: a deactivated user is
        closed with 4401, one who may no longer see what the socket streams with 4403."""
        interval = settings.CONVEYOR.get("WS_RECHECK_SECONDS", 30.0)
        while True:
            await asyncio.sleep(interval)
            try:
                refused = await database_sync_to_async(self._recheck)()
            except Exception:  # a database blip: the next re-check reads again
                log.warning("could not re-check a socket's user", exc_info=True)
                continue
            if refused:
                await self.close(code=refused)
                return
            try:
                async with self.delivering:
                    await self.catch_up()
            except Exception:  # a database blip: the next re-check tries again
                log.warning("could not catch a socket up", exc_info=True)

    async def catch_up(self) -> None:
        """Send the stored events that should have come live and did not (see the module docstring)."""

    def _recheck(self) -> int | None:
        from rest_framework_simplejwt.utils import get_md5_hash_password

        user = type(self.user).objects.filter(pk=self.user.pk, is_active=True).first()
        if user is None or get_md5_hash_password(user.password) != self.user._conveyor_token_password:
            return CLOSE_UNAUTHENTICATED  # deactivated, deleted, or its password changed since the token
        return self.refusal(user)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if self.user is None:
            if kind == "auth":
                await self.authenticate(content.get("token"))
            else:
                await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if kind == "ping":
            await self.send_json({"event": "pong", "timestamp": events.iso(timezone.now())})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        try:
            await super().receive(text_data=text_data, bytes_data=bytes_data, **kwargs)
        except (ValueError, RecursionError):  # not JSON (or nested too deep): before auth that is a failed
            # auth, after it we ignore it
            if self.user is None:
                await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _ping_loop(self) -> None:
        interval = settings.CONVEYOR.get("WS_PING_SECONDS", 20.0)
        while True:
            await asyncio.sleep(interval)
            # A failed send means the peer is gone; daphne's protocol-level ping timeout closes it.
            await self.send_json({"event": "ping", "timestamp": events.iso(timezone.now())})

    async def disconnect(self, code: int) -> None:
        for task in (self.ping_task, self.auth_timer, self.expiry_task, self.recheck_task):
            if task is not None:
                task.cancel()
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    # --- channel-layer handlers (``type`` "task.event", "task.events", "queue.event", "worker.event") ---------

    async def task_event(self, message: dict[str, Any]) -> None:
        if not self.ready:
            self.buffer.append(message)
            return
        async with self.delivering:
            await self.deliver(message)

    async def task_events(self, message: dict[str, Any]) -> None:
        """Several events committed together (a batch), in order."""
        for body in message["payloads"]:
            await self.task_event({"type": "task.event", "payload": body})

    async def queue_event(self, message: dict[str, Any]) -> None:
        if self.ready:
            await self.send_json(message["payload"])

    worker_event = queue_event

    async def send_stored(self, task_id: Any, *, after: int, before: int | None = None,
                          include_logs: bool = True) -> int:
        """Send the task's stored events after seq ``after`` (and before ``before``), a page at a time so a
        long history is never all in memory; returns the last seq sent (0 if none)."""
        last = 0
        while True:
            page = await database_sync_to_async(stored_events)(task_id, after=after, before=before,
                                                               include_logs=include_logs)
            for body in page:
                await self.send_json(body)
            if page:
                last = after = page[-1]["seq"]
            if len(page) < REPLAY_PAGE:
                return last

    @staticmethod
    def _stored(task_ids: list[Any]) -> dict[str, tuple[int, bool]]:
        """Each task's last seq, and whether it is final, as the database has them now."""
        from jobs.models import Task

        rows = Task.objects.filter(id__in=task_ids).values_list("id", "last_seq", "status")
        return {str(task_id): (seq, status in FINAL_STATUSES) for task_id, seq, status in rows}

    async def send_initial(self) -> bool:
        """Send the snapshot (and a replay); False if the socket was closed instead."""
        raise NotImplementedError

    def refusal(self, user: Any) -> int | None:
        """None if ``user`` may have this socket (and what it streams is set up), else its close code.
        Runs on a sync thread, at connect and at every re-check."""
        raise NotImplementedError

    async def deliver(self, message: dict[str, Any]) -> None:
        raise NotImplementedError


@dataclasses.dataclass
class Seen:
    """What a dashboard socket has streamed of one task: up to seq ``last``; ``first``, its first live event
    (0 for a task of the snapshot); ``final``, a final state among them (nothing more to catch up)."""

    last: int
    first: int
    final: bool


def _progress_at(task: Any, seq: int) -> dict[str, Any]:
    """The task's progress fields as they stood at event ``seq``."""
    from jobs.models import TaskEvent

    progress: dict[str, Any] = {"percent": 0.0, "stage": "", "message": "", "metrics": {}}
    if seq > 0:
        row = (TaskEvent.objects.filter(task=task, event="task.progress", seq__lte=seq)
               .order_by("-seq").only("data").first())
        if row is not None:
            progress.update({key: row.data[key] for key in progress if key in row.data})
    return progress


def stored_events(task_id: Any, *, after: int, before: int | None = None,
                  include_logs: bool = True) -> list[dict[str, Any]]:
    """Up to ``REPLAY_PAGE`` stored events of the task after seq ``after`` (and before ``before``), each
    with ``"replay": true``, as the live stream sent them."""
    from jobs.models import Task

    task = Task.objects.filter(id=task_id).first()
    if task is None:  # deleted meanwhile (the admin): nothing left to fill in
        return []
    rows = selectors.events_for(task, after_seq=after)
    if before is not None:
        rows = rows.filter(seq__lt=before)
    if not include_logs:
        rows = rows.exclude(event="task.log")
    # A stored state change does not hold the progress of its moment (a live one does): carry it
    # forward from the progress rows, so a replay reads like the live stream did.
    progress = _progress_at(task, after)
    bodies: list[dict[str, Any]] = []
    for row in rows[:REPLAY_PAGE]:
        body = dict(events.from_row(row, task))
        if row.event == "task.progress":
            progress = {key: body[key] for key in progress}
        else:
            body.update(progress)
        body["replay"] = True
        bodies.append(body)
    return bodies


class TaskConsumer(LiveConsumer):
    """``/ws/tasks/<id>/``: one task's snapshot, the events after ``?after_seq``, then live events."""

    def refusal(self, user: Any) -> int | None:
        try:
            self.task = selectors.task_for(user, self.scope["url_route"]["kwargs"]["task_id"])
        except TaskNotFound:
            return CLOSE_FORBIDDEN
        self.groups_to_join = [events.task_group(self.task.id)]
        return None

    async def send_initial(self) -> bool:
        snapshot = await database_sync_to_async(self._snapshot)()
        if snapshot is None:  # deleted since the access check (task retention, the admin)
            await self.close(code=CLOSE_FORBIDDEN)
            return False
        await self.send_json(snapshot)
        replayed = 0
        if self.after_seq is not None:
            # Rows past the snapshot's seq may already be committed: send them too (the live copy
            # is dropped by seq), so nothing is skipped between the snapshot and the live stream.
            replayed = await self.send_stored(self.task.id, after=self.after_seq)
        self.last_seq = max(snapshot["seq"], replayed)
        return True

    def _snapshot(self) -> dict[str, Any] | None:
        from jobs.api.serializers import TaskOut

        task = type(self.task).objects.filter(id=self.task.id).first()
        if task is None:
            return None
        snapshot = dict(events.payload(task, "task.snapshot", task.last_seq, None, timezone.now()))
        snapshot["task"] = _jsonable(TaskOut(task).data)
        return snapshot

    async def catch_up(self) -> None:
        stored = await database_sync_to_async(self._stored)([self.task.id])
        if stored.get(str(self.task.id), (0, False))[0] > self.last_seq:
            self.last_seq = max(self.last_seq, await self.send_stored(self.task.id, after=self.last_seq))

    async def deliver(self, message: dict[str, Any]) -> None:
        body = message["payload"]
        if body["seq"] <= self.last_seq:
            return  # already sent from the database (replay, a gap) or reflected in the snapshot
        if body["seq"] > self.last_seq + 1:  # published before an earlier event: see the module docstring
            await self.send_stored(self.task.id, after=self.last_seq, before=body["seq"])
        self.last_seq = body["seq"]
        await self.send_json(body)


class DashboardConsumer(LiveConsumer):
    """``/ws/dashboard/``: events of the user's tasks (operators: all tasks, queue and worker events),
    and the user's own notices (``webhook.disabled``).

    Log lines are left out (the task socket streams them); progress arrives already coalesced.
    """

    def refusal(self, user: Any) -> int | None:
        operator = is_operator(user)
        if self.joined:  # a re-check: an operator's stream of every task ends with the rights to it
            return CLOSE_FORBIDDEN if self.operator and not operator else None
        self.operator = operator
        if operator:
            self.groups_to_join = [events.ALL_GROUP, _queues_group(), WORKERS_GROUP]
        else:
            self.groups_to_join = [events.user_group(user.id)]
        self.groups_to_join.append(events.notice_group(user.id))  # not the user's group: no task event twice
        self.seen: dict[str, Seen] = {}
        return None

    async def send_initial(self) -> bool:
        snapshot = await database_sync_to_async(self._read)()
        self.seen = {t["id"]: Seen(t["last_seq"], 0, t["status"] in FINAL_STATUSES) for t in snapshot["tasks"]}
        await self.send_json(snapshot)
        return True

    def _read(self) -> dict[str, Any]:
        from jobs.api.serializers import TaskOut

        tasks = list(selectors.tasks_for(self.user).select_related("owner")[:DASHBOARD_SNAPSHOT_TASKS])
        rows = _jsonable(TaskOut(tasks, many=True).data)
        for row, task in zip(rows, tasks):
            row["last_seq"] = task.last_seq
        return {
            "event": "dashboard.snapshot",
            "user": {"username": self.user.get_username(), "operator": self.operator},
            "tasks": rows,
            "timestamp": events.iso(timezone.now()),
        }

    async def deliver(self, message: dict[str, Any]) -> None:
        """As the task socket does, per task: drop what was sent already and fill a gap from the database,
        from the snapshot's seq for a task of the snapshot, from its first live event for any other. That
        first event may itself be late: the ones numbered below it pass as they come (the client orders
        them by seq); they were never sent, and no gap fill reaches below it. Log lines count in the seq
        but are left out. The newest ``DASHBOARD_TRACKED_TASKS`` tasks are kept track of."""
        body = message["payload"]
        task_id, seq = body["task_id"], body["seq"]
        seen = self.seen.pop(task_id, None)
        if seen is None:
            seen = Seen(seq, seq, False)
        elif seq <= seen.last:
            self.seen[task_id] = seen
            if seq >= seen.first:
                return  # sent already (live, or from the database)
        else:
            if seq > seen.last + 1:
                await self.send_stored(task_id, after=seen.last, before=seq, include_logs=False)
            seen.last = seq
        seen.final = seen.final or body["event"] in FINAL_EVENTS
        self.seen[task_id] = seen  # the most recently seen last
        while len(self.seen) > DASHBOARD_TRACKED_TASKS:
            del self.seen[next(iter(self.seen))]
        if body["event"] != "task.log":
            await self.send_json(body)

    async def catch_up(self) -> None:
        """The tracked tasks not final yet whose stored events went past what was streamed."""
        open_tasks = [task_id for task_id, seen in self.seen.items() if not seen.final]
        if not open_tasks:
            return
        stored = await database_sync_to_async(self._stored)(open_tasks)
        for task_id, (last_seq, final) in stored.items():
            seen = self.seen.get(task_id)
            if seen is None or last_seq <= seen.last:
                continue
            after, seen.last, seen.final = seen.last, last_seq, final
            await self.send_stored(task_id, after=after, before=last_seq + 1, include_logs=False)
