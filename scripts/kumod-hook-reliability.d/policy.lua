-- kumod policy for scripts/kumod-hook-reliability. Apache-2.0.
--
-- Provenance: adapted from Vigil's shared kumod harness policy,
-- /work/shared/tools/kumod/init.lua. Changes:
-- - the log hook is chosen by HOOK: KumoMTA's stock log_hooks:new_json, or Vigil's
--   deploy/kumomta/vigil_log_hook.lua;
-- - there is no traffic-shaping automation (no publish and no subscribe). The TSA publisher
--   also posts Delivery records to Vigil (/publish_log_v1), and Vigil would count a record
--   that the hook lost when it arrives that way. Here the hook is the only path to Vigil;
-- - mail goes to sink.test (MX -> 127.0.0.1, the fake MTA), whose egress path is opened wide
--   by the shaping file the script writes, so delivery is never what limits the run.
-- Shaping: the shaping helper with KumoMTA's own policy-extras/shaping.toml (its ["default"]
-- is what a kumod "at its defaults" gets), then SHAPING_FILE (the script's per-setup blocks).
--
-- Environment (all set by the script):
--   KUMO_ASSETS      the KumoMTA source tree's assets/ folder
--   KUMO_RUN_DIR     this node's spool, logs and accounting DB
--   KUMO_HTTP        loopback HOST:PORT for kumod's HTTP listener (injection, metrics)
--   VIGIL_URL        e.g. http://127.0.0.1:18008
--   SINK_PORT        the fake MTA's port on 127.0.0.1
--   HOOK             'stock' or 'vigil'
--   VIGIL_HOOK_DIR   the directory holding vigil_log_hook.lua (HOOK=vigil)
--   VIGIL_TOKEN_FILE the ingest token file (HOOK=vigil; empty: no token)
--   SHAPING_FILE     the per-setup shaping TOML
local kumo = require 'kumo'

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == '' then
    if default == nil then
      error('environment variable ' .. name .. ' is required')
    end
    return default
  end
  return v
end

local ASSETS = env 'KUMO_ASSETS'
local RUN_DIR = env 'KUMO_RUN_DIR'
local HTTP_LISTEN = env 'KUMO_HTTP'
local VIGIL_URL = env 'VIGIL_URL'
local SINK_PORT = tonumber(env 'SINK_PORT')
local HOOK = env 'HOOK'
local SHAPING_FILE = env 'SHAPING_FILE'

package.path = ASSETS .. '/?.lua;' .. package.path

kumo.dns.configure_test_resolver {
  [[
$ORIGIN sink.test.
@ 3600 IN MX 10 mx.sink.test.
mx 3600 IN A 127.0.0.1
]],
}

-- The hook comes first: its get_queue_config handler must run before the catch-all one below.
-- Both hooks retry on the same short schedule, so the runs drain in minutes.
local HOOK_QUEUE = { retry_interval = '10s', max_retry_interval = '30s' }
if HOOK == 'stock' then
  local log_hooks = require 'policy-extras.log_hooks'
  log_hooks:new_json {
    name = 'vigil',
    url = VIGIL_URL .. '/ingest/kumomta',
    queue_config = HOOK_QUEUE,
  }
elseif HOOK == 'vigil' then
  package.path = env 'VIGIL_HOOK_DIR' .. '/?.lua;' .. package.path
  local token_file = env('VIGIL_TOKEN_FILE', '')
  require('vigil_log_hook').setup {
    url = VIGIL_URL .. '/ingest/kumomta',
    token_file = token_file ~= '' and token_file or nil,
    batch_size = 100,
    max_batch_latency = '1s',
    timeout = '30s',
    queue_config = HOOK_QUEUE,
  }
else
  error('HOOK must be stock or vigil, not ' .. HOOK)
end

local shaping = require 'policy-extras.shaping'
local shaper = shaping:setup_with_automation {
  publish = {},
  subscribe = {},
  no_default_files = true, -- the default path is an installed location; load from ASSETS
  extra_files = {
    ASSETS .. '/policy-extras/shaping.toml',
    SHAPING_FILE,
  },
  load_validation_options = {
    aliased_site = 'Ignore',
    dns_fail = 'Ignore',
    local_load = 'Error',
    null_mx = 'Ignore',
    provider_overlap = 'Ignore',
    remote_load = 'Ignore',
    skip_remote = false,
    http_timeout = '5s',
  },
}

kumo.on('init', function()
  kumo.configure_accounting_db_path(RUN_DIR .. '/accounting.db')
  kumo.define_spool {
    name = 'data',
    path = RUN_DIR .. '/spool/data',
    kind = 'RocksDB',
  }
  kumo.define_spool {
    name = 'meta',
    path = RUN_DIR .. '/spool/meta',
    kind = 'RocksDB',
  }
  kumo.configure_local_logs {
    log_dir = RUN_DIR .. '/logs',
    max_segment_duration = '5s',
  }
  kumo.start_http_listener {
    listen = HTTP_LISTEN,
    trusted_hosts = { '127.0.0.1', '::1' },
  }
end)

kumo.on('get_egress_source', function(source_name)
  return kumo.make_egress_source {
    name = source_name,
    source_address = '127.0.0.1',
    ehlo_domain = 'kumod-test.localhost',
  }
end)

kumo.on('get_egress_pool', function(pool_name)
  return kumo.make_egress_pool {
    name = pool_name,
    entries = { { name = 'ip-1' } },
  }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    egress_pool = 'pool-1',
    retry_interval = '20s',
    max_retry_interval = '1m',
  }
end)

kumo.on('get_egress_path_config', function(domain, egress_source, site_name)
  local params = shaper.get_egress_path_config(domain, egress_source, site_name, true)
  -- Deliver to the fake MTA on loopback (kumod refuses 127.0.0.0/8 by default).
  params.smtp_port = SINK_PORT
  params.prohibited_hosts = {}
  params.enable_tls = 'Disabled'
  params.enable_mta_sts = false
  params.enable_dane = false
  kumo.log_info(
    string.format(
      'EGRESS_PATH_CONFIG domain=%s source=%s site=%s connection_limit=%s max_message_rate=%s',
      tostring(domain),
      tostring(egress_source),
      tostring(site_name),
      tostring(params.connection_limit),
      tostring(params.max_message_rate)
    )
  )
  return kumo.make_egress_path(params)
end)

kumo.on('http_message_generated', function(msg)
  -- nothing to add; messages are injected already formed
end)
