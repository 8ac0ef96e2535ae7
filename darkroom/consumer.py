"""The generator's side of the queue: take one message at a time and run it.

Our own small loop over arq's message layout (`arq:job:{id}` holds the message, the
queue's sorted set orders ids by due time, `arq:in-progress:{id}` marks one as taken), in
place of arq's `Worker`, which offers no hook for what a GPU worker needs and was driven
through its private `_poll_iteration`:

- it takes a message only when it is free to run it (one at a time), and looks again the
  moment the message is done, so a busy worker never polls beside its pipeline;
- an idle one blocks on the queue's wake-up list (`Keys.wake`), which every enqueue
  pushes to, instead of polling; a delayed message wakes it when due;
- taking is one atomic script that follows the queue's fair order (owners in turn, then
  priority, then age: `darkroom.scheduling`), reads the due time from the Redis clock
  (never this machine's), skips messages another worker holds and owners at their
  running limit, and removes ids that have no message behind them, so junk in the set
  cannot stall the queue;
- every error of the loop is logged and survived with backoff: only `stop` ends it;
- a message that cannot be read, or that keeps failing (or killing its worker) without
  finishing, is poison: it goes to the queue's dead letters (`Keys.dead_letter`) with the
  reason, and its job is told (`reject`), so it can neither be retried forever nor stop
  a worker. A failure of a dependency (Redis, Postgres) is not held against a message.

The reconciler reads the same keys (`JobQueue.message_state`, `reset`), as it did arq's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import redis.exceptions
import sqlalchemy.exc
import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import deserialize_job

from darkroom import metrics, scheduling
from darkroom.keys import Keys
from darkroom.queue import (
    RUN_JOB,
    MalformedMessageError,
    QueueMessage,
    QueueRedis,
    deserialize,
    forget,
    release,
)

log = structlog.get_logger("darkroom.generator")

# Takes the next message by the queue's fair order (`darkroom.scheduling`), atomically and
# by the Redis clock, and counts the take; else answers how many ids it removed for having
# no message behind them, or put back in their lines (look again at once). Owners are
# looked at in turn order (lowest virtual time first); one at its running limit is parked
# (out of the turns, its virtual time kept) until a message of its ends; in its line,
# which holds only messages no one holds, the first one due is taken: it leaves the line
# for the owner's running set, and the owner's turn moves on by its step from the
# queue's clock; an owner with nothing due sleeps (out of the turns) until its soonest
# message is. Then, with nothing fair to take, the queue's own due ids: a message whose
# hold ran out (its worker died) goes back to its line; one outside every line (enqueued
# before fair share) is taken, oldest due first, as plain arq would. A message taken more
# than `most` times without finishing (its handling kills the worker, or keeps failing)
# is poison: it is moved to the dead letters with the reason, never taken again, and
# answered so the job can be told.
# KEYS: the queue, its delivery counts, its dead letters, its turns, its clock, its
# message owners, the policies, its parked owners, its sleeping owners.
# ARGV: in-progress key prefix, message key prefix, hold (ms), batch, most deliveries,
# owner-line prefix, running prefix, owners per take, line per take, band (ms), the
# step of an owner without a recorded policy.
# Answers {"taken", id, message, count}, or {"none", removed} plus the id and message of
# the one it has just set aside, if any (then the caller looks again), or {"again", 0}
# when it only changed the turns (look again at once).
# (Keys are built in the script: fine on one Redis, not on a Redis Cluster.)
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hold = tonumber(ARGV[3])
local reply = {'none', 0}
local again = false  -- the turns changed: look again at once

local function owned(id)  -- the message's order and owner, if it has one
  local value = redis.call('HGET', KEYS[6], id)
  if not value then return nil, nil end
  return string.match(value, '^(%d+) (.*)$')
end

local function forget(id, owner)
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', ARGV[2] .. id)
  redis.call('HDEL', KEYS[2], id)
  if owner then
    redis.call('ZREM', ARGV[6] .. owner, id)
    redis.call('HDEL', KEYS[6], id)
  end
end

local function policy(owner)  -- its step and running limit
  local value = redis.call('HGET', KEYS[7], owner) or (ARGV[11] .. ' 0')
  local step, most = string.match(value, '(%S+) (%S+)')
  return tonumber(step) or tonumber(ARGV[11]), tonumber(most) or 0
end

local function at_limit(owner, most)
  if most <= 0 then return false end
  local running = ARGV[7] .. owner
  redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
  return redis.call('ZCARD', running) >= most
end

-- Count a take of a message that has one; nil if it has turned poison (set aside).
local function take(id, message, owner)
  local count = redis.call('HINCRBY', KEYS[2], id, 1)
  if count <= tonumber(ARGV[5]) then
    redis.call('PSETEX', ARGV[1] .. id, hold, '1')
    if owner then
      redis.call('ZREM', ARGV[6] .. owner, id)
      redis.call('ZADD', ARGV[7] .. owner, now + hold, id)
    end
    return {'taken', id, message, count}
  end
  local reason = 'taken ' .. (count - 1) .. ' times without finishing'
  local letter = cjson.encode({reason = reason, time_ms = now, message = message})
  redis.call('HSET', KEYS[3], id, letter)
  forget(id, owner)
  reply[#reply + 1] = id
  reply[#reply + 1] = message
  return nil
end

-- Owners parked at their limit whose running count has dropped take their turns again
-- (a few a take: their jobs may have ended on another model's queue).
local parked = redis.call('ZRANGE', KEYS[8], 0, 7, 'WITHSCORES')
for i = 1, #parked, 2 do
  local _, most = policy(parked[i])
  if not at_limit(parked[i], most) then
    redis.call('ZREM', KEYS[8], parked[i])
    redis.call('ZADD', KEYS[4], 'GT', parked[i + 1], parked[i])
  end
end

local clock = tonumber(redis.call('GET', KEYS[5]) or '0')
-- Owners whose every waiting message was backing off, and whose soonest is due now.
local woken = redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', now, 'LIMIT', 0, 64)
for _, owner in ipairs(woken) do
  redis.call('ZREM', KEYS[9], owner)
  redis.call('ZADD', KEYS[4], 'GT', clock, owner)
end

local turns = redis.call('ZRANGE', KEYS[4], 0, tonumber(ARGV[8]) - 1, 'WITHSCORES')
for i = 1, #turns, 2 do
  local owner, vtime = turns[i], tonumber(turns[i + 1])
  local line = ARGV[6] .. owner
  local entries = redis.call('ZRANGE', line, 0, tonumber(ARGV[9]) - 1, 'WITHSCORES')
  local step, most = policy(owner)
  if #entries == 0 then
    redis.call('ZREM', KEYS[4], owner)  -- nothing waits: it re-enters at the clock
  elseif at_limit(owner, most) then
    redis.call('ZREM', KEYS[4], owner)
    redis.call('ZADD', KEYS[8], vtime, owner)
  else
    local soonest, any_due = nil, false
    for j = 1, #entries, 2 do
      local id, order = entries[j], tonumber(entries[j + 1])
      local due = order % tonumber(ARGV[10])
      if due > now then
        soonest = math.min(soonest or due, due)
      elseif redis.call('EXISTS', ARGV[1] .. id) == 1 then
        any_due = true
      else
        local message = redis.call('GET', ARGV[2] .. id)
        if not message then
          forget(id, owner)
          reply[2] = reply[2] + 1
        else
          local taken = take(id, message, owner)
          if not taken then return reply end
          local start = math.max(vtime, clock)
          redis.call('ZADD', KEYS[4], string.format('%.0f', start + step), owner)
          if start > clock then redis.call('SET', KEYS[5], string.format('%.0f', start)) end
          return taken
        end
      end
    end
    if soonest and not any_due then
      -- Nothing of its is due: out of the turns until its soonest is, so that owners
      -- backing off, however many, never hide the work of others.
      redis.call('ZREM', KEYS[4], owner)
      redis.call('ZADD', KEYS[9], soonest, owner)
      again = true
    end
  end
end

local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    local order, owner = owned(id)
    local message = redis.call('GET', ARGV[2] .. id)
    if not message then
      forget(id, owner)
      reply[2] = reply[2] + 1
    elseif owner then
      -- Held by a worker that died: back in its line (a no-op if it waits there already).
      if redis.call('ZADD', ARGV[6] .. owner, 'NX', order, id) == 1 then
        redis.call('ZREM', ARGV[7] .. owner, id)
        redis.call('ZADD', KEYS[4], 'GT', clock, owner)
        again = true
      end
    else
      local taken = take(id, message, nil)
      if not taken then return reply end
      return taken
    end
  end
end
if again and #reply == 2 and reply[2] == 0 then return {'again', 0} end
return reply
"""
# The wait until the next delayed message falls due, by the Redis clock (ms; -1: none).
NEXT_DUE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local next = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if #next == 0 then return -1 end
return math.max(0, tonumber(next[2]) - now)
"""
BATCH = 100
# How often a message may be taken without finishing before it is set aside as poison.
MOST_DELIVERIES = 5
# The shortest wait worth blocking for (BLPOP's timeout 0 would mean "forever").
MIN_WAIT_SECONDS = 0.001
# Backoff after a failing loop iteration (Redis down, refusing writes, …): doubling.
BACKOFF = (0.1, 5.0)
# Failures of what the handler depends on, not of the message: a take that ends in one
# is not counted against the message, which runs again once the dependency is back.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, TimeoutError, socket errors
    redis.exceptions.RedisError,  # unreachable, or refusing writes (out of memory, read-only)
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
)

Handler = Callable[[QueueMessage], Awaitable[None]]
# Told about a message set aside as poison (with the reason), so its job can end.
Rejecter = Callable[[QueueMessage, str], Awaitable[None]]


@dataclass
class Taken:
    """A message this worker holds: its id and its stored bytes."""

    message_id: str
    payload: bytes
    deliveries: int = 1  # how often it has been taken, this time included


class Consumer:
    """Runs `handle` for each message of `queue`, one at a time, until `stop`."""

    def __init__(
        self,
        redis: QueueRedis,
        queue: str,
        handle: Handler,
        *,
        hold: timedelta,
        poll_delay: timedelta,
        wakeups: bool = True,
        reject: Rejecter | None = None,
        keys: Keys,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._queue = queue
        self._take_lua = redis.register_script(TAKE_SCRIPT)
        self._handle = handle
        self._reject = reject
        self._hold_ms = int(hold.total_seconds() * 1000)
        self._poll_delay = poll_delay.total_seconds()
        self._wakeups = wakeups
        self._stopping = False
        self._waiting: asyncio.Future[Any] | None = None
        # Messages the running handler took beside its own (`take_more`), and the one it
        # gave back to run next (`keep`).
        self._extras: dict[int, Taken] = {}
        self._next: Taken | None = None
        self.polls = 0  # how often it looked at the queue (the tests count them)
        # When the loop last turned (monotonic), and whether that turn succeeded: the
        # generator's health endpoint reads them.
        self.turned_at = time.monotonic()
        self.queue_ok = True

    async def run(self) -> None:
        """Take and run messages until `stop`; survive every error with backoff."""
        failures = 0
        while not self._stopping:
            try:
                taken, self._next = self._next or await self._take(), None
                if taken is None:
                    await self._idle()
                else:
                    await self._run(taken)
                failures = 0
                self.turned_at, self.queue_ok = time.monotonic(), True
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
            except Exception as exc:  # noqa: BLE001 - the loop must not end: log, back off
                self.turned_at, self.queue_ok = time.monotonic(), False
                failures += 1
                delay = min(BACKOFF[1], BACKOFF[0] * 2 ** (failures - 1))
                log.warning("queue_loop_failed", error=repr(exc), retry_in_s=delay)
                if metrics.enabled():
                    metrics.LOOP_ERRORS.inc()
                await self._sleep(delay)
        if self._next is not None:  # kept for a next turn that will not come
            await self._release(self._next.message_id, counted=False)
            self._next = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Take no more messages; the one running finishes (`run` returns after it)."""
        self._stopping = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def take_more(self) -> QueueMessage | None:
        """For the running handler: one more due message of the queue, without waiting
        (None when there is none, or the consumer is stopping). It is forgotten with the
        handler's own when the handler returns, unless handed to `keep`."""
        while not self._stopping:
            taken = await self._take()
            if taken is None:
                return None
            try:
                message = _decode(taken.payload)
            except MalformedMessageError as exc:
                await self._set_aside(taken, f"malformed: {exc}")
                continue
            self._extras[id(message)] = taken
            return message
        return None

    def keep(self, message: QueueMessage) -> None:
        """Run `message` (from `take_more`) next, as the next turn's own message."""
        self._next = self._extras.pop(id(message))

    async def _take(self) -> Taken | None:
        while True:
            self.polls += 1
            reply = await self._take_script()
            kind = _text(reply[0])
            if kind == "taken":
                return Taken(_text(reply[1]), reply[2], int(reply[3]))
            if kind == "again":  # owners were put to sleep, or a lost hold restored
                continue
            removed, dead = int(reply[1]), reply[2:]
            for index in range(0, len(dead), 2):
                message_id = _text(dead[index])
                reason = f"taken {MOST_DELIVERIES} times without finishing"
                await self._dead(message_id, dead[index + 1], reason)
            if not removed and not dead:
                return None
            if removed:
                log.warning("queue_junk_removed", count=removed)

    async def _take_script(self) -> list[Any]:
        queue = self._queue
        return await cast(
            Awaitable[list[Any]],
            self._take_lua(
                keys=[
                    queue,
                    Keys.deliveries(queue),
                    Keys.dead_letter(queue),
                    Keys.turns(queue),
                    Keys.clock(queue),
                    Keys.message_owners(queue),
                    self._keys.policies,
                    Keys.parked(queue),
                    Keys.sleeping(queue),
                ],
                args=[
                    in_progress_key_prefix,
                    job_key_prefix,
                    str(self._hold_ms),
                    str(BATCH),
                    str(MOST_DELIVERIES),
                    Keys.owner_lines(queue),
                    self._keys.running_prefix,
                    str(scheduling.OWNERS_PER_TAKE),
                    str(scheduling.LINE_PER_TAKE),
                    str(scheduling.BAND_MS),
                    str(scheduling.STEP_SCALE),
                ],
            ),
        )

    async def _run(self, taken: Taken) -> None:
        try:
            message = _decode(taken.payload)
        except MalformedMessageError as exc:
            await self._set_aside(taken, f"malformed: {exc}")
            return
        if self._stopping:  # handed back untouched: the next worker takes it
            await self._release(taken.message_id, counted=False)
            return
        try:
            await self._handle(message)
        except Exception as exc:
            for extra in self._took_more():
                await self._release(extra.message_id, counted=False)
            if isinstance(exc, DEPENDENCY_ERRORS):
                # Not the message's fault: it runs again after the loop's backoff.
                await self._release(taken.message_id, counted=False)
                raise
            if taken.deliveries >= MOST_DELIVERIES:
                await self._set_aside(taken, f"failed {taken.deliveries} times: {exc!r}")
                return
            await self._release(taken.message_id, counted=True)
            raise
        await self._finish(taken.message_id)
        for extra in self._took_more():
            await self._finish(extra.message_id)

    def _took_more(self) -> list[Taken]:
        extras, self._extras = list(self._extras.values()), {}
        return extras

    async def _release(self, message_id: str, *, counted: bool) -> None:
        """Hand a message back to the queue at once (for this or another worker)."""
        await release(self._redis, self._keys, self._queue, message_id, uncount=not counted)

    async def _set_aside(self, taken: Taken, reason: str) -> None:
        """Move a poison message to the dead letters, then tell its job."""
        letter = {"reason": reason, "time_ms": int(time.time() * 1000)}
        letter["message"] = taken.payload.decode(errors="replace")
        await self._redis.hset(Keys.dead_letter(self._queue), taken.message_id, json.dumps(letter))  # type: ignore[misc]
        await self._finish(taken.message_id)
        await self._dead(taken.message_id, taken.payload, reason)

    async def _dead(self, message_id: str, payload: bytes, reason: str) -> None:
        log.error("message_dead_lettered", message_id=message_id, reason=reason)
        if metrics.enabled():
            # The reason's first word is its kind (malformed, taken, failed): a bounded label.
            metrics.DEAD_LETTERS.labels(reason.split(" ", 1)[0].rstrip(":")).inc()
        if self._reject is None:
            return
        try:
            message = _decode(payload)
        except MalformedMessageError:
            return  # no job to tell
        await self._reject(message, reason)

    async def _finish(self, message_id: str) -> None:
        """Forget a message that ran (its outcome is in the job row, never in Redis)."""
        await forget(
            self._redis,
            self._keys,
            self._queue,
            message_id,
            [in_progress_key_prefix, retry_key_prefix, job_key_prefix],
        )

    async def _idle(self) -> None:
        """Wait for work: a wake-up, the next delayed message's due time, or the poll
        delay, whichever comes first. A token pushed since the last take is still in the
        list, so no wake-up is lost between the take and the wait."""
        if not self._wakeups:
            await self._sleep(self._poll_delay)
            return
        wait = self._poll_delay
        due_ms = await cast(Awaitable[int], self._redis.eval(NEXT_DUE_SCRIPT, 1, self._queue))
        if due_ms >= 0:
            wait = min(wait, due_ms / 1000)
        if wait >= MIN_WAIT_SECONDS:
            # (BLPOP takes fractions of a second since Redis 6; redis-py's hints say int.)
            blpop = self._redis.blpop([Keys.wake(self._queue)], timeout=round(wait, 3))  # type: ignore[arg-type]
            await self._cancellable(cast(Coroutine[Any, Any, Any], blpop))

    async def _sleep(self, seconds: float) -> None:
        await self._cancellable(asyncio.sleep(seconds))

    async def _cancellable(self, waiting: Coroutine[Any, Any, Any]) -> None:
        """Await `waiting`, unless `stop` cancels it first."""
        if self._stopping:
            if asyncio.iscoroutine(waiting):
                waiting.close()  # never started: nothing to wait for
            return
        self._waiting = asyncio.ensure_future(waiting)
        try:
            await self._waiting
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        finally:
            self._waiting = None


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(payload: bytes) -> QueueMessage:
    try:
        job = deserialize_job(payload, deserializer=deserialize)
    except Exception as exc:
        raise MalformedMessageError(f"unreadable message: {exc!r}") from exc
    if job.function != RUN_JOB or job.kwargs:
        raise MalformedMessageError(f"not a {RUN_JOB} message: {job.function!r}")
    return QueueMessage.from_args(job.args)
