-- Adds a batch's jobs to its own stream: makes the stream and the group when missing
-- and names the stream in the queue's set, in the same atomic step as the XADDs, so
-- the empty-stream cleanup in `fair_read.lua` can never strand them.
-- KEYS[1] batch stream, KEYS[2] set of batch streams; ARGV[1] group, ARGV[2..] job ids.
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
redis.call('SADD', KEYS[2], KEYS[1])
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[i])
end
return #ARGV - 1
