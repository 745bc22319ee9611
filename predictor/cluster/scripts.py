"""Server-side Lua of the cluster: each script runs atomically in Redis.

Shard record ``<prefix>:shard:<s>`` is a hash ``{owner, epoch, acquired_ms,
ckpt_ms, writes}``. ``epoch`` only grows (``HINCRBY``) and is the fence:
checkpoint writes, acknowledgements and group reads succeed only for the
member named ``owner`` presenting the current ``epoch``.
"""

from __future__ import annotations

#: KEYS: shard record, tick stream.
#: ARGV: member, member key prefix, group.
#: Takes the shard when it has no owner, when the owner is this member's
#: id (a previous incarnation), or when the owner's heartbeat key is gone.
#: Returns {1, epoch} or {0, epoch, owner}.
ACQUIRE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if owner and owner ~= '' and owner ~= ARGV[1]
   and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  return {0, epoch, owner}
end
epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'owner', ARGV[1],
           'acquired_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
-- The group usually exists already (BUSYGROUP): that error is expected.
redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[3], '0', 'MKSTREAM')
return {1, epoch}
"""

#: KEYS: shard record. ARGV: member, epoch. Returns 1 when released.
RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('HSET', KEYS[1], 'owner', '')
  return 1
end
return 0
"""

#: KEYS: shard record, checkpoint hash, tick stream.
#: ARGV: member, epoch, group, n, then n (asset, blob) pairs, then entry ids to XACK.
#: Stores the blobs and acknowledges the entries they cover in one step.
#: Returns {1, writes, acked} or {0, current epoch, current owner}.
CHECKPOINT = """
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
local epoch = redis.call('HGET', KEYS[1], 'epoch') or '0'
if owner ~= ARGV[1] or epoch ~= ARGV[2] then
  return {0, tonumber(epoch), owner}
end
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[2], ARGV[5 + 2 * i], ARGV[6 + 2 * i])
end
local acked = 0
local i = 5 + 2 * n
while i <= #ARGV do
  local j = math.min(i + 499, #ARGV)
  acked = acked + redis.call('XACK', KEYS[3], ARGV[3], unpack(ARGV, i, j))
  i = j + 1
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'ckpt_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local writes = redis.call('HINCRBY', KEYS[1], 'writes', 1)
return {1, writes, acked}
"""

#: KEYS: k shard records then their k tick streams.
#: ARGV: member, group, count, then the k epochs.
#: Reads new entries (XREADGROUP '>') of each shard still held under its
#: epoch, so a member that lost a shard cannot take entries from the new owner.
#: Returns a list of {index, held (0/1), entries}.
READ = """
local k = #KEYS / 2
local out = {}
for i = 1, k do
  local owner = redis.call('HGET', KEYS[i], 'owner')
  local epoch = redis.call('HGET', KEYS[i], 'epoch')
  if owner ~= ARGV[1] or epoch ~= ARGV[3 + i] then
    out[#out + 1] = {i - 1, 0, {}}
  else
    local r = redis.pcall('XREADGROUP', 'GROUP', ARGV[2], ARGV[1], 'COUNT', ARGV[3],
                          'STREAMS', KEYS[k + i], '>')
    if type(r) == 'table' and r.err then
      out[#out + 1] = {i - 1, 0, {}}
    elseif r then
      out[#out + 1] = {i - 1, 1, r[1][2]}
    end
  end
end
return out
"""
