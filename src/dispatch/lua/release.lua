-- Gives a delivery back: acknowledges and deletes the entry, and adds its job again,
-- to the stream it came from (so it keeps its batch's share and its priority) or to
-- the main stream. A batch stream emptied and deleted meanwhile is made again, with
-- its group and its membership, as `enqueue_batch.lua` does.
-- KEYS[1] the entry's stream, KEYS[2] main stream, KEYS[3] set of batch streams,
-- KEYS[4] sorted set of lanes; ARGV[1] group, ARGV[2] entry id, ARGV[3] job id.
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if KEYS[1] ~= KEYS[2] then
  open_lane(KEYS[1], ARGV[1], KEYS[3], KEYS[4], priority_of(KEYS[1]))
end
redis.call('XADD', KEYS[1], '*', 'id', ARGV[3])
return 1
