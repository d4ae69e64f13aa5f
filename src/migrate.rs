//! `vigil migrate`: applies `schemas/clickhouse/` to a ClickHouse server and says what it did.

use anyhow::Context;
use vigil_warehouse::clickhouse::{MIGRATIONS, migrate as apply};

use crate::cli::MigrateArgs;

pub fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let config = args.login.config(&args.clickhouse_url);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let applied = runtime.block_on(apply(&config))?;
    for migration in &applied {
        println!("applied {:04} {} to {}/{}", migration.version, migration.name, config.url, config.database);
    }
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    println!("ClickHouse schema of {} is at version {latest:04}", config.database);
    Ok(())
}
