-- kumod policy for scripts/kumod-feedback-fixture. Apache-2.0.
--
-- One node that sends mail to yahoo.com (MX mta5.am0.yahoodns.net, resolved to the fake MTA on
-- loopback) from egress source ip-1 in pool pool-1, and takes feedback reports for
-- fbl.sender.example on its SMTP listener with log_arf = 'LogThenDrop', as KumoMTA's FBL guide
-- sets it up. Injected messages get tenant and campaign meta from their X-Tenant / X-Campaign
-- headers, which the injection's trace_headers carry in X-KumoRef.
--
-- Provenance: the init block and the egress path follow Vigil's shared kumod harness policy
-- (/work/shared/tools/kumod/init.lua) without the shaping helper or log hook.
--
-- Environment (all set by the script):
--   KUMO_RUN_DIR  spool, logs and accounting DB
--   KUMO_HTTP     loopback HOST:PORT for kumod's HTTP listener (injection)
--   KUMO_SMTP     loopback HOST:PORT for kumod's SMTP listener (feedback reports)
--   SINK_PORT     the fake MTA's port on 127.0.0.1
local kumo = require 'kumo'

local function env(name)
  local v = os.getenv(name)
  if v == nil or v == '' then
    error('environment variable ' .. name .. ' is required')
  end
  return v
end

local RUN_DIR = env 'KUMO_RUN_DIR'
local HTTP_LISTEN = env 'KUMO_HTTP'
local SMTP_LISTEN = env 'KUMO_SMTP'
local SINK_PORT = tonumber(env 'SINK_PORT')

kumo.dns.configure_test_resolver {
  [[
$ORIGIN yahoo.com.
@ 3600 IN MX 1 mta5.am0.yahoodns.net.
]],
  [[
$ORIGIN am0.yahoodns.net.
mta5 3600 IN A 127.0.0.1
]],
}

kumo.on('init', function()
  kumo.configure_accounting_db_path(RUN_DIR .. '/accounting.db')
  kumo.define_spool { name = 'data', path = RUN_DIR .. '/spool/data', kind = 'RocksDB' }
  kumo.define_spool { name = 'meta', path = RUN_DIR .. '/spool/meta', kind = 'RocksDB' }
  kumo.configure_local_logs { log_dir = RUN_DIR .. '/logs', max_segment_duration = '1s' }
  kumo.start_http_listener { listen = HTTP_LISTEN, trusted_hosts = { '127.0.0.1', '::1' } }
  kumo.start_esmtp_listener {
    listen = SMTP_LISTEN,
    hostname = 'mx.fbl.sender.example',
    relay_hosts = { '127.0.0.1' },
  }
end)

kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'fbl.sender.example' then
    return kumo.make_listener_domain { log_arf = 'LogThenDrop' }
  end
end)

kumo.on('http_message_generated', function(msg)
  local tenant = msg:get_first_named_header_value 'X-Tenant'
  local campaign = msg:get_first_named_header_value 'X-Campaign'
  if tenant then
    msg:set_meta('tenant', tenant)
  end
  if campaign then
    msg:set_meta('campaign', campaign)
  end
end)

kumo.on('get_egress_source', function(source_name)
  return kumo.make_egress_source {
    name = source_name,
    source_address = '127.0.0.1',
    ehlo_domain = 'mta1.sender.example',
  }
end)

kumo.on('get_egress_pool', function(pool_name)
  return kumo.make_egress_pool { name = pool_name, entries = { { name = 'ip-1' } } }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config { egress_pool = 'pool-1', retry_interval = '10s' }
end)

kumo.on('get_egress_path_config', function(domain, egress_source, site_name)
  return kumo.make_egress_path {
    smtp_port = SINK_PORT,
    prohibited_hosts = {},
    enable_tls = 'Disabled',
    enable_mta_sts = false,
    enable_dane = false,
  }
end)
