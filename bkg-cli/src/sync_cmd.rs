//! `bkg sync status`, `bkg sync retry` and `bkg db migrate`: the agent's link to the shared bkg_db.

use bkg_schema::sync::{Migrated, Retried, RetryRequest, SyncView};

use crate::args::{DbAction, DbArgs, SyncAction, SyncArgs};
use crate::client::AgentClient;
use crate::exit::{CliError, NEGATIVE, SUCCESS};
use crate::out::count;
use crate::settings::Settings;

fn age(now_ms: u64, then_ms: Option<u64>) -> String {
    then_ms.map_or_else(|| "never".into(), |then| crate::out::ago(now_ms.saturating_sub(then)))
}

pub async fn sync(settings: &Settings, args: SyncArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    match args.action {
        SyncAction::Status { .. } => {
            let view: SyncView = client.get("/api/v1/sync").await?;
            out.answer(&view, describe)?;
            Ok(if view.needs_attention() { NEGATIVE } else { SUCCESS })
        }
        SyncAction::Retry { seq, .. } => {
            let retried: Retried = client.post_json("/api/v1/sync/retry", &RetryRequest { seq }).await?;
            if out.is_json() {
                out.json(&retried)?;
            } else if retried.retried.is_empty() {
                out.note(format_args!("no parked events"));
            } else {
                let seqs: Vec<String> = retried.retried.iter().map(u64::to_string).collect();
                let events = count(seqs.len(), "parked event", "parked events");
                out.note(format_args!("{events} queued again (seq {})", seqs.join(", ")));
            }
            Ok(SUCCESS)
        }
    }
}

/// `bkg sync status`: one field a line, the parked events under their count.
fn describe(view: &SyncView) -> String {
    let now_ms = crate::out::now_ms();
    let status = &view.status;
    let parked = status.parked;
    let mut text = String::new();
    let mut line = |key: &str, value: String| text.push_str(&format!("{key:<14}{value}\n"));
    if !view.configured {
        line("bkg_db", "not configured (--db-url)".to_owned());
        line(
            "backlog",
            format!("{}, kept for a bkg_db once one is configured", count(status.backlog as usize, "event", "events")),
        );
        return text;
    }
    line("bkg_db", "configured".to_owned());
    line("backlog", count(status.backlog as usize, "event", "events"));
    line(
        "parked",
        format!("{}{}", count(parked as usize, "event", "events"), if parked > 0 { " (bkg sync retry)" } else { "" }),
    );
    for event in &view.parked_events {
        text.push_str(&format!("  {} {}: {}\n", event.seq, event.action, event.reason));
    }
    let mut line = |key: &str, value: String| text.push_str(&format!("{key:<14}{value}\n"));
    match status.lag_ms {
        Some(lag) => {
            let behind = match status.is_behind() {
                true => ": behind, though no attempt has failed yet (bkg_db slow or hung?)",
                false => "",
            };
            line("oldest", format!("{:.1}s waiting{behind}", lag as f64 / 1000.0));
        }
        None => line("oldest", "none waiting".to_owned()),
    }
    line("last success", age(now_ms, status.last_success_ms));
    if let Some(error) = &status.last_error {
        // Kept after recovery: said whether it still holds (found by a new-user trial: an error
        // long resolved read as the state of the sync).
        let state = match status.failures {
            0 => "; resolved since".to_owned(),
            failures => format!("; failing now, {}", count(failures as usize, "attempt", "attempts")),
        };
        line("last error", format!("{error} ({}{state})", age(now_ms, status.last_error_ms)));
    }
    text
}

pub async fn db(settings: &Settings, args: DbArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    match args.action {
        DbAction::Migrate { .. } => {
            let migrated: Migrated = client.post("/api/v1/sync/migrate").await?;
            if out.is_json() {
                out.json(&migrated)?;
            } else if migrated.version > migrated.latest {
                out.line(format_args!(
                    "bkg_db is at schema version {}, newer than this agent's {}: nothing to apply (migrations only \
                     add, so this agent keeps working; upgrade it to use what the newer ones bring)",
                    migrated.version, migrated.latest
                ));
            } else {
                out.line(format_args!(
                    "bkg_db is at schema version {} ({} applied now)",
                    migrated.version,
                    migrated.applied.len()
                ));
            }
            Ok(SUCCESS)
        }
    }
}
