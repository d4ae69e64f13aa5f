//! The KumoMTA log hook Vigil ships (`deploy/kumomta/vigil_log_hook.lua`) retries everything
//! Vigil has not kept (503, 429, 5xx, connection errors: `kumo.reject(400)`) and keeps only
//! 400/422 final. Checked with Debian's `lua5.4` against stubs of kumod's Lua API
//! (`deploy/kumomta/test_vigil_log_hook.lua`); `scripts/kumod-hook-reliability` runs it in a
//! real kumod.

use std::path::Path;
use std::process::Command;

#[test]
fn the_shipped_hook_retries_what_vigil_did_not_keep() {
    let lua = std::env::var("VIGIL_LUA").unwrap_or_else(|_| "/usr/bin/lua5.4".into());
    assert!(Path::new(&lua).exists(), "{lua} not found: ./scripts/test installs Debian's lua5.4");
    let out = Command::new(&lua)
        .arg("deploy/kumomta/test_vigil_log_hook.lua")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running lua5.4");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for check in ["503 gives reject 400", "400 gives reject 500", "a raised transport error gives reject 400"] {
        assert!(stdout.contains(check), "the harness no longer checks `{check}`:\n{stdout}");
    }
}
