-- Claims an idempotency key, assigns seqs, writes per-stream history and publishes a batch, in
-- one atomic step (see mod.rs). A key already claimed returns the first result and does nothing,
-- so a retry after any error publishes exactly when the first attempt did not.
--
-- ARGV: ttl_ms, epoch candidate, idempotency key ('' for none), idempotency ttl_ms, recent length,
-- event count, then per event: id, body (JSON object without seq/epoch/prev), target count, and
-- per target: stream, history size.
-- Returns {epoch, id1, seq1, receivers1, id2, ...}.
local ttl_ms = tonumber(ARGV[1])
local idem_key = ARGV[3]
if idem_key ~= '' then
  local done = redis.call('GET', 'wshub:idem:' .. idem_key)
  if done then
    return cjson.decode(done)
  end
end
local epoch = redis.call('GET', 'wshub:epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', 'wshub:epoch', epoch)
end
local count = tonumber(ARGV[6])
local i = 7
local out = {epoch}
for e = 1, count do
  local id = ARGV[i]
  local body = ARGV[i + 1]
  local nt = tonumber(ARGV[i + 2])
  i = i + 3
  local seq = redis.call('INCR', 'wshub:seq')
  -- Each target's previous seq: a node that holds a stream's position up to `prev` knows it
  -- missed nothing of that stream; one that holds less has a gap to fill from history.
  local prevs = {}
  for t = 1, nt do
    local last = redis.call('GET', 'wshub:l:' .. ARGV[i + 2 * (t - 1)])
    prevs[t] = tostring(tonumber(last) or 0)
  end
  local payload = '{"seq":' .. seq .. ',"epoch":"' .. epoch .. '","prev":[' .. table.concat(prevs, ',') .. '],'
    .. string.sub(body, 2)
  local receivers = 0
  for t = 1, nt do
    local target = ARGV[i]
    local maxlen = tonumber(ARGV[i + 1])
    i = i + 2
    local key = 'wshub:h:' .. target
    redis.call('XADD', key, 'MAXLEN', maxlen, seq .. '-0', 'e', payload)
    redis.call('PEXPIRE', key, ttl_ms * 2)
    redis.call('SET', 'wshub:l:' .. target, seq, 'PX', ttl_ms * 2)
    local n = redis.call('PUBLISH', 'wshub:c:' .. target, payload)
    if n > receivers then receivers = n end
  end
  redis.call('SET', 'wshub:ev:' .. id, payload, 'PX', ttl_ms)
  redis.call('LPUSH', 'wshub:recent', payload)
  table.insert(out, id)
  table.insert(out, seq)
  table.insert(out, receivers)
end
redis.call('LTRIM', 'wshub:recent', 0, tonumber(ARGV[5]) - 1)
if idem_key ~= '' then
  redis.call('SET', 'wshub:idem:' .. idem_key, cjson.encode(out), 'PX', tonumber(ARGV[4]))
end
return out
