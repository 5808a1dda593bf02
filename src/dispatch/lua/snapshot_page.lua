-- One page of the reconciler's snapshot: copies the job ids of up to ARGV[2]
-- entries of a stream, after entry ARGV[1] ("-" from the start), into a set kept on
-- the server, so the worker never holds the queue in memory. Submitted jobs carry
-- `id`; a raw producer's `job` JSON counts when it names its `id` (a message over
-- ARGV[3] bytes is not decoded). Returns {last entry id read, entries read}.
-- KEYS[1] stream, KEYS[2] snapshot set; ARGV[4] the set's time to live in seconds.
local start = ARGV[1]
if start ~= '-' then
  start = '(' .. start
end
local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', tonumber(ARGV[2]))
local ids = {}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'id' then
      table.insert(ids, fields[i + 1])
    elseif fields[i] == 'job' and #fields[i + 1] <= tonumber(ARGV[3]) then
      local ok, job = pcall(cjson.decode, fields[i + 1])
      if ok and type(job) == 'table' and type(job.id) == 'string' then
        table.insert(ids, string.lower(job.id))
      end
    end
  end
end
for i = 1, #ids, 1000 do
  redis.call('SADD', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
local last = ''
if #entries > 0 then
  last = entries[#entries][1]
end
return {last, #entries}
