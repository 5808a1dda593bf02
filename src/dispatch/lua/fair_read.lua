-- Takes up to ARGV[3] new entries for a consumer. Priority first: the lanes of the
-- highest priority (streams of one batch's jobs of one priority, in the sorted set
-- KEYS[3] scored by priority) are read before any lower one; priority 0 is the main
-- stream (raw producers, retries, released and repaired jobs) and the batch streams
-- of the set KEYS[2]. Within a level the read is shared fairly: each stream gets an
-- equal share; what a short stream leaves is shared again among the streams that
-- filled theirs. So a 20-job batch submitted behind a 40,000-job one is served from
-- the next read on, not after it.
-- An empty batch stream is deleted and dropped from its set: no entry is pending
-- there (entries are acknowledged and deleted together), and `enqueue_batch.lua`
-- makes stream, group and membership again, atomically, before it adds.
-- The streams are read from the sets, not passed as KEYS; they share the queue's
-- hash tag, so on a cluster they live in the same slot.
-- KEYS[1] main stream, KEYS[2] set of batch streams, KEYS[3] sorted set of lanes.
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] count, ARGV[4] rotation (which batch first).
-- Returns XREADGROUP's reply shape: {{stream, {{id, {field, value, ...}}, ...}}, ...}.
local group, consumer, want = ARGV[1], ARGV[2], tonumber(ARGV[3])
local rotation = tonumber(ARGV[4])

local function read(stream, count)
  local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'NOGROUP') then error(r) end
    -- The group is gone (FLUSHALL, a restart without persistence): make it again,
    -- reading from the start, and take what is there next time.
    redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    return {}
  end
  if not r then return {} end
  return r[1][2]
end

-- The streams of one level, `fixed` first, then every one of `rotating` starting at
-- the rotation: a read stops once it has `want`, and a level is left only when all of
-- its streams came up short.
local function level(fixed, rotating)
  local streams = {}
  for _, s in ipairs(fixed) do streams[#streams + 1] = s end
  local n = #rotating
  if n > 0 then
    local first = rotation % n
    for i = 0, n - 1 do
      streams[#streams + 1] = rotating[(first + i) % n + 1]
    end
  end
  return streams
end

local out, got = {}, 0

-- Reads one level fairly; `set` is the key streams of this level are listed in.
local function serve(streams, set, scored)
  local hungry = streams
  while got < want and #hungry > 0 do
    local share = math.ceil((want - got) / #hungry)
    local again = {}
    for _, stream in ipairs(hungry) do
      local take = math.min(share, want - got)
      if take < 1 then break end
      local entries = read(stream, take)
      if #entries > 0 then
        out[#out + 1] = {stream, entries}
        got = got + #entries
      end
      if #entries == take then
        again[#again + 1] = stream
      elseif stream ~= KEYS[1] and #entries == 0 and redis.call('XLEN', stream) == 0 then
        redis.call('DEL', stream)
        if scored then
          redis.call('ZREM', set, stream)
        else
          redis.call('SREM', set, stream)
        end
      end
    end
    hungry = again
  end
end

-- Lanes by priority, highest first: {stream, score, stream, score, ...}.
local lanes = redis.call('ZREVRANGE', KEYS[3], 0, -1, 'WITHSCORES')
local i = 1
local function next_level(above)
  local streams, score = {}, nil
  while i <= #lanes do
    local s = tonumber(lanes[i + 1])
    if (above and s <= 0) or (not above and s > 0) then break end
    if score == nil then score = s end
    if s ~= score then break end
    streams[#streams + 1] = lanes[i]
    i = i + 2
  end
  return streams
end

-- Priorities above 0.
while got < want do
  local streams = next_level(true)
  if #streams == 0 then break end
  serve(level({}, streams), KEYS[3], true)
end
-- Priority 0.
if got < want then
  serve(level({KEYS[1]}, redis.call('SMEMBERS', KEYS[2])), KEYS[2], false)
end
-- Priorities below 0.
while got < want do
  local streams = next_level(false)
  if #streams == 0 then break end
  serve(level({}, streams), KEYS[3], true)
end
return out
