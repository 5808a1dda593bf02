-- Moves due retries from the delayed set to the stream. ZREM decides who moves a job,
-- so two workers racing dispatch it once.
-- KEYS[1] delayed set, KEYS[2] stream; ARGV job ids (already `queued` in Postgres).
local moved = 0
for i = 1, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'id', ARGV[i])
    moved = moved + 1
  end
end
return moved
