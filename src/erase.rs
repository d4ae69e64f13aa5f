//! `vigil erase --recipient ADDR`: one person erased from a data directory no process has
//! open (see `vigil_processor::erasure`), and from ClickHouse when the configuration names
//! one. Prints what was rewritten where, as one JSON object.

use anyhow::Context;
use vigil_log::EventLog;
use vigil_log::privacy::Erasure;

use crate::cli::EraseArgs;
use crate::config::Config;

pub fn erase(args: &EraseArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    }
    .with_environment(|v| std::env::var(v).ok())?;
    let data_dir = args.data_dir.clone().unwrap_or(config.data_dir);
    let log_dir = data_dir.join("log");
    if !log_dir.join("log.redb").exists() {
        anyhow::bail!("no log in {}: is this the data directory of vigil run?", data_dir.display());
    }
    let privacy = config.privacy.resolve()?;
    let log = EventLog::open(&log_dir)
        .with_context(|| {
            format!(
                "opening the log in {} (is vigil run still running on it? stop it first, or erase through \
                 DELETE /api/v1/admin/recipients/{{address}})",
                log_dir.display()
            )
        })?
        .with_privacy(privacy);
    let erasure = Erasure::new(log.privacy(), &args.recipient)?;
    let runtime;
    let clickhouse = match &config.clickhouse {
        Some(clickhouse) => {
            runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Some((clickhouse, &runtime))
        }
        None => None,
    };
    let report = vigil_processor::erasure::erase_offline(&data_dir, &log, &erasure, clickhouse)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
