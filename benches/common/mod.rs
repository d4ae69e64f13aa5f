//! What the end-to-end benchmarks share: a `vigil run` child process on a free loopback port.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `vigil run`, killed when dropped.
pub struct Vigil {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` (a `vigil run` with `--listen 127.0.0.1:0` among its arguments) and waits
/// for the address it prints.
pub fn start(mut command: Command) -> Vigil {
    // Benchmarks talk to loopback only: no DNS lookups through the host's resolver, unless the
    // benchmark points [dns] at its own server and says so.
    if !command.get_envs().any(|(name, _)| name == "VIGIL_DNS") {
        command.env("VIGIL_DNS", "false");
    }
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting vigil run");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .expect("vigil prints its address");
    let base = line.trim().strip_prefix("vigil listening on ").expect("the address line").to_owned();
    Vigil { child, base }
}
