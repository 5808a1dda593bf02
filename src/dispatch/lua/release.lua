-- Gives a delivery back: acknowledges and deletes the entry, and adds its job to
-- KEYS[2]: the stream it came from (so it keeps its batch's share and its priority),
-- or the lane of its priority (a raw producer's job that named one). A batch stream
-- or lane emptied and deleted meanwhile is made again, with its group and its
-- membership, as `enqueue_batch.lua` does.
-- KEYS[1] the entry's stream, KEYS[2] where the job goes, KEYS[3] main stream,
-- KEYS[4] set of batch streams, KEYS[5] sorted set of lanes, KEYS[6] the doorbell;
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] job id.
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if KEYS[2] ~= KEYS[3] then
  open_lane(KEYS[2], ARGV[1], KEYS[4], KEYS[5], priority_of(KEYS[2]), KEYS[6])
end
redis.call('XADD', KEYS[2], '*', 'id', ARGV[3])
return 1
