"""The Lua scripts the Redis engine runs: each is one atomic step in Redis.

Per room (keys share the `{room}` hash tag, so a cluster would keep them on one node):
  meta      hash    e = epoch, s = offset of the last publication
  history   stream  entries with id "<offset>-0" and one field d = payload, capped
  presence  zset    member -> expiry time (ms, Redis's own clock)
  info      hash    member -> its info (JSON)

Times come from Redis's TIME, so the workers' clocks never matter. A room whose meta
is missing (never used, expired, or Redis restarted without persistence) gets the
caller's fresh epoch and its stale history is dropped: the numbering starts again at 1
in a new epoch, which every subscriber detects (nothing is mixed across epochs).
"""

from __future__ import annotations

#: The meta of a room that has none: a new epoch, offset 0, no history from before.
_ENSURE_META = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV_NEW_EPOCH
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
  redis.call('DEL', KEYS[2])
end
"""

#: PUBLISH: number the payload, keep it in the bounded history, fan it out, in one step.
#: KEYS: meta, history. ARGV: payload, history size, history ttl (s), meta ttl (s),
#: channel, epoch for a room that has none. Returns {offset, epoch}.
#: The pub/sub message is "<offset>:<epoch>:<payload>" (the epoch is hex: no colon).
PUBLISH = (
    "local ARGV_NEW_EPOCH = ARGV[6]\n"
    + _ENSURE_META
    + """
local offset = tonumber(redis.call('HGET', KEYS[1], 's')) + 1
if tonumber(ARGV[2]) > 0 then
  -- First, so that an error reply here leaves no trace (scripts do not roll back).
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
redis.call('HSET', KEYS[1], 's', offset)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], offset .. ':' .. epoch .. ':' .. ARGV[1])
return {offset, epoch}
"""
)

#: The room's position, and the history after `since` when `since` is in its epoch.
#: KEYS: meta, history. ARGV: since offset, since epoch, epoch for a room that has none,
#: meta ttl (s). Returns {offset, epoch, entries} (entries: XRANGE's [id, [d, payload]]).
FETCH_SINCE = (
    "local ARGV_NEW_EPOCH = ARGV[3]\n"
    + _ENSURE_META
    + """
redis.call('EXPIRE', KEYS[1], ARGV[4])
local top = tonumber(redis.call('HGET', KEYS[1], 's'))
local since = tonumber(ARGV[1])
local entries = {}
if epoch == ARGV[2] and since < top then
  entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+')
end
return {top, epoch, entries}
"""
)

#: Add or refresh members' presence. KEYS: presence, info. ARGV: ttl (ms), then pairs
#: member, info JSON. The keys themselves expire a while after the last refresh.
PRESENCE_REFRESH = """
local now = redis.call('TIME')
local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], expires, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[1]))
return 1
"""

#: Remove members. KEYS: presence, info. ARGV: members.
PRESENCE_REMOVE = """
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1
"""

#: Drop the expired members, return the live ones. KEYS: presence, info.
#: Returns a flat list member, info JSON, ...
PRESENCE_GET = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms)
for i = 1, #expired do
  redis.call('HDEL', KEYS[2], expired[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i = 1, #members do
  out[#out + 1] = members[i]
  out[#out + 1] = redis.call('HGET', KEYS[2], members[i]) or '{}'
end
return out
"""
