--[[
Checks for vigil_log_hook.lua without kumod: `lua5.4 deploy/kumomta/test_vigil_log_hook.lua`.

Written for Vigil, Apache-2.0. The stubs copy the kumod API that the hook uses, as it is at
KumoMTA commit 3ebc1e8585e0e989cfcf50a93c94a803610249e8:
- kumo.reject(code, message) raises an error, which kumod reads as a rejection
  (crates/kumod/src/mod_kumo.rs:139-147); here it is the table {code=, message=};
- kumo.http.build_client{...}, client:post(url), request:header / bearer_auth / body /
  timeout / send(), response:status_code / status_reason / status_is_success / text
  (crates/mod-http/src/lib.rs). send() consumes the request and text() consumes the response,
  as in the real API. A transport failure raises a Lua error;
- kumo.secrets.load(path) reads the file's bytes, untrimmed (crates/data-loader/src/lib.rs);
- log_hooks:new{...} accepts only LogHookOptions' fields (assets/policy-extras/log_hooks.lua:46-55);
- msg:get_data() is the record's JSON followed by "\n" (crates/kumod/src/logging/hooks.rs:141-153).
Prints one line per check and exits 1 if any check fails.
]]

local here = (arg and arg[0] and arg[0]:match('^(.*)/[^/]*$')) or '.'
package.path = here .. '/?.lua;' .. package.path

-- Stubs -------------------------------------------------------------------------------------

local state -- what the stubs saw; reset by fresh()

local REASONS = {
  [200] = 'OK',
  [400] = 'Bad Request',
  [401] = 'Unauthorized',
  [403] = 'Forbidden',
  [404] = 'Not Found',
  [408] = 'Request Timeout',
  [413] = 'Payload Too Large',
  [422] = 'Unprocessable Entity',
  [429] = 'Too Many Requests',
  [500] = 'Internal Server Error',
  [502] = 'Bad Gateway',
  [503] = 'Service Unavailable',
  [504] = 'Gateway Timeout',
}

local function new_response(script)
  local consumed = false
  local r = {}
  function r:status_code()
    return script.status
  end
  function r:status_reason()
    return REASONS[script.status] -- nil for a non-canonical code, as in reqwest
  end
  function r:status_is_success()
    return script.status >= 200 and script.status < 300
  end
  function r:text()
    if consumed then
      error 'broken response wrapper'
    end
    consumed = true
    if script.text_error then
      error(script.text_error)
    end
    return script.text or ''
  end
  return r
end

local function new_request(url)
  local req = { url = url, headers = {}, sent = false }
  local function check_self(self, method)
    assert(self == req, 'request:' .. method .. ' called without `:`')
  end
  function req:header(k, v)
    check_self(self, 'header')
    assert(type(k) == 'string' and type(v) == 'string', 'header(name, value) takes strings')
    self.headers[k] = v
    return self
  end
  function req:bearer_auth(token)
    check_self(self, 'bearer_auth')
    assert(type(token) == 'string', 'bearer_auth takes a string')
    self.headers['Authorization'] = 'Bearer ' .. token
    return self
  end
  function req:body(b)
    check_self(self, 'body')
    assert(type(b) == 'string', 'body takes a string')
    self.body_text = b
    return self
  end
  function req:timeout(d)
    check_self(self, 'timeout')
    self.timeout_value = d
    return self
  end
  function req:send()
    check_self(self, 'send')
    if self.sent then
      error 'broken request builder'
    end
    self.sent = true
    table.insert(state.requests, self)
    local script = table.remove(state.responses, 1)
    assert(script, 'test bug: no scripted response left')
    if script.raise then
      error(script.raise)
    end
    return new_response(script)
  end
  return req
end

local CLIENT_OPTIONS = {
  user_agent = true,
  connection_verbose = true,
  pool_idle_timeout = true,
  timeout = true,
  accept_invalid_certs = true,
}

local kumo = { http = {}, secrets = {} }

function kumo.on(name, fn)
  assert(type(name) == 'string' and type(fn) == 'function', 'kumo.on(name, function)')
  state.events[name] = fn
end

function kumo.reject(code, message)
  assert(math.type(code) == 'integer' and code >= 0 and code <= 65535, 'reject: code is a u16')
  assert(type(message) == 'string', 'reject: message is a string')
  error({ code = code, message = message }, 0)
end

function kumo.http.build_client(options)
  for k in pairs(options or {}) do
    -- The real ClientOptions ignores unknown keys. Refusing them catches typos.
    assert(CLIENT_OPTIONS[k], 'build_client: unknown option ' .. tostring(k))
  end
  local client = { options = options, closed = false }
  function client:post(url)
    assert(self == client, 'client:post called without `:`')
    if self.closed then
      error 'client was closed'
    end
    return new_request(url)
  end
  function client:close()
    self.closed = true
  end
  table.insert(state.clients, client)
  return client
end

function kumo.secrets.load(source)
  assert(type(source) == 'string', 'test uses a file keysource')
  state.secret_loads = state.secret_loads + 1
  local content = state.files[source]
  if content == nil then
    error('KeySource failed to load data from file `' .. source .. '`')
  end
  return content
end

local LOG_HOOK_OPTIONS = {
  name = 'string',
  log_parameters = 'table',
  queue_config = 'table',
  constructor = 'function',
  batch_size = 'number',
  min_batch_size = 'number',
  max_batch_latency = 'string',
  filter = 'function',
}

local log_hooks = {}
function log_hooks:new(options)
  assert(self == log_hooks, 'log_hooks:new called without `:`')
  for k, v in pairs(options) do
    local want = LOG_HOOK_OPTIONS[k]
    if not want then
      error("LogHookOptions: unknown field '" .. tostring(k) .. "'")
    end
    assert(type(v) == want, 'LogHookOptions: ' .. k .. ' must be a ' .. want)
  end
  assert(options.name and options.constructor, 'LogHookOptions: name and constructor are required')
  if state.hooks[options.name] then
    error("log_hook with name '" .. options.name .. "' has already been configured")
  end
  state.hooks[options.name] = options
  state.last_hook = options
end

package.preload['kumo'] = function()
  return kumo
end
package.preload['policy-extras.log_hooks'] = function()
  return log_hooks
end

local function fresh()
  state = {
    events = {},
    hooks = {},
    clients = {},
    requests = {},
    responses = {},
    files = {},
    secret_loads = 0,
  }
end
fresh()

local function message(json, ending)
  local m = { data = json .. (ending or '\n') }
  function m:get_data()
    return self.data
  end
  function m:get_meta(_key)
    return nil
  end
  return m
end

-- A small JSON parser, so the body is checked as JSON and not only as a string ---------------

local function json_decode(s)
  local pos = 1
  local function ws()
    pos = s:find('[^ \t\r\n]', pos) or (#s + 1)
  end
  local value
  local function str()
    pos = pos + 1
    local out = {}
    while true do
      local c = s:sub(pos, pos)
      if c == '' then
        error('unterminated string')
      elseif c == '"' then
        pos = pos + 1
        return table.concat(out)
      elseif c == '\\' then
        local e = s:sub(pos + 1, pos + 1)
        local map = { ['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t' }
        if e == 'u' then
          out[#out + 1] = utf8.char(tonumber(s:sub(pos + 2, pos + 5), 16))
          pos = pos + 6
        elseif map[e] then
          out[#out + 1] = map[e]
          pos = pos + 2
        else
          error('bad escape at ' .. pos)
        end
      elseif c:byte() < 32 then
        error('control character in string at ' .. pos)
      else
        out[#out + 1] = c
        pos = pos + 1
      end
    end
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == '{' then
      local obj = { __kind = 'object' }
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == '}' then
        pos = pos + 1
        return obj
      end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then
          error('expected a key at ' .. pos)
        end
        local k = str()
        ws()
        if s:sub(pos, pos) ~= ':' then
          error('expected : at ' .. pos)
        end
        pos = pos + 1
        obj[k] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == '}' then
          return obj
        elseif d ~= ',' then
          error('expected , or } at ' .. (pos - 1))
        end
      end
    elseif c == '[' then
      local arr = { __kind = 'array' }
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == ']' then
        pos = pos + 1
        return arr
      end
      while true do
        arr[#arr + 1] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == ']' then
          return arr
        elseif d ~= ',' then
          error('expected , or ] at ' .. (pos - 1))
        end
      end
    elseif c == '"' then
      return str()
    else
      local lit = s:match('^-?%d+%.?%d*[eE]?[-+]?%d*', pos)
      if lit and lit ~= '' then
        pos = pos + #lit
        return tonumber(lit)
      end
      for word, v in pairs { ['true'] = true, ['false'] = false, ['null'] = 'null' } do
        if s:sub(pos, pos + #word - 1) == word then
          pos = pos + #word
          return v
        end
      end
      error('unexpected ' .. (c == '' and 'end' or c) .. ' at ' .. pos)
    end
  end
  local v = value()
  ws()
  if pos <= #s then
    error('trailing text at ' .. pos)
  end
  return v
end

-- Harness -----------------------------------------------------------------------------------

local failures, count = 0, 0
local function check(name, fn)
  count = count + 1
  fresh()
  local ok, err = pcall(fn)
  if ok then
    print(string.format('ok %d - %s', count, name))
  else
    failures = failures + 1
    if type(err) == 'table' then
      err = string.format('unexpected rejection %s %s', tostring(err.code), tostring(err.message))
    end
    print(string.format('not ok %d - %s: %s', count, name, tostring(err)))
  end
end

local function expect(cond, message)
  if not cond then
    error(message, 2)
  end
end

local URL = 'http://127.0.0.1:8008/ingest/kumomta'
local TOKEN_FILE = '/opt/kumomta/etc/vigil.token'

local RECORDS = {
  '{"type":"Reception","id":"5f0a3c1e2b7d11f1a4c250ebf67f93bd","sender":"a@example.com","recipient":"u1@example.net","timestamp":1796479392,"meta":{},"headers":{}}',
  '{"type":"Delivery","id":"5f0a3c1e2b7d11f1a4c250ebf67f93bd","recipient":"u1@example.net","response":{"code":250,"content":"2.0.0 OK [queued], id=\\"x,y\\"]","command":null},"timestamp":1796479393}',
  '{"type":"TransientFailure","id":"6a0a3c1e2b7d11f1a4c250ebf67f93be","recipient":["u2@example.net"],"response":{"code":421,"content":"4.7.0 [TSS04] line1\\nline2 {}","enhanced_code":{"class":4,"subject":7,"detail":0}},"timestamp":1796479394}',
}

local vigil -- the module under test, loaded by the first check

local function setup_hook(extra)
  local options = {
    url = URL,
    token_file = TOKEN_FILE,
    batch_size = 100,
    max_batch_latency = '1s',
    timeout = '30s',
  }
  for k, v in pairs(extra or {}) do
    if v == false then
      options[k] = nil
    else
      options[k] = v
    end
  end
  state.files[TOKEN_FILE] = 'tok-1234567890abcdef\n'
  vigil.setup(options)
  local conn = state.last_hook.constructor('vigil.log_hook', nil, nil)
  return conn
end

local function batch()
  local msgs = {}
  for i, r in ipairs(RECORDS) do
    msgs[i] = message(r)
  end
  return msgs
end

-- Calls send_batch with one scripted answer; returns ('ok', disposition) or ('reject', code, message).
local function outcome(conn, script, msgs)
  table.insert(state.responses, script)
  local ok, result = pcall(conn.send_batch, conn, msgs or batch())
  if ok then
    return 'ok', result
  end
  if type(result) == 'table' and result.code then
    return 'reject', result.code, result.message
  end
  return 'error', tostring(result)
end

check("loads with require 'vigil_log_hook'", function()
  package.loaded['vigil_log_hook'] = nil
  vigil = require 'vigil_log_hook'
  expect(type(vigil) == 'table' and type(vigil.setup) == 'function', 'module has no setup function')
end)

if not vigil then
  print 'cannot continue without the module'
  os.exit(1)
end

check('setup registers one log_hooks:new hook with the given options', function()
  setup_hook { queue_config = { retry_interval = '10s' } }
  local h = state.last_hook
  expect(h.name == 'vigil', 'name is ' .. tostring(h.name))
  expect(h.batch_size == 100, 'batch_size is ' .. tostring(h.batch_size))
  expect(h.max_batch_latency == '1s', 'max_batch_latency is ' .. tostring(h.max_batch_latency))
  expect(h.queue_config.retry_interval == '10s', 'queue_config was not passed on')
  expect(type(h.constructor) == 'function', 'no constructor')
end)

check('the constructor builds a client with the timeout and a connection with send_batch, send, close', function()
  local conn = setup_hook()
  expect(#state.clients == 1, 'expected one client, got ' .. #state.clients)
  expect(state.clients[1].options.timeout == '30s', 'timeout is ' .. tostring(state.clients[1].options.timeout))
  for _, m in ipairs { 'send_batch', 'send', 'close' } do
    expect(type(conn[m]) == 'function', 'connection lacks ' .. m)
  end
  conn:close()
  expect(state.clients[1].closed, 'close did not close the client')
end)

check('a batch of 3 is one POST of a JSON array of 3 objects, with JSON content type and bearer token', function()
  local conn = setup_hook()
  local kind = outcome(conn, { status = 200, text = '{"accepted":3}' })
  expect(kind == 'ok', 'outcome ' .. kind)
  expect(#state.requests == 1, 'expected 1 request, got ' .. #state.requests)
  local req = state.requests[1]
  expect(req.url == URL, 'url ' .. tostring(req.url))
  expect(req.headers['Content-Type'] == 'application/json', 'Content-Type ' .. tostring(req.headers['Content-Type']))
  expect(
    req.headers['Authorization'] == 'Bearer tok-1234567890abcdef',
    'Authorization ' .. tostring(req.headers['Authorization'])
  )
  expect(req.body_text == '[' .. table.concat(RECORDS, ',') .. ']', 'body is not the records joined: ' .. req.body_text)
  local ok, parsed = pcall(json_decode, req.body_text)
  expect(ok, 'body is not JSON: ' .. tostring(parsed))
  expect(parsed.__kind == 'array' and #parsed == 3, 'not an array of 3')
  for i = 1, 3 do
    expect(type(parsed[i]) == 'table' and parsed[i].__kind == 'object', 'element ' .. i .. ' is not an object')
  end
  expect(parsed[2].response.content == '2.0.0 OK [queued], id="x,y"]', 'string content changed')
end)

check('200 returns a disposition string and does not reject', function()
  local conn = setup_hook()
  local kind, disposition = outcome(conn, { status = 200, text = '{"accepted":3,"duplicates":0}' })
  expect(kind == 'ok', 'outcome ' .. kind .. ' ' .. tostring(disposition))
  expect(type(disposition) == 'string' and disposition:find('^200 OK'), 'disposition ' .. tostring(disposition))
end)

for _, code in ipairs { 503, 429, 500, 502, 504, 408, 401, 403, 413, 404 } do
  check(code .. ' gives reject 400 (kumod retries)', function()
    local conn = setup_hook()
    local kind, rc, msg = outcome(conn, { status = code, text = '{"error":"x"}' })
    expect(kind == 'reject' and rc == 400, string.format('got %s %s %s', kind, tostring(rc), tostring(msg)))
    expect(msg:find(tostring(code), 1, true), 'message does not carry the status: ' .. msg)
  end)
end

check('a raised transport error gives reject 400 (kumod retries)', function()
  local conn = setup_hook()
  local kind, rc, msg = outcome(conn, { raise = 'error sending request: connection refused' })
  expect(kind == 'reject' and rc == 400, string.format('got %s %s %s', kind, tostring(rc), tostring(msg)))
  expect(msg:find('connection refused', 1, true), 'message lost the cause: ' .. msg)
end)

for _, code in ipairs { 400, 422 } do
  check(code .. ' gives reject 500 (final: Vigil dead-lettered the body)', function()
    local conn = setup_hook()
    local kind, rc, msg = outcome(conn, { status = code, text = '{"error":"bad"}' })
    expect(kind == 'reject' and rc == 500, string.format('got %s %s %s', kind, tostring(rc), tostring(msg)))
  end)
end

check('413 tells the operator to lower batch_size', function()
  local conn = setup_hook()
  local _, _, msg = outcome(conn, { status = 413, text = '' })
  expect(msg:find('batch_size', 1, true), 'message: ' .. tostring(msg))
end)

check('after a 401 the token file is read again (fixed without restarting kumod)', function()
  local conn = setup_hook()
  outcome(conn, { status = 401, text = '' })
  state.files[TOKEN_FILE] = 'tok-fixed-0000000000000\n'
  local kind = outcome(conn, { status = 200, text = '' })
  expect(kind == 'ok', 'outcome ' .. kind)
  expect(
    state.requests[2].headers['Authorization'] == 'Bearer tok-fixed-0000000000000',
    'second request used ' .. tostring(state.requests[2].headers['Authorization'])
  )
end)

check('the token is loaded once per connection while it is accepted', function()
  local conn = setup_hook()
  outcome(conn, { status = 200 })
  outcome(conn, { status = 503 })
  outcome(conn, { status = 200 })
  expect(state.secret_loads == 1, 'loaded ' .. state.secret_loads .. ' times')
end)

check('a missing token file gives reject 400, not a lost batch', function()
  local conn = setup_hook()
  state.files[TOKEN_FILE] = nil
  local ok, err = pcall(conn.send_batch, conn, batch())
  expect(not ok and type(err) == 'table' and err.code == 400, 'got ' .. tostring(type(err) == 'table' and err.code or err))
  expect(#state.requests == 0, 'a request was sent without the token')
end)

check('without token_file no Authorization header is sent and no secret is loaded', function()
  local conn = setup_hook { token_file = false }
  local kind = outcome(conn, { status = 200 })
  expect(kind == 'ok', 'outcome ' .. kind)
  expect(state.requests[1].headers['Authorization'] == nil, 'Authorization was sent')
  expect(state.secret_loads == 0, 'a secret was loaded')
end)

check('a failure to read the body of a 200 still counts as delivered', function()
  local conn = setup_hook()
  local kind = outcome(conn, { status = 200, text_error = 'connection reset' })
  expect(kind == 'ok', 'outcome ' .. kind)
end)

check('records ending in CRLF are trimmed; send (batch_size 1) posts a one-element array', function()
  local conn = setup_hook { batch_size = 1 }
  expect(state.last_hook.batch_size == 1, 'batch_size not passed on')
  table.insert(state.responses, { status = 200 })
  local ok, err = pcall(conn.send, conn, message(RECORDS[1], '\r\n'))
  expect(ok, 'send failed: ' .. tostring(type(err) == 'table' and err.message or err))
  expect(state.requests[1].body_text == '[' .. RECORDS[1] .. ']', 'body ' .. state.requests[1].body_text)
end)

check('setup refuses a missing url and a bad batch_size', function()
  expect(not pcall(vigil.setup, { batch_size = 10 }), 'accepted a missing url')
  expect(not pcall(vigil.setup, { url = URL, batch_size = 0 }), 'accepted batch_size 0')
  expect(not pcall(vigil.setup, { url = URL, batch_size = 2.5 }), 'accepted batch_size 2.5')
  expect(next(state.hooks) == nil, 'a hook was registered anyway')
end)

print(string.format('%d checks, %d failed', count, failures))
if failures > 0 then
  os.exit(1)
end
