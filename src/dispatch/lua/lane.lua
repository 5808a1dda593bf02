-- Shared by the scripts that add to a batch's stream (prepended to each): makes the
-- stream and its group when missing and lists it where reads look for it, the set of
-- batch streams (priority 0) or the sorted set of lanes scored by priority. A stream
-- new to its set rings the doorbell, a short stream idle workers block on, so a
-- worker waiting on the streams it knew reads the new one at once.
local function open_lane(stream, group, batches, lanes, priority, doorbell)
  redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  local added
  if priority == 0 then
    added = redis.call('SADD', batches, stream)
  else
    added = redis.call('ZADD', lanes, priority, stream)
  end
  if added == 1 then
    redis.call('XADD', doorbell, 'MAXLEN', '~', '100', '*', 'stream', stream)
  end
end

-- The priority a batch stream's key says (`…:p<priority>`; 0 without one).
local function priority_of(stream)
  return tonumber(string.match(stream, ':p(%-?%d+)$') or '0')
end

