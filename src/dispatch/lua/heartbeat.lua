-- Keeps the leases of a worker's in-flight entries alive: resets their idle time,
-- but only for entries this consumer still owns. An entry another worker took over
-- after a stall is not taken back; its id is returned so the caller knows. An entry
-- no longer pending at all was just acknowledged: nothing to do.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids.
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] then
    if p[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    else
      table.insert(lost, id)
    end
  end
end
return lost
