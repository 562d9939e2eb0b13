//! `bkg keys create|ls|rotate|revoke`: API keys, on the local socket (as admin) or a remote agent.

use bkg_schema::auth::{CreateKeyRequest, IssuedKey, KeyInfo, Role};
use clap::{Args, Subcommand};

use crate::args::GlobalArgs;
use crate::client::AgentClient;
use crate::exit::CliError;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key and print it (it is shown only this once).
    Create {
        /// admin, namespace, session or model-access.
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// The namespace the key is confined to (every role but admin).
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
        /// A label for people.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Lifetime, e.g. 12h, 7d [default: the role's]
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Print the key and its description as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the keys you may manage (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Give a key a new secret and print it; the old one stops working at once.
    Rotate {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it is refused from its next request on.
    Revoke {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn to_json(value: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string(value).map_err(|error| CliError::internal(error.to_string()))
}

fn describe(key: &KeyInfo) -> String {
    let scope = key.namespace.as_deref().map(|namespace| format!(" for namespace {namespace}")).unwrap_or_default();
    format!("{} ({} key{scope}), expires in {}", key.id, key.role.as_str(), remaining(key.expires_at_ms))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

fn remaining(expires_at_ms: u64) -> String {
    match expires_at_ms.checked_sub(now_ms()) {
        Some(left) if left > 0 => {
            let (days, hours, minutes) = (left / 86_400_000, left / 3_600_000 % 24, left / 60_000 % 60);
            match (days, hours) {
                (0, 0) => format!("{}m", minutes.max(1)),
                (0, _) => format!("{hours}h{minutes:02}m"),
                _ => format!("{days}d{hours:02}h"),
            }
        }
        _ => "0s (expired)".into(),
    }
}

fn state(key: &KeyInfo) -> &'static str {
    if key.revoked_at_ms.is_some() {
        "revoked"
    } else if key.expires_at_ms <= now_ms() {
        "expired"
    } else {
        "active"
    }
}

/// Prints a key's secret on stdout (the data) and what it is on stderr (for people).
fn print_issued(issued: &IssuedKey, json: bool, what: &str) -> Result<(), CliError> {
    if json {
        println!("{}", to_json(issued)?);
    } else {
        println!("{}", issued.key);
    }
    eprintln!("bkg: {what} {}; the key is shown only this once", describe(&issued.info));
    Ok(())
}

pub async fn run(global: &GlobalArgs, args: KeysArgs) -> Result<i32, CliError> {
    let client = AgentClient::new(global)?;
    match args.action {
        KeysAction::Create { role, namespace, name, ttl, json } => {
            let role = Role::parse(&role).ok_or_else(|| {
                CliError::usage(format!("--role `{role}` must be admin, namespace, session or model-access"))
            })?;
            let ttl_seconds = ttl
                .map(|text| {
                    bkg_schema::parse_duration_ms(&text)
                        .map(|ms| ms.div_ceil(1000))
                        .map_err(|error| CliError::usage(format!("--ttl: {error}")))
                })
                .transpose()?;
            let request = CreateKeyRequest { role, namespace, name, ttl_seconds };
            let body = serde_json::to_value(&request).map_err(|error| CliError::internal(error.to_string()))?;
            let issued: IssuedKey = client.send_json(reqwest::Method::POST, "/api/v1/auth/keys", Some(&body)).await?;
            print_issued(&issued, json, "created")?;
        }
        KeysAction::Ls { json } => {
            let keys: Vec<KeyInfo> = client.get("/api/v1/auth/keys").await?;
            if json {
                println!("{}", to_json(&keys)?);
            } else {
                let rows = keys.iter().map(|key| {
                    vec![
                        key.id.clone(),
                        key.role.as_str().to_owned(),
                        key.namespace.clone().unwrap_or_else(|| "*".into()),
                        state(key).to_owned(),
                        if state(key) == "active" { remaining(key.expires_at_ms) } else { "-".into() },
                        key.name.clone().unwrap_or_default(),
                    ]
                });
                let headers = ["ID", "ROLE", "NAMESPACE", "STATE", "EXPIRES IN", "NAME"];
                print!("{}", crate::table::render(&headers, &[], &[2, 5], rows, crate::table::width()));
            }
        }
        KeysAction::Rotate { id, json } => {
            let issued: IssuedKey =
                client.send_json(reqwest::Method::POST, &format!("/api/v1/auth/keys/{id}/rotate"), None).await?;
            print_issued(&issued, json, "rotated")?;
        }
        KeysAction::Revoke { id, json } => {
            let key: KeyInfo =
                client.send_json(reqwest::Method::POST, &format!("/api/v1/auth/keys/{id}/revoke"), None).await?;
            if json {
                println!("{}", to_json(&key)?);
            }
            eprintln!("bkg: revoked {}", key.id);
        }
    }
    Ok(0)
}
