//! `bkg sync status`, `bkg sync retry` and `bkg db migrate`: the agent's link to the shared bkg_db.

use clap::{Args, Subcommand};

use crate::args::GlobalArgs;
use crate::client::AgentClient;
use crate::exit::CliError;

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(subcommand)]
    pub action: SyncAction,
}

#[derive(Debug, Subcommand)]
pub enum SyncAction {
    /// Backlog, parked events, last success and last error of the sync to bkg_db. Exit 0
    /// healthy or not configured, 1 when the last attempt failed or events are parked.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ship parked events again (all of them, or the one with sequence number SEQ), once what
    /// bkg_db refused is fixed.
    Retry {
        /// The parked event's sequence number, as `bkg sync status` lists it.
        seq: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    pub action: DbAction,
}

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Apply bkg_db's schema migrations now (the agent also applies them when it connects).
    Migrate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

fn age(now_ms: u64, then_ms: Option<u64>) -> String {
    then_ms.map_or_else(|| "never".into(), |then| format!("{:.1}s ago", now_ms.saturating_sub(then) as f64 / 1000.0))
}

pub async fn sync(global: &GlobalArgs, args: SyncArgs) -> Result<i32, CliError> {
    let client = AgentClient::new(global)?;
    client.ensure_running().await?;
    match args.action {
        SyncAction::Status { json } => {
            let status: serde_json::Value = client.get("/api/v1/sync").await?;
            let parked = status["parked"].as_u64().unwrap_or(0);
            let failing = status["failures"].as_u64().unwrap_or(0) > 0 || parked > 0;
            if json {
                print_json(&status);
            } else {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|elapsed| elapsed.as_millis() as u64)
                    .unwrap_or(0);
                let configured = status["configured"] == true;
                println!("bkg_db        {}", if configured { "configured" } else { "not configured (--db-url)" });
                println!("backlog       {} events", status["backlog"]);
                println!("parked        {parked} events{}", if parked > 0 { " (bkg sync retry)" } else { "" });
                for event in status["parked_events"].as_array().into_iter().flatten() {
                    println!(
                        "  {} {}: {}",
                        event["seq"],
                        event["action"].as_str().unwrap_or("?"),
                        event["reason"].as_str().unwrap_or("?")
                    );
                }
                match status["lag_ms"].as_u64() {
                    Some(lag) => println!("oldest        {:.1}s waiting", lag as f64 / 1000.0),
                    None => println!("oldest        none waiting"),
                }
                println!("last success  {}", age(now_ms, status["last_success_ms"].as_u64()));
                if let Some(error) = status["last_error"].as_str() {
                    println!("last error    {} ({})", error, age(now_ms, status["last_error_ms"].as_u64()));
                }
            }
            Ok(i32::from(failing))
        }
        SyncAction::Retry { seq, json } => {
            let body = serde_json::json!({ "seq": seq });
            let retried: serde_json::Value =
                client.send_json(reqwest::Method::POST, "/api/v1/sync/retry", Some(&body)).await?;
            if json {
                print_json(&retried);
            } else {
                let seqs: Vec<String> =
                    retried["retried"].as_array().into_iter().flatten().map(|seq| seq.to_string()).collect();
                if seqs.is_empty() {
                    eprintln!("bkg: no parked events");
                } else {
                    eprintln!("bkg: {} parked events queued again (seq {})", seqs.len(), seqs.join(", "));
                }
            }
            Ok(0)
        }
    }
}

pub async fn db(global: &GlobalArgs, args: DbArgs) -> Result<i32, CliError> {
    let client = AgentClient::new(global)?;
    client.ensure_running().await?;
    match args.action {
        DbAction::Migrate { json } => {
            let migrated: serde_json::Value =
                client.send_json(reqwest::Method::POST, "/api/v1/sync/migrate", None).await?;
            if json {
                print_json(&migrated);
            } else {
                let applied = migrated["applied"].as_array().map_or(0, Vec::len);
                eprintln!("bkg: bkg_db is at schema version {} ({applied} applied now)", migrated["latest"]);
            }
            Ok(0)
        }
    }
}
