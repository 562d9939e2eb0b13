//! `bkg envs ls|prune` (the agent's Python environments) and `bkg secrets set|ls|rm`.

use std::io::{IsTerminal, Read};

use bkg_schema::envs::{EnvInfo, PruneRequest, PruneResult, SecretInfo, SecretValue};
use bkg_schema::sandbox::Deleted;
use bkg_schema::units::format_size;

use crate::args::{EnvsAction, EnvsArgs, SecretsAction, SecretsArgs};
use crate::client::AgentClient;
use crate::exit::{CliError, SUCCESS};
use crate::settings::Settings;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

pub async fn envs(settings: &Settings, args: EnvsArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let client = AgentClient::new(&settings.endpoint()?)?;
    match args.action {
        EnvsAction::Ls { .. } => {
            client.ensure_running().await?;
            let envs: Vec<EnvInfo> = client.get("/api/v1/envs").await?;
            out.answer(&envs, |envs| envs_table(envs))?;
        }
        EnvsAction::Prune { unused_for, .. } => {
            let unused_for_ms = unused_for
                .map(|text| {
                    bkg_schema::parse_duration_ms(&text).map_err(|error| match error {
                        // No agent's maximum bounds an age (found by a new-user trial).
                        bkg_schema::UnitError::TooLarge(text) => CliError::usage(format!(
                            "--unused-for: `{text}` is longer than any environment has been kept"
                        )),
                        error => CliError::usage(format!("--unused-for: {error}")),
                    })
                })
                .transpose()?;
            client.ensure_running().await?;
            let pruned: PruneResult = client.post_json("/api/v1/envs/prune", &PruneRequest { unused_for_ms }).await?;
            if out.is_json() {
                out.json(&pruned)?;
            }
            out.note(format_args!(
                "removed {} environment(s), freed {}",
                pruned.removed.len(),
                format_size(pruned.freed_bytes)
            ));
        }
    }
    Ok(SUCCESS)
}

/// The `bkg envs ls` table.
fn envs_table(envs: &[EnvInfo]) -> String {
    let now = now_ms();
    let rows = envs.iter().map(|env| {
        vec![
            env.id.clone(),
            env.language.as_str().to_owned(),
            format_size(env.bytes),
            crate::out::ago(now.saturating_sub(env.last_used_at_ms)),
            env.requirements.join(" "),
        ]
    });
    let headers = ["ID", "FOR", "SIZE", "LAST USED", "PACKAGES"];
    crate::table::render(&headers, &[2], &[4], rows, crate::table::width())
}

pub async fn secrets(settings: &Settings, args: SecretsArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let client = AgentClient::new(&settings.endpoint()?)?;
    let query =
        |namespace: &Option<String>| namespace.as_ref().map(|ns| format!("?namespace={ns}")).unwrap_or_default();
    match args.action {
        SecretsAction::Set { name, namespace } => {
            // Checked before the value is asked for: typed in for nothing otherwise.
            if let Some(error) = bkg_schema::envs::secret_name_error(&name) {
                return Err(CliError::usage(error));
            }
            let value = read_value(&name)?;
            client.ensure_running().await?;
            // A value set before is replaced: said, since it cannot be read back (found by a
            // new-user trial).
            let listed: Option<Vec<SecretInfo>> =
                client.get(&format!("/api/v1/secrets{}", query(&namespace))).await.ok();
            let replaced = listed.is_some_and(|secrets| secrets.iter().any(|secret| secret.name == name));
            let set: SecretInfo =
                client.put_json(&format!("/api/v1/secrets/{name}"), &SecretValue { value, namespace }).await?;
            let replacing = if replaced { " (in place of the value it had)" } else { "" };
            out.note(format_args!("secret {} set in namespace {}{replacing}", set.name, set.namespace));
        }
        SecretsAction::Ls { namespace, .. } => {
            client.ensure_running().await?;
            let secrets: Vec<SecretInfo> = client.get(&format!("/api/v1/secrets{}", query(&namespace))).await?;
            out.answer(&secrets, |secrets| secrets.iter().map(|secret| format!("{}\n", secret.name)).collect())?;
        }
        SecretsAction::Rm { name, namespace } => {
            if let Some(error) = bkg_schema::envs::secret_name_error(&name) {
                return Err(CliError::usage(error));
            }
            client.ensure_running().await?;
            let _: Deleted = client.delete(&format!("/api/v1/secrets/{name}{}", query(&namespace))).await?;
            out.note(format_args!("secret {name} removed"));
        }
    }
    Ok(SUCCESS)
}

/// A secret's value from stdin: never from an argument, which `ps` and shell history would show.
fn read_value(name: &str) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    // Typed on a terminal it is not shown (nor left in its scrollback): one line, as a password
    // is asked; a value of several lines comes from a pipe or a file.
    if stdin.is_terminal() {
        let _asking = crate::prompt::Asking::begin();
        let value = dialoguer::Password::new()
            .with_prompt(format!("value of {name} (not shown; several lines: pipe it in)"))
            .allow_empty_password(true)
            .interact()
            .map_err(|error| CliError::usage(format!("cannot ask for the secret: {error}")))?;
        if value.is_empty() {
            return Err(CliError::usage("the secret's value is empty"));
        }
        return Ok(value);
    }
    // Read up to just past the most a value may be (and its line's end): a larger one is refused
    // here, in the words the agent would use, not sent whole (found by a new-user trial: 50 MB
    // were sent and refused as a request body over 64KiB).
    let mut value = String::new();
    let most = bkg_schema::envs::MAX_SECRET_BYTES as u64 + 3;
    stdin
        .lock()
        .take(most)
        .read_to_string(&mut value)
        .map_err(|error| CliError::usage(format!("cannot read the secret from stdin: {error}")))?;
    if let Some(stripped) = value.strip_suffix('\n') {
        value = stripped.strip_suffix('\r').unwrap_or(stripped).to_owned();
    }
    if value.is_empty() {
        return Err(CliError::usage("the secret's value (read from stdin) is empty"));
    }
    if let Some(error) = bkg_schema::envs::secret_value_error(&value) {
        return Err(CliError::usage(error));
    }
    Ok(value)
}
