//! A real Kafka-protocol broker for tests: tansu on a loopback port (DESIGN §10;
//! `scripts/test` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::wait_until;

/// The tansu binary: `$VIGIL_TANSU`, else `tansu` on the PATH or in `~/.cargo/bin`.
pub fn tansu() -> PathBuf {
    if let Ok(path) = std::env::var("VIGIL_TANSU") {
        return path.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("tansu"))
        .chain([Path::new(&home).join(".cargo/bin/tansu")])
        .collect::<Vec<_>>();
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "tansu not found: run ./scripts/test (it installs it), or \
             `cargo install tansu --locked --features dynostore,libsql`"
        )
    })
}

/// A child process, killed (and reaped) when stopped or dropped.
pub struct Running(pub Child);

impl Running {
    pub fn stop(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Broker(Running);

impl Broker {
    /// Starts tansu on `port`, storing in `dir/tansu.db` (kept across restarts).
    pub fn start(dir: &Path, port: u16) -> Self {
        Self::start_with(dir, port, "sqlite://tansu.db")
    }

    /// Starts tansu on `port` with a storage engine URL (`memory://tansu/` keeps nothing).
    pub fn start_with(dir: &Path, port: u16, storage: &str) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join(format!("broker-{}.log", now_millis()))).unwrap();
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", storage])
            .current_dir(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting tansu");
        let broker = Self(Running(child));
        wait_until("the broker to accept connections", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        broker
    }

    pub fn stop(self) {
        self.0.stop();
    }
}

pub fn now_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}
