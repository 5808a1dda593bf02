-- Shared by the scripts that add to a batch's stream (prepended to each): makes the
-- stream and its group when missing and lists it where reads look for it, the set of
-- batch streams (priority 0) or the sorted set of lanes scored by priority.
local function open_lane(stream, group, batches, lanes, priority)
  redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  if priority == 0 then
    redis.call('SADD', batches, stream)
  else
    redis.call('ZADD', lanes, priority, stream)
  end
end

-- The priority a batch stream's key says (`…:p<priority>`; 0 without one).
local function priority_of(stream)
  return tonumber(string.match(stream, ':p(%-?%d+)$') or '0')
end

