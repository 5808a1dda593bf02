-- Takes up to ARGV[3] new entries for a consumer, shared fairly between the queue's
-- streams: the main stream (raw producers, retries, released jobs) and one stream per
-- batch with work left. Each stream gets an equal share; what a short stream leaves
-- is shared again among the streams that filled theirs. So a 20-job batch submitted
-- behind a 40,000-job one is served from the next read on, not after it.
-- An empty batch stream is deleted and dropped from the set: no entry is pending
-- there (entries are acknowledged and deleted together), and `enqueue_batch.lua`
-- makes stream, group and set membership again, atomically, before it adds.
-- The batch streams are read from the set, not passed as KEYS; they share the
-- queue's hash tag, so on a cluster they live in the same slot.
-- KEYS[1] main stream, KEYS[2] set of batch streams.
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] count, ARGV[4] rotation (which batch first).
-- Returns XREADGROUP's reply shape: {{stream, {{id, {field, value, ...}}, ...}}, ...}.
local group, consumer, want = ARGV[1], ARGV[2], tonumber(ARGV[3])

local streams = {KEYS[1]}
local batches = redis.call('SMEMBERS', KEYS[2])
local n = #batches
if n > 0 then
  local first = tonumber(ARGV[4]) % n
  for i = 0, math.min(n, want) - 1 do
    streams[#streams + 1] = batches[(first + i) % n + 1]
  end
end

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

local out, got, hungry = {}, 0, streams
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
      redis.call('SREM', KEYS[2], stream)
    end
  end
  hungry = again
end
return out
