-- Adds a batch's jobs of one priority to their own stream: makes the stream and the
-- group when missing and names the stream in the queue's set (priority 0) or in its
-- sorted set of priority lanes (scored by priority), in the same atomic step as the
-- XADDs, so the empty-stream cleanup in `fair_read.lua` can never strand them.
-- KEYS[1] the stream, KEYS[2] set of batch streams, KEYS[3] sorted set of lanes,
-- KEYS[4] the doorbell;
-- ARGV[1] group, ARGV[2] priority, ARGV[3..] job ids.
open_lane(KEYS[1], ARGV[1], KEYS[2], KEYS[3], tonumber(ARGV[2]), KEYS[4])
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[i])
end
return #ARGV - 2
