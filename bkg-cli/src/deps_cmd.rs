//! `bkg envs ls|prune` (the agent's Python environments) and `bkg secrets set|ls|rm`.

use bkg_schema::envs::{EnvInfo, PruneRequest, PruneResult, SecretInfo, SecretValue};
use bkg_schema::sandbox::Deleted;
use bkg_schema::units::format_size;

use crate::args::{EnvsAction, EnvsArgs, SecretsAction, SecretsArgs};
use crate::client::AgentClient;
use crate::exit::{CliError, SUCCESS};
use crate::out::now_ms;
use crate::settings::Settings;

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

/// A secret's value from stdin (`prompt::hidden_value`).
fn read_value(name: &str) -> Result<String, CliError> {
    // Read up to just past the most a value may be (and its line's end): a larger one is refused
    // here, in the words the agent would use, not sent whole (found by a new-user trial: 50 MB
    // were sent and refused as a request body over 64KiB).
    let value = crate::prompt::hidden_value(
        &format!("value of {name} (not shown; several lines: pipe it in)"),
        "the secret's value",
        bkg_schema::envs::MAX_SECRET_BYTES as u64 + 3,
        false,
    )?;
    if let Some(error) = bkg_schema::envs::secret_value_error(&value) {
        return Err(CliError::usage(error));
    }
    Ok(value)
}
