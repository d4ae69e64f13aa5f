--[[
vigil_log_hook.lua: a KumoMTA log hook that ships log records to Vigil in JSON-array
batches and does not drop a record that Vigil has not kept.

Written for Vigil, Apache-2.0.

Why not the stock hook? `log_hooks:new_json` (assets/policy-extras/log_hooks.lua:254-272 in
KumoMTA) calls `kumo.reject(500, ...)` on every non-2xx answer. kumod treats a rejection code
outside 400-499 as permanent: it logs a Bounce and removes the record from the spool
(crates/kumod/src/lua_deliver.rs:291-317). Vigil answers 503 (and sometimes 429) when it is
overloaded or its log is unavailable, so with the stock hook those records are lost. Only a
4xx rejection (lua_deliver.rs:248-284) or a raw Lua error (ready_queue.rs:2197-2233) is retried.
This hook rejects with 400 (retried) on every answer except 2xx and the two answers
where Vigil has kept the body in its dead-letter store (400, 422: rejected with 500, final).

Checked against KumoMTA's source at commit 3ebc1e8585e0e989cfcf50a93c94a803610249e8
(2026-08-04) by reading it. The checks in test_vigil_log_hook.lua run this file against stubs
of the kumod API. Run it in a real kumod before you rely on it.

Install: copy this file into kumod's policy directory (/opt/kumomta/etc/policy/, which is
already on kumod's package.path). Then, at the top level of init.lua, call it before the
queues helper and before any get_queue_config handler of your own:

    local vigil = require 'vigil_log_hook'
    vigil.setup {
      url = 'http://127.0.0.1:8008/ingest/kumomta',
      token_file = '/opt/kumomta/etc/vigil.token', -- optional: a token with the ingest role
      batch_size = 100,
      max_batch_latency = '1s',
      timeout = '30s',
    }

Options: url (required); token_file (omit it when kumod's host is in Vigil's trusted_hosts);
name ('vigil', so the queue and egress site are 'vigil.log_hook'); batch_size (100);
min_batch_size and max_batch_latency; timeout ('30s'); queue_config (retry_interval and
max_retry_interval default to '1m' and '20m'); log_parameters. Do not set
log_parameters.per_record templates, because the records must stay JSON. Do not set
log_parameters.deferred_spool either: without it kumod spools each record before queueing it,
so records survive a restart.

A record is retried until the queue's max_age (7 days by default). After that kumod expires it.
Set queue_config.max_age to cover the longest Vigil outage you want to survive.

Egress shaping: without its own block, the hook's site gets the shaping helper's
["default"]: connection_limit = 10, max_message_rate = "100/s", max_connection_rate =
"100/min" (assets/policy-extras/shaping.toml:54-64). Give it one in your shaping TOML:

    ['vigil.log_hook']
    mx_rollup = false                      # not a mail domain: no MX lookup
    connection_limit = 4                   # POSTs in flight per node; keep nodes x this
                                           # under Vigil's max_ingest_in_flight (32)
    max_deliveries_per_connection = 100000 # counted per record: keep the client's
                                           # pooled connections for long
    max_connection_rate = "1000/s"
    max_message_rate = "1000/s"            # taken once per batch, not per record
    max_ready = 10000
    idle_timeout = "60s"                   # must exceed max_batch_latency
]]

local kumo = require 'kumo'
local log_hooks = require 'policy-extras.log_hooks'

local mod = {}

-- kumod ends each record with a newline (crates/kumod/src/logging/hooks.rs:151-153). JSON
-- allows whitespace between array elements, but trimming it keeps the body exactly
-- `[r1,r2,...]`, which is easier to read in a dead letter.
local function trim_newlines(s)
  local n = #s
  while n > 0 do
    local b = s:byte(n)
    if b ~= 10 and b ~= 13 then
      break
    end
    n = n - 1
  end
  return s:sub(1, n)
end

-- Keep kumod's per-record disposition short; Vigil's answers are small, a proxy's may not be.
local function clip(s)
  if #s > 300 then
    return s:sub(1, 300) .. '...'
  end
  return s
end

function mod.setup(options)
  assert(type(options) == 'table', 'vigil_log_hook.setup: expected a table of options')
  local url = options.url
  assert(type(url) == 'string' and url ~= '', 'vigil_log_hook.setup: url is required')
  local batch_size = options.batch_size or 100
  assert(
    math.type(batch_size) == 'integer' and batch_size >= 1,
    'vigil_log_hook.setup: batch_size must be a positive integer'
  )
  local token_file = options.token_file
  local timeout = options.timeout or '30s'

  local function constructor(domain, tenant, campaign)
    local client = kumo.http.build_client { timeout = timeout }
    -- Loaded on first use and dropped on a 401/403. An operator who fixes the token file does
    -- not have to restart kumod.
    local token = nil
    local conn = {}

    function conn:send_batch(messages)
      local parts = {}
      for _, msg in ipairs(messages) do
        local record = trim_newlines(msg:get_data())
        -- One empty element would make the whole array invalid, and Vigil would dead-letter
        -- the batch.
        if record ~= '' then
          parts[#parts + 1] = record
        end
      end
      local body = '[' .. table.concat(parts, ',') .. ']'

      -- Everything that can fail before Vigil has answered goes through pcall: a missing token
      -- file, refused connections, resets, timeouts. kumo.reject stays outside the pcall,
      -- because pcall would catch the rejection it raises.
      local ok, response = pcall(function()
        if token_file and not token then
          token = (kumo.secrets.load(token_file):gsub('%s+$', ''))
        end
        local request =
          client:post(url):header('Content-Type', 'application/json')
        if token then
          request:bearer_auth(token)
        end
        return request:body(body):send()
      end)
      if not ok then
        -- After a timeout Vigil may have kept the batch anyway. Re-sending it is safe: Vigil
        -- counts a re-sent record once.
        kumo.reject(
          400,
          'vigil: request failed, will retry: ' .. clip(tostring(response))
        )
      end

      local code = response:status_code()
      -- The body only explains the status. Failing to read it must not change what we do.
      local read, text = pcall(function()
        return response:text()
      end)
      local detail = string.format(
        '%d %s: %s',
        code,
        response:status_reason() or '',
        clip(read and text or '')
      )

      if code >= 200 and code < 300 then
        -- Every record is durable in Vigil, or dead-lettered there.
        return detail
      end
      if code == 401 or code == 403 then
        -- A credential problem is a configuration mistake, not a verdict on the records.
        -- Retrying keeps them spooled until the token (or trusted_hosts) is fixed. A 5xx here
        -- would discard every record shipped in the meantime.
        token = nil
        kumo.reject(
          400,
          'vigil: credential refused; check token_file (ingest role) or Vigil trusted_hosts: '
            .. detail
        )
      end
      if code == 413 then
        -- Vigil kept nothing. Retrying holds the records in the spool while the operator
        -- lowers batch_size (or raises Vigil's max_body_bytes). They are not lost meanwhile.
        kumo.reject(
          400,
          'vigil: batch larger than Vigil accepts; lower batch_size: ' .. detail
        )
      end
      if code == 400 or code == 422 then
        -- Vigil found the body, or every record in it, unusable and kept it in its dead-letter
        -- store (GET /api/v1/deadletters). Sending it again would fail the same way.
        kumo.reject(500, 'vigil dead-lettered the batch: ' .. detail)
      end
      -- 408, 429 and 5xx mean "retry later". Any other code (a wrong URL's 404, a proxy's
      -- 3xx) is not a verdict from Vigil on the records, so it is retried as well.
      kumo.reject(400, detail)
    end

    -- kumod calls send, not send_batch, when batch_size is 1.
    function conn:send(message)
      return self:send_batch { message }
    end

    function conn:close()
      client:close()
    end

    return conn
  end

  log_hooks:new {
    name = options.name or 'vigil',
    batch_size = batch_size,
    min_batch_size = options.min_batch_size,
    max_batch_latency = options.max_batch_latency,
    queue_config = options.queue_config,
    log_parameters = options.log_parameters,
    constructor = constructor,
  }
end

return mod
