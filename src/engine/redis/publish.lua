-- Assigns seqs, writes per-stream history and publishes a batch atomically (see mod.rs).
local ttl_ms = tonumber(ARGV[1])
local epoch = redis.call('GET', 'wshub:epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', 'wshub:epoch', epoch)
end
local count = tonumber(ARGV[3])
local i = 4
local out = {epoch}
for e = 1, count do
  local id = ARGV[i]
  local body = ARGV[i + 1]
  local nt = tonumber(ARGV[i + 2])
  i = i + 3
  local seq = redis.call('INCR', 'wshub:seq')
  local payload = '{"seq":' .. seq .. ',"epoch":"' .. epoch .. '",' .. string.sub(body, 2)
  local receivers = 0
  for t = 1, nt do
    local target = ARGV[i]
    local maxlen = tonumber(ARGV[i + 1])
    i = i + 2
    local key = 'wshub:h:' .. target
    redis.call('XADD', key, seq .. '-0', 'e', payload)
    local len = redis.call('XLEN', key)
    if len > maxlen then
      local old = redis.call('XRANGE', key, '-', '+', 'COUNT', len - maxlen)
      redis.call('XTRIM', key, 'MAXLEN', maxlen)
      redis.call('HSET', 'wshub:trim', target, string.match(old[#old][1], '^(%d+)'))
    end
    redis.call('PEXPIRE', key, ttl_ms * 2)
    redis.call('HSET', 'wshub:last', target, seq)
    local n = redis.call('PUBLISH', 'wshub:c:' .. target, payload)
    if n > receivers then receivers = n end
  end
  redis.call('SET', 'wshub:ev:' .. id, payload, 'PX', ttl_ms)
  redis.call('LPUSH', 'wshub:recent', payload)
  table.insert(out, seq)
  table.insert(out, receivers)
end
redis.call('LTRIM', 'wshub:recent', 0, tonumber(ARGV[#ARGV]) - 1)
return out
