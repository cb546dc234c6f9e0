"""The registry's Lua scripts: registration (compare-and-set with fencing) and segment swaps."""

# Only KEYS are touched, and they share one hash tag (`Registry.register_keys`, `swap_keys`),
# so both run unchanged on a Redis Cluster. The events channel is an ARGV: a channel is not a
# key, and a plain PUBLISH from a script reaches subscribers on every node of a cluster.

# KEYS: ckpt, segments, epoch, version, active generation. ARGV: segment id, partition, start,
# end, record JSON, epoch, events channel, event JSON without its version (the script appends
# the new version), the record's generation. A segment built for a generation that is no longer
# active (sealed just before a reindex switched) is refused like a conflict: its worker re-reads
# the partition from the checkpoint into the active generation, and no stray old-generation
# segment is left behind the switch.
REGISTER = """
local ckpt = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
local epoch = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
local version = tonumber(redis.call('GET', KEYS[4]) or '0')
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  local r = cjson.decode(existing)
  local same = r.partition == tonumber(ARGV[2]) and r.start_offset == tonumber(ARGV[3])
    and r.end_offset == tonumber(ARGV[4])
  return {same and 'already' or 'conflict', ckpt, version, epoch}
end
if epoch ~= tonumber(ARGV[6]) then return {'fenced', ckpt, version, epoch} end
if ckpt ~= tonumber(ARGV[3]) then return {'conflict', ckpt, version, epoch} end
if tonumber(redis.call('GET', KEYS[5]) or '0') ~= tonumber(ARGV[9]) then
  return {'stale_generation', ckpt, version, epoch}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
version = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[7], string.sub(ARGV[8], 1, -2) .. ',"version":' .. version .. '}')
return {'ok', tonumber(ARGV[4]), version, epoch}
"""

# KEYS: segments, version, active generation, released, lifecycle lock. ARGV: channel, event
# JSON without its version, new active generation ('' keeps it), removed count, the time now,
# the lifecycle lock's token ('' checks none), then (id, exact JSON) per removed record, then
# (id, JSON) per added record. Replaces registered segments without touching checkpoints:
# the caller proves the added ones cover exactly the removed offsets; this script proves that
# nothing it removes changed since the caller read it, so a concurrent swap cannot be undone,
# and that the caller's action still holds the lifecycle lock (a fence: an action whose lease
# ran out swaps nothing). Each removed path is noted in `released` with the time, from which
# garbage collection counts its grace period; a path registered again leaves it.
SWAP = """
if ARGV[6] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[6] then return {'fenced', ''} end
local removed = tonumber(ARGV[4])
local gone = {}
local first = 7 + 2 * removed
for i = 0, removed - 1 do
  local id, expected = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  if redis.call('HGET', KEYS[1], id) ~= expected then return {'conflict', id} end
  gone[id] = expected
end
for i = first, #ARGV, 2 do
  if not gone[ARGV[i]] and redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    return {'conflict', ARGV[i]}
  end
end
for id, record in pairs(gone) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('HSET', KEYS[4], cjson.decode(record).path, ARGV[5])
end
for i = first, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HDEL', KEYS[4], cjson.decode(ARGV[i + 1]).path)
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3]) end
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], string.sub(ARGV[2], 1, -2) .. ',"version":' .. version .. '}')
return {'ok', tostring(version)}
"""
