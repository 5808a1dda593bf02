-- Moves due retries from the delayed set back to dispatch. ZREM decides who moves a
-- job, so two workers racing dispatch it once. A job deferred from a batch's stream
-- goes back to that stream (its share and its priority), made again with its group
-- and membership if it was emptied meanwhile; any other to the main stream.
-- KEYS[1] delayed set, KEYS[2] main stream, KEYS[3] hash of the streams deferred jobs
-- came from, KEYS[4] set of batch streams, KEYS[5] sorted set of lanes, KEYS[6] the
-- doorbell.
-- ARGV[1] group, ARGV[2..] job ids (already `queued` in the record).
local moved = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local stream = redis.call('HGET', KEYS[3], id)
    redis.call('HDEL', KEYS[3], id)
    if stream then
      open_lane(stream, ARGV[1], KEYS[4], KEYS[5], priority_of(stream), KEYS[6])
    else
      stream = KEYS[2]
    end
    redis.call('XADD', stream, '*', 'id', id)
    moved = moved + 1
  end
end
return moved
