-- Cluster presence for webhooks, one atomic step per call so exactly one node announces each
-- change. Keys (all under wshub:wh:): conns:<subject> hash node -> local count; node:<node> set of
-- the node's subjects; lease:<node> expiring key; nodes set; online hash (subjects announced
-- online); due zset subject -> offline due ms; seen hash subject -> last seen; owed:<node> hash
-- "<order> <url>" -> hook JSON.
local op = ARGV[1]
local node = ARGV[2]
local P = 'wshub:wh:'

local function total(subject)
  local n = 0
  for _, v in ipairs(redis.call('HVALS', P .. 'conns:' .. subject)) do n = n + tonumber(v) end
  return n
end

-- A subject with no connection anywhere that was announced online: its offline is due at `at`.
local function schedule(subject, at, seen)
  if redis.call('HLEN', P .. 'conns:' .. subject) == 0 and redis.call('HEXISTS', P .. 'online', subject) == 1 then
    redis.call('ZADD', P .. 'due', at, subject)
    redis.call('HSET', P .. 'seen', subject, seen)
  end
end

if op == 'update' then
  -- ARGV: subject, local count, due ms if this was the last connection, last seen
  local subject, count = ARGV[3], tonumber(ARGV[4])
  if count > 0 then
    redis.call('HSET', P .. 'conns:' .. subject, node, count)
    redis.call('SADD', P .. 'node:' .. node, subject)
    redis.call('ZREM', P .. 'due', subject)
    if redis.call('HSETNX', P .. 'online', subject, '1') == 1 then return total(subject) end
    return 0
  end
  redis.call('HDEL', P .. 'conns:' .. subject, node)
  redis.call('SREM', P .. 'node:' .. node, subject)
  schedule(subject, tonumber(ARGV[5]), ARGV[6])
  return 0
end

if op == 'sweep' then
  -- ARGV: now ms, lease ms, grace ms, now text. Renews this node's lease, reaps nodes whose lease
  -- expired (their subjects' offline due a grace from now, their owed hooks handed to this
  -- node), and claims the offlines now due. Returns {registered before, {subject, seen, ...},
  -- {owed field, hook, ...}}.
  local now, lease, grace = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local known = redis.call('SADD', P .. 'nodes', node) == 0
  redis.call('SET', P .. 'lease:' .. node, '1', 'PX', lease)
  local adopted = {}
  for _, other in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
    if redis.call('EXISTS', P .. 'lease:' .. other) == 0 then
      for _, subject in ipairs(redis.call('SMEMBERS', P .. 'node:' .. other)) do
        redis.call('HDEL', P .. 'conns:' .. subject, other)
        schedule(subject, now + grace, ARGV[6])
      end
      for _, v in ipairs(redis.call('HGETALL', P .. 'owed:' .. other)) do table.insert(adopted, v) end
      redis.call('DEL', P .. 'node:' .. other, P .. 'owed:' .. other)
      redis.call('SREM', P .. 'nodes', other)
    end
  end
  local offline = {}
  for _, subject in ipairs(redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', now)) do
    redis.call('ZREM', P .. 'due', subject)
    if redis.call('HLEN', P .. 'conns:' .. subject) == 0 and redis.call('HDEL', P .. 'online', subject) == 1 then
      table.insert(offline, subject)
      table.insert(offline, redis.call('HGET', P .. 'seen', subject) or '')
      redis.call('HDEL', P .. 'seen', subject)
    end
  end
  return {known and 1 or 0, offline, adopted}
end

if op == 'online' then
  -- Subjects announced online with their connections across the cluster: {subject, n, ...}.
  local out = {}
  for _, subject in ipairs(redis.call('HKEYS', P .. 'online')) do
    table.insert(out, subject)
    table.insert(out, total(subject))
  end
  return out
end

return redis.error_reply('unknown op ' .. tostring(op))
