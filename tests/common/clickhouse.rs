//! A real ClickHouse server for tests: Debian's `clickhouse-server` (18.16 in CI; DESIGN §10;
//! `scripts/test` installs it), on free loopback ports with its data in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::broker::Running;
use super::{free_port, wait_until};

/// The server binary: `$VIGIL_CLICKHOUSE`, else `clickhouse-server` on the PATH or in
/// `/usr/sbin` / `/usr/bin` (where Debian puts it).
pub fn clickhouse_server() -> PathBuf {
    if let Ok(path) = std::env::var("VIGIL_CLICKHOUSE") {
        return path.into();
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
        .map(|dir| Path::new(dir).join("clickhouse-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("clickhouse-server not found: run ./scripts/test (it installs Debian's clickhouse-server)")
        })
}

/// A running ClickHouse; stopped (and its directory removed) when dropped.
pub struct ClickHouse {
    server: Option<Running>,
    dir: tempfile::TempDir,
    pub url: String,
}

impl ClickHouse {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (http_port, tcp_port) = (free_port(), free_port());
        let root = dir.path().display();
        // The smallest configuration 18.16 and current releases both accept: loopback only, UTC,
        // the default user without a password, everything under the temporary directory.
        std::fs::write(
            dir.path().join("config.xml"),
            format!(
                "<yandex>\n  <logger><level>warning</level><log>{root}/server.log</log>\
                 <errorlog>{root}/server.err.log</errorlog></logger>\n  \
                 <listen_host>127.0.0.1</listen_host>\n  <http_port>{http_port}</http_port>\n  \
                 <tcp_port>{tcp_port}</tcp_port>\n  <timezone>UTC</timezone>\n  \
                 <path>{root}/data/</path>\n  <tmp_path>{root}/tmp/</tmp_path>\n  \
                 <user_files_path>{root}/user_files/</user_files_path>\n  \
                 <format_schema_path>{root}/format_schemas/</format_schema_path>\n  \
                 <users_config>users.xml</users_config>\n  <default_profile>default</default_profile>\n  \
                 <default_database>default</default_database>\n  <mark_cache_size>268435456</mark_cache_size>\n\
                 </yandex>\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("users.xml"),
            "<yandex>\n  <profiles><default></default></profiles>\n  <users><default><password></password>\
             <networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota>\
             </default></users>\n  <quotas><default></default></quotas>\n</yandex>\n",
        )
        .unwrap();
        let mut server = Self { server: None, dir, url: format!("http://127.0.0.1:{http_port}") };
        server.resume();
        server
    }

    /// Stops the server (as a crash would: killed), keeping its data and ports.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    /// Starts the server again on the same data and ports, and waits until it answers.
    pub fn resume(&mut self) {
        let child = Command::new(clickhouse_server())
            .arg(format!("--config-file={}", self.dir.path().join("config.xml").display()))
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("starting clickhouse-server");
        self.server = Some(Running(child));
        wait_until("ClickHouse to answer", Duration::from_secs(60), || self.try_query("SELECT 1").is_ok());
    }

    /// Runs `sql` over HTTP: the answer, or ClickHouse's error.
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let response =
            reqwest::blocking::Client::new().post(&self.url).body(sql.to_owned()).send().map_err(|e| e.to_string())?;
        let ok = response.status().is_success();
        let text = response.text().map_err(|e| e.to_string())?;
        if ok { Ok(text) } else { Err(text) }
    }

    /// Runs `sql` over HTTP and returns the answer (TSV unless the query says otherwise).
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql).unwrap_or_else(|error| panic!("ClickHouse refused {sql:?}: {error}"))
    }

    /// [`Self::query`] with `database` as the default database (for unqualified names).
    pub fn query_in(&self, database: &str, sql: &str) -> String {
        let response = reqwest::blocking::Client::new()
            .post(format!("{}/?database={database}", self.url))
            .body(sql.to_owned())
            .send()
            .unwrap();
        let ok = response.status().is_success();
        let text = response.text().unwrap();
        assert!(ok, "ClickHouse refused {sql:?}: {text}");
        text
    }
}
