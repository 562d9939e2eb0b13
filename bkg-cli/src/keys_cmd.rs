//! `bkg keys create|ls|rotate|revoke|rm`: API keys, on the local socket (as admin) or a remote agent.

use crate::args::{KeysAction, KeysArgs};
use crate::client::AgentClient;
use crate::exit::{CliError, SUCCESS};
use crate::out::{Printer, now_ms};
use crate::settings::Settings;
use bkg_schema::auth::{CreateKeyRequest, IssuedKey, KeyInfo, Role};

fn describe(key: &KeyInfo) -> String {
    let scope = key.namespace.as_deref().map(|namespace| format!(" for namespace {namespace}")).unwrap_or_default();
    format!("{} ({} key{scope}), expires in {}", key.id, key.role.as_str(), remaining(key.expires_at_ms))
}

fn remaining(expires_at_ms: u64) -> String {
    match expires_at_ms.checked_sub(now_ms()) {
        // Two units at most, rounded up in the smaller: a key made for 10m expires in 10m, not
        // 9m59s, the moment it is made, and one made for 90s in 1m30s, not 2m.
        // Each unit is chosen by the time rounded up in the unit below it: a key made for 1h
        // shows 1h00m at once, not 60m (found by a new-user trial).
        Some(left) if left > 0 => {
            let (seconds, minutes, hours) = (left.div_ceil(1000), left.div_ceil(60_000), left.div_ceil(3_600_000));
            if seconds < 60 {
                format!("{seconds}s")
            } else if seconds < 3600 {
                match seconds % 60 {
                    0 => format!("{}m", seconds / 60),
                    rest => format!("{}m{rest:02}s", seconds / 60),
                }
            } else if minutes < 24 * 60 {
                format!("{}h{:02}m", minutes / 60, minutes % 60)
            } else {
                format!("{}d{:02}h", hours / 24, hours % 24)
            }
        }
        _ => "0s (expired)".into(),
    }
}

fn state(key: &KeyInfo) -> &'static str {
    if key.revoked_at_ms.is_some() {
        "revoked"
    } else if !key.is_active(now_ms()) {
        "expired"
    } else {
        "active"
    }
}

/// `--ttl` in the whole seconds keys expire in: a fraction is refused, not rounded.
fn ttl_seconds(text: &str) -> Result<u64, CliError> {
    let whole_seconds = || CliError::usage(format!("--ttl {text}: keys expire in whole seconds, at least 1s"));
    // A zero is told the least a key takes (1s), not the least a duration takes (1ms).
    let ms = bkg_schema::parse_duration_ms(text).map_err(|error| match error {
        bkg_schema::UnitError::Zero { .. } => whole_seconds(),
        other => CliError::usage(format!("--ttl: {other}")),
    })?;
    if ms < 1000 || ms % 1000 != 0 {
        return Err(whole_seconds());
    }
    Ok(ms / 1000)
}

/// Prints a key's secret on stdout (the data) and what it is on stderr (for people); an error
/// when stdout did not take it (a full disk, a reader gone): the secret is then nobody's.
fn print_issued(out: Printer, issued: &IssuedKey, what: &str) -> Result<(), CliError> {
    let text = match out.is_json() {
        true => crate::out::json_text(issued)? + "\n",
        false => format!("{}\n", issued.key),
    };
    if let Err(error) = crate::out::stdout_bytes(text.as_bytes()) {
        return Err(CliError::usage(format!("the key's secret could not be written to stdout ({error})")));
    }
    out.note(format_args!("{what} {}; the key is shown only this once", describe(&issued.info)));
    Ok(())
}

pub async fn run(settings: &Settings, args: KeysArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    match args.action {
        KeysAction::Create { role, namespace, name, ttl, .. } => {
            let role = Role::parse(&role).ok_or_else(|| {
                CliError::usage(format!("--role `{role}` must be admin, namespace, session or model-access"))
            })?;
            let ttl_seconds = ttl.map(|text| ttl_seconds(&text)).transpose()?;
            let request = CreateKeyRequest { role, namespace, name, ttl_seconds };
            let issued: IssuedKey = client.post_json("/api/v1/auth/keys", &request).await?;
            // A key whose secret nobody got is deleted again, not left active (found by a
            // new-user trial: `bkg keys create > /dev/full` left an admin key for 90 days).
            if let Err(error) = print_issued(out, &issued, "created") {
                let id = &issued.info.id;
                let undone = client.delete::<bkg_schema::sandbox::Deleted>(&format!("/api/v1/auth/keys/{id}")).await;
                let outcome = match undone {
                    Ok(_) => format!("key {id} was deleted again: run the command again"),
                    Err(_) => {
                        format!("key {id} is active without anyone holding it: delete it with `bkg keys rm {id}`")
                    }
                };
                return Err(CliError::new(error.code, format!("{}; {outcome}", error.message)));
            }
            // A key made with a key lives no longer than that one: said when that cut the --ttl
            // asked for (found by a new-user trial).
            let lifetime_s = issued.info.expires_at_ms.saturating_sub(issued.info.created_at_ms) / 1000;
            if let Some(asked) = ttl_seconds.filter(|asked| lifetime_s + 1 < *asked) {
                out.note(format_args!(
                    "its lifetime is {lifetime_s}s, not the {asked}s asked for: a key made with a key expires no \
                     later than that one"
                ));
            }
        }
        KeysAction::Ls { .. } => {
            let keys: Vec<KeyInfo> = client.get("/api/v1/auth/keys").await?;
            out.answer(&keys, |keys| table(keys))?;
        }
        KeysAction::Rotate { id, .. } => {
            check_key_id(&id)?;
            // The key this command speaks with, when it is the one rotated: its old secret stops
            // working at once, so the kept one is replaced (a BKG_API_KEY cannot be).
            let remote = settings.remote_url()?;
            let speaking = match &remote {
                Some(_) => client.get::<bkg_schema::auth::Principal>("/api/v1/auth/whoami").await.ok(),
                None => None,
            };
            let issued: IssuedKey = client.post(&format!("/api/v1/auth/keys/{id}/rotate")).await?;
            // Kept before it is printed: a secret that cannot be printed is then not lost.
            let own = remote.as_ref().filter(|_| {
                speaking.as_ref().and_then(|speaking| speaking.key_id.as_deref()) == Some(issued.info.id.as_str())
            });
            let kept = match own {
                Some(remote) if crate::credentials::key_from_env().is_none() => {
                    crate::credentials::keep(remote, &issued.key)?;
                    true
                }
                _ => false,
            };
            if let Err(error) = print_issued(out, &issued, "rotated") {
                // The old secret stopped working as the new one was made (found by a new-user
                // trial: `bkg keys rotate ID > /dev/full` left the key usable by nobody).
                let outcome = match kept {
                    true => "the new secret is kept in the credentials file".to_owned(),
                    false => format!("its old secret no longer works: `bkg keys rotate {id}` again gives another"),
                };
                return Err(CliError::new(error.code, format!("{}; {outcome}", error.message)));
            }
            if let Some(remote) = own {
                match kept {
                    true => out.note(format_args!("the key kept for {remote} is the new one")),
                    false => out.note(format_args!(
                        "{} still holds the old secret, which no longer works: set it to the new one",
                        crate::credentials::API_KEY_ENV
                    )),
                }
            }
        }
        KeysAction::Revoke { id, .. } => {
            check_key_id(&id)?;
            // A key revoked before is said to be, not revoked again (found by a new-user trial:
            // `revoked key_…` each time, with one audit record).
            let before: Option<KeyInfo> = client.get_found(&format!("/api/v1/auth/keys/{id}")).await?;
            if let Some(revoked_at) = before.as_ref().and_then(|key| key.revoked_at_ms) {
                if out.is_json() {
                    out.json(&before)?;
                }
                let ago = crate::out::ago(now_ms().saturating_sub(revoked_at));
                out.note(format_args!("{id} was already revoked ({ago}): nothing to do"));
                return Ok(SUCCESS);
            }
            let made_with_it = made_with(&client, &id).await;
            let key: KeyInfo = client.post(&format!("/api/v1/auth/keys/{id}/revoke")).await?;
            if out.is_json() {
                out.json(&key)?;
            }
            out.note(format_args!("revoked {}{}", key.id, and_those_made_with_it(made_with_it)));
        }
        KeysAction::Rm { id, .. } => {
            check_key_id(&id)?;
            let made_with_it = made_with(&client, &id).await;
            let deleted: bkg_schema::sandbox::Deleted = client.delete(&format!("/api/v1/auth/keys/{id}")).await?;
            if out.is_json() {
                out.json(&deleted)?;
            }
            out.note(format_args!("deleted {}{}", deleted.deleted, and_those_made_with_it(made_with_it)));
        }
    }
    Ok(SUCCESS)
}

/// The `bkg keys ls` table.
fn table(keys: &[KeyInfo]) -> String {
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
    crate::table::render(&headers, &[], &[2, 5], rows, crate::table::width())
}

/// The role of key `id` and how many active keys were made with it, as listed: a key that is
/// not an admin's takes those with it when it is revoked or deleted. None when the listing
/// cannot say.
async fn made_with(client: &AgentClient, id: &str) -> Option<(Role, usize)> {
    let keys: Vec<KeyInfo> = client.get("/api/v1/auth/keys").await.ok()?;
    let role = keys.iter().find(|key| key.id == id)?.role;
    let now = now_ms();
    let made = keys.iter().filter(|made| made.created_by_key.as_deref() == Some(id) && made.is_active(now)).count();
    Some((role, made))
}

/// What a revocation or deletion took with it (`made_with`), said after its own (found by a
/// new-user trial: `revoked key_…` alone, though the keys made with it were revoked too).
fn and_those_made_with_it(made_with_it: Option<(Role, usize)>) -> String {
    match made_with_it {
        Some((role, made)) if made > 0 && role != Role::Admin => {
            let keys = if made == 1 { "key" } else { "keys" };
            format!(" and the {made} active {keys} made with it")
        }
        _ => String::new(),
    }
}

/// An id as `bkg keys ls` lists it, before it goes into a request's path (found by a new-user
/// trial: `keys revoke 'key_x?role=admin'` reached another endpoint and said "this endpoint does
/// not take that method").
fn check_key_id(id: &str) -> Result<(), CliError> {
    if bkg_schema::auth::is_key_id(id) {
        return Ok(());
    }
    // A key's secret given for its id is not repeated where a terminal's scrollback or a CI log
    // would keep it (found by a new-user trial).
    Err(CliError::usage(format!(
        "`{}` is not a key id: give one as `bkg keys ls` lists it (key_ and hex)",
        bkg_schema::auth::shown_as_id(id)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_is_whole_seconds() {
        assert_eq!(ttl_seconds("2h").ok(), Some(7200));
        assert_eq!(ttl_seconds("1s").ok(), Some(1));
        for fraction in ["500ms", "1500ms", "0s"] {
            let refused = ttl_seconds(fraction).err().map(|error| error.message).unwrap_or_default();
            assert!(refused.starts_with("--ttl"), "{fraction}: {refused}");
        }
        assert!(ttl_seconds("500ms").is_err_and(|error| error.message.contains("whole seconds, at least 1s")));
        assert!(ttl_seconds("0s").is_err_and(|error| error.message.contains("whole seconds, at least 1s")));
    }

    #[test]
    fn what_is_left_of_a_key_is_said_in_its_largest_units() {
        assert_eq!(remaining(now_ms() + 900), "1s", "a --ttl under a minute is not rounded to one");
        assert_eq!(remaining(now_ms() + 42_000), "42s");
        // Part of a minute counts as one: what a key made for 10m shows at once.
        assert_eq!(remaining(now_ms() + 10 * 60_000 - 50), "10m");
        assert_eq!(remaining(now_ms() + 5 * 60_000 + 30_000 - 50), "5m30s", "a --ttl of 90s was shown as 2m");
        assert_eq!(remaining(now_ms() + 3 * 3_600_000 + 7 * 60_000 + 30_000), "3h08m");
        assert_eq!(remaining(now_ms() + 3_600_000 - 50), "1h00m", "a --ttl of 1h was shown as 60m");
        assert_eq!(remaining(now_ms() + 86_400_000 - 50), "1d00h", "a --ttl of 1d was shown as 24h00m");
        // Rounded up in the smaller unit shown, days as minutes are (29d23h59m was shown 29d23h).
        assert_eq!(remaining(now_ms() + 2 * 86_400_000 + 3_600_000 + 30_000), "2d02h");
        assert_eq!(remaining(now_ms() + 30 * 86_400_000 - 60_000 - 50), "30d00h");
        assert_eq!(remaining(now_ms().saturating_sub(1)), "0s (expired)");
    }
}
