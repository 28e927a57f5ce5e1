//! Every state transition is one Lua script, so it is atomic in Redis: no window in which a
//! message is in neither a queue nor the `unacked` bookkeeping (celery #7950, kombu #1405).
//!
//! Celery-compatible keys: queue lists `<q>` and `<q>\x06\x16{3,6,9}`, `unacked` (hash tag →
//! `[envelope, exchange, routing_key]`), `unacked_index` (zset tag → fetch time in seconds).
//! Ours (prefix `afterview:`): `lease` (one hash for every lease: tag → `"<epoch> <held> <task_id>"`,
//! held 1 or 0), `leases` (zset tag → lease deadline ms while held; after a release, the time the
//! entry is forgotten, a day later, so a redelivery still gets the next epoch), `running` (hash
//! task_id → tag of its held lease, for revocations), `scheduled` (zset of
//! `{"q","p","m"}` → run-at ms), `held` (hash tag → `{"q","m"}` for malformed messages, kept out
//! of `unacked` so Python workers never choke on them), `revoked:<task_id>`, the `revocations`
//! stream, `dead` (list).
//!
//! A full Redis (`maxmemory`, noeviction) refuses PUBLISH whole and runs every other script
//! (`even_when_full`, `unless_full`): new work waits at the door, work inside drains.
//!
//! Cost: a claim and a batch of results touch each key once for the whole batch (`many`, one
//! variadic call per key; a claim pops each list with one `RPOP key count`, Redis 6.2 or newer;
//! only the result's SET + PUBLISH are per message). Every string that enters Lua (a popped
//! envelope, a built `unacked` value, an argument) is hashed byte by byte when Redis interns it
//! (2-3 ns per byte here), so the scripts read envelopes with plain `string.find` and copy an
//! envelope into a new string only once, for kombu's `unacked` value. Both
//! zsets carry `ANCHOR`, a member longer than `zset-max-listpack-value` scored `+inf`: it keeps
//! them in Redis's skiplist encoding (at about a prefetch window of members a listpack insert
//! scans the whole list) and is never in the range anything reads. The `lease` and `running`
//! hashes carry it as a field with an empty value (no lease, no tag), for the same reason
//! (hashtable, not listpack); a message whose tag is spelled as it gets a tag of its own.
//! A script carries only the helpers it names ([`assemble`]): Redis runs a script's whole text,
//! helpers included, on every call.
//!
//! To see what a change to these scripts costs, count instead of timing: `bench/lua_cost.py
//! --scripts <file>` runs the claim and store of real Celery envelopes on a `redis-server` under
//! callgrind (about 155,000 instructions per task with 16 in flight, 405,000 when tasks arrive one
//! at a time and each call's fixed cost falls on one; a fifth of them in the commands called; Lua
//! numbers passed to `redis.call` or concatenated are formatted with `sprintf`, and every string
//! entering Lua is hashed, so pass argument text through and build few strings).

/// Shared Lua helpers, prepended to every script that needs them.
const HELPERS: &str = r#"
local SEP = '\6\22'
local function bucket(q, p)
  p = tonumber(p) or 0
  if p >= 9 then return q .. SEP .. '9' elseif p >= 6 then return q .. SEP .. '6' elseif p >= 3 then return q .. SEP .. '3' end
  return q
end
local LEASE, LEASES, RUNNING = 'afterview:lease', 'afterview:leases', 'afterview:running'
-- A Redis over `maxmemory` (noeviction) refuses a script's commands that may grow memory only
-- until the script's first write: it cannot stop a script half way. Scripts that move work
-- already inside (claims, renewals, results and acks, retries, revocations) start with a write
-- that grows nothing, so a full Redis still drains its backlog (an ack frees a whole message,
-- its result expires); PUBLISH, which lets new work in, starts with one a full Redis refuses,
-- so a new message is refused whole and the producer hears it.
local function even_when_full() redis.call('DEL', 'afterview:full') end
local function unless_full() redis.call('SETRANGE', 'afterview:full', 0, '') end
-- A member of both lease zsets and a field of both lease hashes, longer than Redis's listpack
-- limits (the name predates the hashes; it is data in running deployments, so it stays).
local ANCHOR = 'afterview:anchor:keeps-this-sorted-set-a-skiplist:longer-than-zset-max-listpack-value'
-- How long a released lease's epoch is remembered (a redelivery within it gets the next epoch).
local FORGET_MS = 86400000
-- `epoch, held, task` of a stored lease value (nil when there is none).
local function parse_lease(v)
  if not v then return nil end
  local e, h, t = string.match(v, '^(%d+) (%d) (.*)$')
  return tonumber(e), h == '1', t
end
local function lease_of(tag)
  return parse_lease(redis.call('HGET', LEASE, tag))
end
-- The task id ('' when unknown) if the lease value `v` is held at `epoch`, else nil.
-- (Compared as text: epochs are integers, written by this script's arithmetic and sent by the
-- worker in the same decimal form; a pattern match and two `tonumber`s cost more per result.)
local function holds(v, epoch)
  if not v then return nil end
  local pre = epoch .. ' 1 '
  local n = #pre
  if string.sub(v, 1, n) ~= pre then return nil end
  return string.sub(v, n + 1)
end
local function holder(tag, epoch)
  return holds(redis.call('HGET', LEASE, tag), epoch)
end
local function held(tag, epoch)
  return holder(tag, epoch) ~= nil
end
-- Runs a variadic command over `list` in chunks (Lua's unpack has a limit), `key` first when
-- given; returns the replies' elements in order. One call per chunk instead of one per element.
local CHUNK = 1000
local function many(cmd, key, list)
  local n = #list
  if n == 0 then return {} end
  if n <= CHUNK then
    local r
    if key then r = redis.call(cmd, key, unpack(list, 1, n)) else r = redis.call(cmd, unpack(list, 1, n)) end
    if type(r) == 'table' then return r end
    return {}
  end
  local out, m, i = {}, 0, 1
  while i <= n do
    local j = math.min(i + CHUNK - 1, n)
    local r
    if key then r = redis.call(cmd, key, unpack(list, i, j)) else r = redis.call(cmd, unpack(list, i, j)) end
    if type(r) == 'table' then
      for k = 1, #r do out[m + k] = r[k] end
      m = m + #r
    end
    i = j + 1
  end
  return out
end
-- Removes the bookkeeping of the messages `tags` (their leases' epochs stay): the task → lease
-- links still pointing at them (`tasks`: their task ids, '' when unknown), the kombu pair (or
-- the held entry of a malformed message) and the deadlines. One call per key for them all.
local function drop_many(tags, tasks)
  local nt = #tags
  if nt == 0 then return end
  local ids, want, ni = {}, {}, 0
  for i = 1, nt do
    local t = tasks[i]
    if t ~= '' then
      ni = ni + 1
      ids[ni] = t
      want[ni] = tags[i]
    end
  end
  if ni > 0 then
    local cur = many('HMGET', RUNNING, ids)
    local drop, nd = {}, 0
    for i = 1, ni do
      if cur[i] == want[i] then
        nd = nd + 1
        drop[nd] = ids[i]
      end
    end
    many('HDEL', RUNNING, drop)
  end
  local kombu, ours, nk, no = {}, {}, 0, 0
  for i = 1, nt do
    local tag = tags[i]
    if string.find(tag, 'afterview-malformed-', 1, true) == 1 then
      no = no + 1
      ours[no] = tag
    else
      nk = nk + 1
      kombu[nk] = tag
    end
  end
  many('HDEL', 'afterview:held', ours)
  many('ZREM', 'unacked_index', kombu)
  many('HDEL', 'unacked', kombu)
  many('ZREM', LEASES, tags)
end
-- Ends the leases of finished messages (acked, retried, dead).
local function finish_many(tags, tasks)
  drop_many(tags, tasks)
  many('HDEL', LEASE, tags)
end
-- One message: `task` is the lease's task id when the caller already read it (nil: read here).
local function drop_bookkeeping(tag, task)
  if task == nil then
    local _, _, t = lease_of(tag)
    task = t or ''
  end
  drop_many({tag}, {task})
end
local function finish(tag, task)
  drop_bookkeeping(tag, task)
  redis.call('HDEL', LEASE, tag)
end
-- The clock of Redis in ms (for bookkeeping deadlines that no caller observes).
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The string value after the first `"<key>":` (kombu's `": "` or a compact `":"`) in `raw`;
-- nil when the key is absent, false when its value is not a plain string (escapes, a number:
-- the caller decodes instead).
local function json_str(raw, needle, from)
  local _, e = string.find(raw, needle, from or 1, true)
  if not e then return nil end
  local s = e + 1
  if string.byte(raw, s) == 32 then s = s + 1 end
  if string.byte(raw, s) ~= 34 then return false end
  local q = string.find(raw, '"', s + 1, true)
  if not q then return false end
  local v = string.sub(raw, s + 1, q - 1)
  if string.find(v, '\\', 1, true) then return false end
  return v
end
-- `delivery_tag, task_id` of a task envelope (task_id '' when it has none), or nil when `raw`
-- is not one. The fast path reads the two fields as text: in a Celery envelope the first
-- `"id":` key is the header's (the body is base64, header strings escape their quotes) and
-- `delivery_tag` is a property; anything it cannot read plainly is decoded as JSON.
local function envelope_ids(raw)
  -- Found by its tail: a plain find looks for the needle's first byte and compares the rest at
  -- each hit, and a `"` opens every JSON string (1.6 % fewer instructions per task, claim and
  -- store together, `bench/lua_cost.py`). The first tail that follows a quote is the first whole needle.
  local info = string.byte(raw, 1) == 123 and string.find(raw, 'delivery_info":', 2, true)
  if info and string.byte(raw, info - 1) ~= 34 then info = string.find(raw, '"delivery_info":', info, true) end
  if info then
    -- A property: after `delivery_info` in kombu's order and in sorted keys; else anywhere.
    local tag = json_str(raw, '"delivery_tag":', info)
    if tag == nil then tag = json_str(raw, '"delivery_tag":', 1) end
    if tag then
      local id = json_str(raw, '"id":')
      if id ~= false then return tag, id or '' end
    end
  end
  local ok, env = pcall(cjson.decode, raw)
  if ok and type(env) == 'table' and type(env.properties) == 'table'
     and env.properties.delivery_tag ~= nil and type(env.properties.delivery_info) == 'table' then
    local tid = ''
    if type(env.headers) == 'table' and env.headers.id ~= nil then tid = tostring(env.headers.id) end
    return tostring(env.properties.delivery_tag), tid
  end
  return nil
end
-- An `unacked` value `[envelope, exchange, routing_key]`: `env, queue` decoded, or `nil, queue,
-- raw` when cjson cannot decode it (it refuses what the worker's reader takes, nesting deeper
-- than 1000 levels say): the envelope's text as stored, so the message is never dropped for it.
-- The envelope's text in an `unacked` value as this file writes it (nil for another shape).
local function as_it_came(u)
  return (string.match(u, '^%[(.*), "[^"]*", "[^"]*"%]$'))
end
-- The queue a message of `exchange` with `rk` goes back to, as kombu's `_lookup` finds it: the
-- routing key itself through the default exchange (`""`, what Celery and this file use);
-- through a named one, the first queue bound to it with that routing key (a direct binding)
-- or a topic pattern matching it (`*` one word, `#` any), from `_kombu.binding.<exchange>`
-- (members `routing_key SEP pattern SEP queue`); the routing key when no binding matches.
local function bound_queue(exchange, rk)
  if type(exchange) ~= 'string' or exchange == '' then return rk end
  for _, m in ipairs(redis.call('SMEMBERS', '_kombu.binding.' .. exchange)) do
    local key, queue = string.match(m, '^(.-)\6\22.-\6\22(.*)$')
    if key and queue ~= '' then
      if key == rk then return queue end
      if string.find(key, '[%*#]') then
        local pat = string.gsub(key, '[%^%$%(%)%%%.%[%]%+%-%?]', '%%%0')
        pat = string.gsub(string.gsub(pat, '%*', '[^.]*'), '#', '.*')
        if string.find(rk, '^' .. pat .. '$') then return queue end
      end
    end
  end
  return rk
end
local function unacked_entry(u)
  local ok, arr = pcall(cjson.decode, u)
  if ok and type(arr) == 'table' and type(arr[1]) == 'table' then
    local q = arr[3]
    if type(q) ~= 'string' then q = 'celery' end
    return arr[1], bound_queue(arr[2], q)
  end
  local raw, exchange, q = string.match(u, '^%[(.*), "([^"]*)", "([^"]*)"%]$')
  if raw then return nil, bound_queue(exchange, q), raw end
  return nil, nil, nil
end
-- Redis's clock as RFC 3339 UTC to the second (the dead letters' `at`; Lua here has no `os.date`).
local function iso_now()
  local secs = tonumber(redis.call('TIME')[1])
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  -- Days since 1970-01-01 to a civil date (proleptic Gregorian).
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02dZ', y, m, d,
    math.floor(rem / 3600), math.floor(rem % 3600 / 60), rem % 60)
end
-- How long dead letters are kept (the list expires this long after its newest entry; older
-- entries are dropped from its tail as new ones arrive), and the most kept.
local DEAD_KEEP_MS, DEAD_MAX_DEFAULT = 7 * 86400000, 10000
-- Pushes a dead-letter entry (JSON with an RFC 3339 `at`), newest first: at most `max`, none
-- older than `cutoff` (the same format, compared to the second), the list expiring with them.
local function push_dead(entry, max, cutoff)
  redis.call('LPUSH', 'afterview:dead', entry)
  redis.call('LTRIM', 'afterview:dead', 0, max - 1)
  for _ = 1, 100 do
    local tail = redis.call('LINDEX', 'afterview:dead', -1)
    local at = tail and string.match(tail, '"at":%s*"([^"]+)"')
    if not (at and string.sub(at, 1, 19) < cutoff) then break end
    redis.call('RPOP', 'afterview:dead')
  end
  redis.call('PEXPIRE', 'afterview:dead', DEAD_KEEP_MS)
end
-- Sets a message aside that could be neither run nor put back.
local function bury(u, reason)
  local entry = cjson.encode({queue = '', task_id = cjson.null, reason = reason,
    payload = string.sub(u, 1, 65536), at = iso_now()})
  push_dead(entry, DEAD_MAX_DEFAULT, '')
end
-- Puts a held or unacked message back at the consuming end of its queue (as kombu's restore).
local function restore(tag)
  local u = redis.call('HGET', 'unacked', tag)
  if u then
    local env, q, raw = unacked_entry(u)
    if env then
      if type(env.headers) == 'table' then env.headers.redelivered = true end
      local prio = 0
      if type(env.properties) == 'table' then
        prio = env.properties.priority or 0
        if type(env.properties.delivery_info) == 'table' then env.properties.delivery_info.redelivered = true end
      end
      -- cjson reads what it cannot write (`1e999`, an infinite number): such a message goes
      -- back as it came; an error here would stop the sweep at it, every time.
      local ok, enc = pcall(cjson.encode, env)
      if not ok then enc = as_it_came(u) end
      if enc then redis.call('RPUSH', bucket(q, prio), enc) else bury(u, 'the unacked entry could not be written back') end
    elseif raw then
      -- Back as it came (without the redelivered flag, which would need a decode).
      redis.call('RPUSH', q, raw)
    else
      bury(u, 'the unacked entry could not be read to give it back')
    end
  else
    local h = redis.call('HGET', 'afterview:held', tag)
    if h then
      local m = cjson.decode(h)
      redis.call('RPUSH', m.q, m.m)
    end
  end
  local epoch = lease_of(tag)
  drop_bookkeeping(tag)
  if epoch then
    redis.call('HSET', LEASE, tag, epoch .. ' 0 ')
    redis.call('ZADD', LEASES, server_ms() + FORGET_MS, tag)
  end
end
-- Records popped messages `got` (`{raw, queue, bucket suffix}` each) as claimed at `now` with
-- leases of `lease` ms, one call per key for them all. Returns `[tag, task_id, queue, raw,
-- epoch, revoked]` per message.
local function record(got, now, lease)
  local out = {}
  local qjson, tags, tids = {}, {}, {}
  local unacked, index, nu = {}, {}, 0
  local score = tostring(now / 1000)
  -- Every message's tag and id, then the leases of those tags in one call.
  local rtag, rtid, probe, np = {}, {}, {}, 0
  for i = 1, #got do
    local tag, tid = envelope_ids(got[i][1])
    -- A tag spelled as the anchor would share its entries, an empty one means "no lease" to
    -- the stores, and one spelled as a held tag would be acked as a held message (its
    -- `unacked` entry left for the sweep to hand out again): kept under a tag of its own.
    if tag and (tag == ANCHOR or tag == '' or string.find(tag, 'afterview-malformed-', 1, true) == 1) then
      tag = nil
    end
    rtag[i], rtid[i] = tag or false, tid or ''
    if tag then
      np = np + 1
      probe[np] = tag
    end
  end
  local leased = many('HMGET', LEASE, probe)
  -- A tag's holder: the task id of the message in flight under it (from its held lease, or
  -- from a message earlier in this batch). A message of another task carrying the same tag
  -- (a producer that reuses tags) must not take that lease and `unacked` entry over, which
  -- would orphan the first: it is kept under a tag of its own, as a held message.
  local holder_of, cur, p = {}, {}, 0
  for i = 1, #got do
    local tag, tid = rtag[i], rtid[i]
    if tag then
      p = p + 1
      if holder_of[tag] == nil then
        local _, h, t = parse_lease(leased[p])
        holder_of[tag] = (h and t ~= '' and t) or false
      end
      local other = holder_of[tag]
      if other and tid ~= '' and other ~= tid then
        rtag[i] = false
      else
        cur[i] = leased[p]
        if tid ~= '' then holder_of[tag] = tid end
      end
    end
  end
  for i = 1, #got do
    local g = got[i]
    local raw, q = g[1], g[2]
    local tag, tid = rtag[i], rtid[i]
    if tag then
      local qj = qjson[q]
      if not qj then qj = cjson.encode(q); qjson[q] = qj end
      unacked[nu + 1] = tag
      unacked[nu + 2] = '[' .. raw .. ', "", ' .. qj .. ']'
      index[nu + 1] = score
      index[nu + 2] = tag
      nu = nu + 2
    else
      tag = 'afterview-malformed-' .. redis.call('INCR', 'afterview:malformed-seq')
      redis.call('HSET', 'afterview:held', tag, cjson.encode({q = q .. g[3], m = raw}))
    end
    tags[i], tids[i] = tag, tid
  end
  many('HSET', 'unacked', unacked)
  if nu > 0 then
    -- The same anchor in kombu's index, in the same call (its score is never in the range
    -- kombu's `restore_visible` or our sweep reads).
    index[nu + 1] = '+inf'
    index[nu + 2] = ANCHOR
  end
  many('ZADD', 'unacked_index', index)
  -- Each claim takes the next epoch of its tag (twice in one batch: the later one wins; `cur`
  -- holds the leases read above, none for a tag made here).
  local epochs, last = {}, {}
  local deadline = string.format('%d', now + lease)
  local leases, deadlines, running, revoked = {}, {}, {}, {}
  local nr, nv = 0, 0
  for i = 1, #tags do
    local tag, tid = tags[i], tids[i]
    local e = last[tag]
    if e == nil then e = parse_lease(cur[i]) or 0 end
    e = e + 1
    last[tag], epochs[i] = e, e
    leases[2 * i - 1] = tag
    -- A first claim (most of them) spells its epoch without formatting a number (sprintf).
    leases[2 * i] = (e == 1 and '1 1 ' or e .. ' 1 ') .. tid
    deadlines[2 * i - 1] = deadline
    deadlines[2 * i] = tag
    if tid ~= '' then
      -- (A task id spelled as the anchor gets no entry, the anchor's pair being last: a revoke
      -- of it answers "not running"; its tombstone is still read below.)
      if tid ~= ANCHOR then
        running[nr + 1] = tid
        running[nr + 2] = tag
        nr = nr + 2
      end
      nv = nv + 1
      revoked[nv] = 'afterview:revoked:' .. tid
    end
  end
  -- The anchor again, as a field longer than hash-max-listpack-value: it keeps the lease and
  -- running hashes in Redis's hashtable encoding. At a prefetch window of entries a listpack
  -- hash sits at its 128-entry limit, and every HMGET, HSET and HDEL scans it: 181,071 against
  -- 149,521 instructions per task with 128 in flight, 159,158 against 146,105 with 64
  -- (`bench/lua_cost.py --batch`). Its value is empty, which is no lease.
  leases[2 * #tags + 1] = ANCHOR
  leases[2 * #tags + 2] = ''
  many('HSET', LEASE, leases)
  -- The anchor (a member longer than zset-max-listpack-value, never due) keeps the deadlines in
  -- a skiplist: with about a prefetch window of members the zset would sit at the listpack
  -- limit, where every insert and removal scans the whole list (2.4 µs against 0.7 per member).
  -- It goes last in the same call (a listpack converts when the long member arrives).
  deadlines[2 * #tags + 1] = '+inf'
  deadlines[2 * #tags + 2] = ANCHOR
  many('ZADD', LEASES, deadlines)
  if nr > 0 then
    running[nr + 1] = ANCHOR
    running[nr + 2] = ''
  end
  many('HSET', RUNNING, running)
  local revs = many('MGET', nil, revoked)
  local r = 0
  for i = 1, #got do
    local rev = ''
    if tids[i] ~= '' then
      r = r + 1
      rev = revs[r] or ''
    end
    out[i] = {tags[i], tids[i], got[i][2], got[i][1], epochs[i], rev}
  end
  return out
end
-- The idle workers of queue `q`: a zset of `"<lease_ms> <node>"` scored by when they registered
-- (a zset, not a list: list pushes wake every process through keyspace notifications). A worker
-- whose claim came back short registers here (CLAIM); a publish of one due message pops the
-- oldest and, when that node's push channel has a subscriber, claims the message for it and
-- PUBLISHes it there (PUBLISH), saving the worker's wake-then-claim round trip.
local function waiters(q) return 'afterview:idle:' .. q end
local PUSH = 'afterview:push:'
"#;

/// KEYS: none. ARGV: now_ms, lease_ms, max, worker (`''` for a worker that takes no pushes),
/// then the queues. Promotes due scheduled messages, then pops up to `max` messages, highest
/// priority first (buckets 0, 3, 6, 9, each across the queues in order), recording each
/// atomically. A worker that takes pushes leaves the idle sets of its queues, and joins them
/// again at the end when the claim came back short (it is about to wait for work).
/// Returns `{messages, next_due_ms}` with `[tag, task_id, queue, raw, epoch, revoked]` per message
/// and the run-at time of the earliest scheduled message (-1 when none).
pub(crate) const CLAIM: &str = r#"
even_when_full()
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local queues = {}
for i = 5, #ARGV do queues[#queues + 1] = ARGV[i] end
local idle = ARGV[4] ~= '' and (ARGV[2] .. ' ' .. ARGV[4])
-- A worker of several queues names them in its entry: a push through one queue's idle set
-- takes it out of the others' (it may be full now, and a message pushed to it would wait
-- there unrenewed while other workers idle).
if idle and #queues > 1 then idle = idle .. '\n' .. table.concat(queues, '\n') end
if idle then
  for _, q in ipairs(queues) do redis.call('ZREM', waiters(q), idle) end
end
-- The earliest scheduled message first: most claims find none due (or none at all) and make
-- this their only call about the schedule. (Numbers go to `redis.call` as their argument text or
-- as literal strings: Redis formats a Lua number with snprintf per argument.)
local first = redis.call('ZRANGE', 'afterview:scheduled', '0', '0', 'WITHSCORES')
if first[2] and tonumber(first[2]) <= now then
  local due = redis.call('ZRANGEBYSCORE', 'afterview:scheduled', '-inf', ARGV[1], 'LIMIT', '0', '1000')
  for _, m in ipairs(due) do
    local ok, d = pcall(cjson.decode, m)
    if ok and type(d) == 'table' then redis.call('RPUSH', bucket(d.q, d.p), d.m) end
    redis.call('ZREM', 'afterview:scheduled', m)
  end
  first = redis.call('ZRANGE', 'afterview:scheduled', '0', '0', 'WITHSCORES')
end
-- Pop first, then record every popped message with one call per key, not per message.
-- One RPOP with a count per list (Redis >= 6.2), in the order single pops would take them.
local got = {}
for _, suffix in ipairs({'', SEP .. '3', SEP .. '6', SEP .. '9'}) do
  for _, q in ipairs(queues) do
    if #got >= max then break end
    local raws = redis.call('RPOP', q .. suffix, #got == 0 and ARGV[3] or max - #got)
    if raws then
      for _, raw in ipairs(raws) do got[#got + 1] = {raw, q, suffix} end
    end
  end
end
local out = {}
if #got > 0 then out = record(got, now, lease) end
if idle and #got < max then
  for _, q in ipairs(queues) do redis.call('ZADD', waiters(q), ARGV[1], idle) end
end
local next_due = -1
if first[2] then next_due = tonumber(first[2]) end
return {out, next_due}
"#;

/// ARGV: tag, epoch. 1 when acked, 0 when the lease is not current.
pub(crate) const ACK: &str = r#"
even_when_full()
local task = holder(ARGV[1], ARGV[2])
if task == nil then return 0 end
finish(ARGV[1], task)
return 1
"#;

/// ARGV: tag, epoch. Gives the message back to its queue.
pub(crate) const RELEASE: &str = r#"
even_when_full()
if not held(ARGV[1], ARGV[2]) then return 0 end
restore(ARGV[1])
return 1
"#;

/// ARGV: lease_ms, now_ms, then pairs tag, epoch. Returns the tags no longer held.
pub(crate) const RENEW: &str = r#"
even_when_full()
local lease = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  local tag, epoch = ARGV[i], ARGV[i + 1]
  if held(tag, epoch) then
    redis.call('ZADD', LEASES, now + lease, tag)
    if redis.call('HEXISTS', 'unacked', tag) == 1 then
      -- Keep Python workers' visibility-timeout sweep away from a task that is still running.
      redis.call('ZADD', 'unacked_index', now / 1000, tag)
    end
  else
    lost[#lost + 1] = tag
  end
end
return lost
"#;

/// ARGV: now_ms, visibility_timeout_s. Returns messages whose lease ran out, and (like
/// kombu's `restore_visible`) messages of other consumers unacked for longer than the
/// visibility timeout. Returns how many were restored.
pub(crate) const REQUEUE_EXPIRED: &str = r#"
even_when_full()
local now = tonumber(ARGV[1])
local vis = tonumber(ARGV[2])
local n = 0
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 1000)
for _, tag in ipairs(expired) do
  local epoch, is_held = lease_of(tag)
  if is_held then
    restore(tag)
    n = n + 1
  else
    -- A released lease a day old: its epoch is forgotten.
    redis.call('ZREM', LEASES, tag)
    redis.call('HDEL', LEASE, tag)
  end
end
local stale = redis.call('ZRANGEBYSCORE', 'unacked_index', '-inf', now / 1000 - vis, 'LIMIT', 0, 1000)
for _, tag in ipairs(stale) do
  local _, is_held = lease_of(tag)
  if not is_held then
    restore(tag)
    n = n + 1
  end
end
return n
"#;

/// ARGV: tag, epoch, queue, priority, run_at_ms, now_ms, raw. Acks and enqueues the retry.
pub(crate) const RETRY: &str = r#"
even_when_full()
local task = holder(ARGV[1], ARGV[2])
if task == nil then return 0 end
finish(ARGV[1], task)
if tonumber(ARGV[5]) > tonumber(ARGV[6]) then
  redis.call('ZADD', 'afterview:scheduled', ARGV[5], cjson.encode({q = ARGV[3], p = tonumber(ARGV[4]), m = ARGV[7]}))
else
  redis.call('LPUSH', bucket(ARGV[3], ARGV[4]), ARGV[7])
end
redis.call('PUBLISH', 'afterview:wake', ARGV[3])
return 1
"#;

/// ARGV: tag, epoch, run_at_ms. Moves a claimed message whose ETA is in the future (from a
/// producer that LPUSHed it, as Celery does) into the schedule, out of the lease.
pub(crate) const DEFER: &str = r#"
even_when_full()
if not held(ARGV[1], ARGV[2]) then return 0 end
local u = redis.call('HGET', 'unacked', ARGV[1])
local q, raw
local prio = 0
if u then
  local env
  env, q, raw = unacked_entry(u)
  if env then
    if type(env.properties) == 'table' then prio = tonumber(env.properties.priority) or 0 end
    local ok, enc = pcall(cjson.encode, env)
    raw = ok and enc or as_it_came(u)
  end
else
  -- A message kept under a tag of its own (no `delivery_info`, or a tag another task holds):
  -- its list (the queue and its priority bucket) and its text as popped. Refused here, it
  -- would hold a prefetch slot of the worker until its ETA.
  local h = redis.call('HGET', 'afterview:held', ARGV[1])
  if not h then return 0 end
  local m = cjson.decode(h)
  q, raw = m.q, m.m
  local base, p = string.match(q, '^(.*)' .. SEP .. '(%d)$')
  if base then q, prio = base, tonumber(p) end
end
if not raw then return 0 end
redis.call('ZADD', 'afterview:scheduled', ARGV[3], cjson.encode({q = q, p = prio, m = raw}))
finish(ARGV[1])
-- Idle workers sleep until the schedule's earliest entry as their last claim saw it: wake
-- them to see this one.
redis.call('PUBLISH', 'afterview:wake', q)
return 1
"#;

/// ARGV: queue, priority, run_at_ms, now_ms, then raw envelopes. LPUSH (as Celery) or schedule,
/// and wake the idle workers; or, for one due message while a worker of the queue is idle,
/// claim it for that worker and PUBLISH it on the worker's push channel as
/// `[tag, task_id, queue, epoch, revoked]` JSON, a newline, then the envelope. Returns 2 when
/// pushed, else 1.
pub(crate) const PUBLISH: &str = r#"
unless_full()
local q, p = ARGV[1], ARGV[2]
local run_at, now = tonumber(ARGV[3]), tonumber(ARGV[4])
if run_at <= now and #ARGV == 5 then
  -- One due message and an idle worker: claim it for that worker and push it there.
  local w = redis.call('ZPOPMIN', waiters(q))[1]
  while w do
    local lease, node, others = string.match(w, '^(%d+) ([^\n]+)\n?(.*)$')
    -- Out of its other queues' idle sets too (pushed to now, or gone).
    if others and others ~= '' then
      for o in string.gmatch(others, '[^\n]+') do
        if o ~= q then redis.call('ZREM', waiters(o), w) end
      end
    end
    if node and redis.call('PUBSUB', 'NUMSUB', PUSH .. node)[2] > 0 then
      local r = record({{ARGV[5], q, ''}}, now, tonumber(lease))[1]
      redis.call('PUBLISH', PUSH .. node, cjson.encode({r[1], r[2], r[3], r[5], r[6]}) .. '\n' .. r[4])
      return 2
    end
    -- A worker that is gone (nobody listens on its channel): forget it, try the next.
    w = redis.call('ZPOPMIN', waiters(q))[1]
  end
end
for i = 5, #ARGV do
  if run_at > now then
    redis.call('ZADD', 'afterview:scheduled', run_at, cjson.encode({q = q, p = tonumber(p), m = ARGV[i]}))
  else
    redis.call('LPUSH', bucket(q, p), ARGV[i])
  end
end
redis.call('PUBLISH', 'afterview:wake', q)
return 1
"#;

/// ARGV: task_id, terminate (0/1), now_ms, keep_ms. Records the tombstone and the log entry,
/// numbered by a counter that never falls below the clock's milliseconds
/// (once: a repeated revoke, e.g. the same broadcast seen by several workers, only upgrades
/// `terminate`), and wakes the workers' control loops. Returns `[seq, running, new]`. A repeat
/// never shortens the tombstone's life: a client's revoke keeps it a week, and the same revoke
/// heard again on the pidbox (kept a day) must not cut that to a day.
pub(crate) const REVOKE: &str = r#"
even_when_full()
local id, terminate = ARGV[1], ARGV[2]
local key = 'afterview:revoked:' .. id
local cur = redis.call('GET', key)
local keep = tonumber(ARGV[4])
if cur then
  local left = redis.call('PTTL', key)
  if left > keep then keep = left end
end
local seq
local new = 0
if cur and (string.sub(cur, 1, 1) == '1' or terminate == '0') then
  seq = tonumber(string.match(cur, '|(%d+)$'))
  redis.call('PEXPIRE', key, keep)
else
  seq = redis.call('INCR', 'afterview:revocation-seq')
  -- Never below the clock (ms): a Redis that lost its last writes (AOF everysec, a failover)
  -- rolls the counter back, and a counter reused would hide the next revocations from
  -- readers whose cursor is already past it.
  local floor = tonumber(ARGV[3])
  if seq < floor then
    seq = floor
    redis.call('SET', 'afterview:revocation-seq', floor)
  end
  redis.call('XADD', 'afterview:revocations', 'MAXLEN', '~', 100000, seq .. '-0', 'id', id, 'terminate', terminate, 'at', ARGV[3])
  redis.call('SET', key, terminate .. '|' .. ARGV[3] .. '|' .. seq, 'PX', keep)
  redis.call('PUBLISH', 'afterview:revoke', id)
  new = 1
end
local running = 0
local tag = redis.call('HGET', RUNNING, id)
if tag then
  local _, is_held = lease_of(tag)
  if is_held then running = 1 end
end
return {seq, running, new}
"#;

/// ARGV: cursor. Returns `[current_seq, entries...]`, each entry `[seq, id, terminate, at_ms]`,
/// at most 1000 after `cursor`. A log that restarted (seq below the cursor, e.g. a Redis that
/// lost its data) is read from its start.
pub(crate) const REVOCATIONS_SINCE: &str = r#"
local cursor = tonumber(ARGV[1])
local seq = tonumber(redis.call('GET', 'afterview:revocation-seq') or '0')
if seq < cursor then cursor = 0 end
local out = {seq}
if seq > cursor then
  local rows = redis.call('XRANGE', 'afterview:revocations', '(' .. cursor .. '-0', '+', 'COUNT', 1000)
  for _, r in ipairs(rows) do
    local f = {}
    for i = 1, #r[2], 2 do f[r[2][i]] = r[2][i + 1] end
    out[#out + 1] = {tonumber(string.match(r[1], '^(%d+)')), f.id or '', f.terminate or '0', f.at or '0'}
  end
end
return out
"#;

/// ARGV: tag ('' = none), epoch, entry JSON, max entries, cutoff (`YYYY-MM-DDTHH:MM:SS`, UTC).
/// Records a dead letter (newest first; at most `max`, none older than `cutoff`, the list
/// expiring a week after its newest) and acks the message if the lease is still held.
pub(crate) const DEAD: &str = r#"
even_when_full()
if ARGV[1] ~= '' and held(ARGV[1], ARGV[2]) then
  finish(ARGV[1])
end
push_dead(ARGV[3], tonumber(ARGV[4]), ARGV[5])
return 1
"#;

/// ARGV: routing key, envelope, ttl_ms. Delivers a pidbox reply as kombu's direct exchange
/// does (through `_kombu.binding.reply.celery.pidbox`); a reply nobody waits for is dropped,
/// and a delivered one expires if its client is gone (celery #6089).
pub(crate) const REPLY: &str = r#"
even_when_full()
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', '_kombu.binding.reply.celery.pidbox')) do
  local rk, rest = string.match(m, '^(.-)' .. SEP .. '(.*)$')
  if rk == ARGV[1] and rest then
    local q = string.match(rest, '^.-' .. SEP .. '(.*)$')
    if q then
      redis.call('LPUSH', q, ARGV[2])
      redis.call('PEXPIRE', q, ARGV[3])
      n = n + 1
    end
  end
end
return n
"#;

/// ARGV: backend_db, broker_db, ttl_ms, then per result: key, meta, fence tag ('' = none),
/// epoch, ack (0/1). Stores results (SET PX + PUBLISH, as Celery's SETEX + PUBLISH) whose fence
/// holds; without a fence, keeps a terminal state already stored; with ack, also acks the
/// message. Many results go in one call (the backend batches concurrent writes). Returns one of
/// 'stored', 'fenced', 'kept' per result.
pub(crate) const STORE: &str = r#"
even_when_full()
local backend_db, broker_db, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
-- Fences and acks first, in the broker's database (the script starts there), reading every
-- lease in one call; a lease acked earlier in this batch no longer fences a later write.
local tags, seen, nt = {}, {}, 0
for i = 4, #ARGV, 5 do
  local tag = ARGV[i + 2]
  if tag ~= '' and not seen[tag] then
    nt = nt + 1
    tags[nt] = tag
    seen[tag] = nt
  end
end
local cur = many('HMGET', LEASE, tags)
local acked, done_tags, done_tasks, nd = {}, {}, {}, 0
local n = 0
for i = 4, #ARGV, 5 do
  local tag, epoch, ack = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local verdict = 'stored'
  if tag ~= '' then
    local task = nil
    if not acked[tag] then task = holds(cur[seen[tag]], epoch) end
    if task == nil then
      verdict = 'fenced'
    elseif ack == '1' then
      acked[tag] = true
      nd = nd + 1
      done_tags[nd] = tag
      done_tasks[nd] = task
    end
  end
  n = n + 1
  out[n] = verdict
end
finish_many(done_tags, done_tasks)
-- ...then the results, in the backend's.
if backend_db ~= broker_db then redis.call('SELECT', ARGV[1]) end
for i = 4, #ARGV, 5 do
  local n = (i - 4) / 5 + 1
  local key, meta, tag = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if out[n] == 'stored' and tag == '' then
    local cur = redis.call('GET', key)
    if cur then
      local ok, m = pcall(cjson.decode, cur)
      if ok and type(m) == 'table' and (m.status == 'SUCCESS' or m.status == 'FAILURE' or m.status == 'REVOKED') then
        out[n] = 'kept'
      end
    end
  end
  if out[n] == 'stored' then
    -- The ttl as its argument text: a Lua number argument is formatted with snprintf per call.
    if ttl > 0 then redis.call('SET', key, meta, 'PX', ARGV[3]) else redis.call('SET', key, meta) end
    redis.call('PUBLISH', key, meta)
  end
end
return out
"#;

/// ARGV: now_ms (unused), then queue names. Counts ready, scheduled and leased messages per
/// queue. Each scheduled and leased entry is read once, whatever the number of queues asked
/// (a `/metrics` scrape asks for every known queue): a leased entry's queue is kombu's routing
/// key, read as the text at the end of `[envelope, exchange, routing_key]` when it is a plain
/// string within the last 80 bytes (kombu writes exactly those three elements), and decoded as
/// JSON only otherwise (escapes, a long name, another shape). 2,000 leased Celery envelopes,
/// four queues asked: 51.5 ms of Redis time per call when each entry was decoded per queue,
/// 9.3 ms now (Redis blocks for that long: a `/metrics` scrape asks twice).
pub(crate) const QUEUE_STATS: &str = r#"
local scheduled, leased = {}, {}
local function count(t, q)
  if type(q) == 'string' then t[q] = (t[q] or 0) + 1 end
end
for _, m in ipairs(redis.call('ZRANGE', 'afterview:scheduled', 0, -1)) do
  local ok, d = pcall(cjson.decode, m)
  if ok and type(d) == 'table' then count(scheduled, d.q) end
end
for _, u in ipairs(redis.call('HVALS', 'unacked')) do
  local q = string.match(string.sub(u, -80), '[^\\]"([^"\\]*)"%]$')
  if q == nil then
    local ok, a = pcall(cjson.decode, u)
    if ok and type(a) == 'table' then q = a[3] end
  end
  count(leased, q)
end
local out = {}
for i = 2, #ARGV do
  local q = ARGV[i]
  local ready = redis.call('LLEN', q) + redis.call('LLEN', q .. SEP .. '3') + redis.call('LLEN', q .. SEP .. '6') + redis.call('LLEN', q .. SEP .. '9')
  out[#out + 1] = {q, ready, scheduled[q] or 0, leased[q] or 0}
end
return out
"#;

/// ARGV: queue names. Deletes ready and scheduled messages; returns how many.
pub(crate) const PURGE: &str = r#"
local n = 0
local sched = redis.call('ZRANGE', 'afterview:scheduled', 0, -1)
for _, q in ipairs(ARGV) do
  for _, k in ipairs({q, q .. SEP .. '3', q .. SEP .. '6', q .. SEP .. '9'}) do
    n = n + redis.call('LLEN', k)
    redis.call('DEL', k)
  end
  for _, m in ipairs(sched) do
    local ok, d = pcall(cjson.decode, m)
    if ok and d.q == q then
      redis.call('ZREM', 'afterview:scheduled', m)
      n = n + 1
    end
  end
end
return n
"#;

/// A script with the helpers it uses in front.
pub(crate) fn with_helpers(body: &str) -> redis::Script {
    redis::Script::new(&assemble(body))
}

/// One top-level definition of [`HELPERS`]: its text (with the comment lines above it) and the
/// names it defines.
struct Helper {
    text: String,
    names: Vec<&'static str>,
}

/// [`HELPERS`] cut at its top-level `local` definitions (every column-0 line of it is a comment,
/// a `local`, or the `end` of a function).
fn helpers() -> Vec<Helper> {
    let mut items: Vec<Helper> = Vec::new();
    let mut comments = String::new();
    for line in HELPERS.lines() {
        if line.starts_with("--") {
            comments.push_str(line);
            comments.push('\n');
        } else if let Some(decl) = line.strip_prefix("local ") {
            let names = match decl.strip_prefix("function ") {
                Some(f) => vec![f.split('(').next().unwrap_or(f).trim()],
                None => decl
                    .split('=')
                    .next()
                    .unwrap_or(decl)
                    .split(',')
                    .map(str::trim)
                    .collect(),
            };
            let text = std::mem::take(&mut comments) + line + "\n";
            items.push(Helper { text, names });
        } else if let Some(last) = items.last_mut() {
            last.text.push_str(&comments);
            comments.clear();
            last.text.push_str(line);
            last.text.push('\n');
        }
    }
    items
}

/// The words of Lua text that could be names (identifiers, and keywords and words inside
/// strings and comments, which only ever make a helper come along that is not needed).
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// `body` after the helpers it names, directly or through other helpers, in [`HELPERS`]'s
/// order. Redis runs a script's whole text on every call, so each helper it carries is a
/// closure built per call: all of them cost ~23,000 instructions per call (`bench/lua_cost.py`
/// counts), paid once per claim and once per batch of results whatever its size. A helper
/// uses only those defined before it (a later one would be a global to Lua), so one pass from
/// the last to the first finds them all.
pub(crate) fn assemble(body: &str) -> String {
    let items = helpers();
    let mut wanted: std::collections::HashSet<&str> = words(body).collect();
    let mut take = vec![false; items.len()];
    for (i, item) in items.iter().enumerate().rev() {
        if item.names.iter().any(|n| wanted.contains(n)) {
            take[i] = true;
            wanted.extend(words(&item.text));
        }
    }
    let mut out: String = items
        .iter()
        .zip(take)
        .filter(|(_, t)| *t)
        .map(|(item, _)| item.text.as_str())
        .collect();
    out.push_str(body);
    out
}

#[cfg(test)]
mod tests {
    use afterview_engine::policy::TERMINAL_STATES;

    use super::*;

    const ALL: [&str; 15] = [
        CLAIM,
        ACK,
        RELEASE,
        RENEW,
        REQUEUE_EXPIRED,
        RETRY,
        DEFER,
        PUBLISH,
        REVOKE,
        REVOCATIONS_SINCE,
        DEAD,
        REPLY,
        STORE,
        QUEUE_STATS,
        PURGE,
    ];

    #[test]
    fn the_helpers_are_cut_at_their_top_level_definitions_and_nothing_is_lost() {
        for line in HELPERS.lines() {
            let top = line.starts_with(|c: char| !c.is_whitespace());
            assert!(
                !top || line.starts_with("--") || line.starts_with("local ") || line == "end",
                "a top-level line the cut does not know: {line:?}"
            );
        }
        let items = helpers();
        let whole: String = items.iter().map(|h| h.text.as_str()).collect();
        assert_eq!(whole.trim(), HELPERS.trim());
        let names: Vec<&str> = items.iter().flat_map(|h| h.names.clone()).collect();
        for n in [
            "SEP", "LEASE", "LEASES", "RUNNING", "record", "many", "PUSH", "waiters",
        ] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        // A body naming every helper gets all of them, in their order.
        assert_eq!(
            assemble(&names.join(" ")).trim(),
            format!("{}\n{}", HELPERS.trim(), names.join(" "))
        );
    }

    #[test]
    fn a_script_carries_the_helpers_it_uses_and_no_others() {
        let ack = assemble(ACK);
        for used in [
            "local function holder(",
            "local function finish(",
            "local function drop_many(",
            "local function many(",
        ] {
            assert!(ack.contains(used), "ACK needs {used}");
        }
        for unused in [
            "local function record(",
            "local function iso_now(",
            "local function restore(",
        ] {
            assert!(!ack.contains(unused), "ACK carries {unused}");
        }
        let claim = assemble(CLAIM);
        for used in [
            "local function record(",
            "local function envelope_ids(",
            "local function json_str(",
            "local function bucket(",
            "local function waiters(",
        ] {
            assert!(claim.contains(used), "CLAIM needs {used}");
        }
        assert!(!claim.contains("local function iso_now("));
        assert!(assemble("return 1") == "return 1");
    }

    /// What Lua can see: the script's body names any helper, a helper those defined before it.
    #[test]
    fn every_helper_a_script_or_its_helpers_name_is_defined_in_it() {
        let items = helpers();
        for body in ALL {
            let text = assemble(body);
            let carried: Vec<bool> = items.iter().map(|h| text.contains(&h.text)).collect();
            let mut users: Vec<(&str, usize)> = vec![(body, items.len())];
            for (i, item) in items.iter().enumerate() {
                if carried[i] {
                    users.push((&item.text, i));
                }
            }
            for (user, before) in users {
                let named: std::collections::HashSet<&str> = words(user).collect();
                for (j, item) in items[..before].iter().enumerate() {
                    if item.names.iter().any(|n| named.contains(n)) {
                        assert!(
                            carried[j],
                            "{:?} missing from a script naming it",
                            item.names
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_store_script_keeps_exactly_the_terminal_states() {
        let listed: Vec<&str> = super::STORE
            .split("m.status == '")
            .skip(1)
            .map(|s| &s[..s.find('\'').expect("quoted state")])
            .collect();
        let terminal: Vec<&str> = TERMINAL_STATES.iter().map(|s| s.as_str()).collect();
        assert_eq!(listed, terminal);
    }
}
