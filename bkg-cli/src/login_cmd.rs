//! `bkg login`: gets or takes an API key for a remote agent and keeps it (see credentials.rs).

use std::io::{BufRead, IsTerminal};

use bkg_schema::auth::{IssuedKey, KeyInfo, LoginRequest, Principal};

use crate::args::LoginArgs;
use crate::client::AgentClient;
use crate::credentials::{self, Kept};
use crate::exit::{CliError, SUCCESS};
use crate::settings::{Endpoint, Settings};

fn first_line_of_stdin(what: &str) -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|error| CliError::usage(format!("cannot read the {what}: {error}")))?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        return Err(CliError::usage(format!("no {what} on stdin")));
    }
    Ok(line)
}

pub async fn run(settings: &Settings, args: LoginArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let Some(remote) = settings.remote_url()? else {
        return Err(CliError::usage(
            "bkg login keeps a key for a remote agent: give --remote URL (on the local socket no key is needed)",
        ));
    };
    let key = match (&args.user, args.key_stdin) {
        (Some(user), _) => {
            let password = if std::io::stdin().is_terminal() {
                let _asking = crate::prompt::Asking::begin();
                dialoguer::Password::new()
                    .with_prompt(format!("password of {user}"))
                    .interact()
                    .map_err(|error| CliError::usage(format!("cannot ask for the password: {error}")))?
            } else {
                first_line_of_stdin("password")?
            };
            // The password is the credential: the request carries no key.
            let client = AgentClient::new(&Endpoint::remote(remote.clone(), None, settings.cacert.clone())?)?;
            let request = LoginRequest { username: user.clone(), password };
            let issued: IssuedKey = client.post_json("/api/v1/auth/login", &request).await?;
            issued.key
        }
        (None, true) => first_line_of_stdin("key")?,
        (None, false) => {
            return Err(CliError::usage("give --user NAME (password login) or --key-stdin (an existing key)"));
        }
    };
    let client = AgentClient::new(&Endpoint::remote(remote.clone(), Some(key.clone()), settings.cacert.clone())?)?
        .checking_its_key();
    let principal: Principal = client.get("/api/v1/auth/whoami").await?;
    // The key kept before is said, not dropped unsaid: shown once when it was made, it may be
    // nowhere else (found by a new-user trial).
    let replaced = credentials::kept_key(&remote).ok().flatten().filter(|previous| *previous != key);
    let kept = credentials::keep(&remote, &key)?;
    let place = match kept {
        Kept::Keyring => "the kernel keyring".to_owned(),
        Kept::File(path) => path.display().to_string(),
    };
    if out.is_json() {
        out.json(&principal)?;
    }
    let key_kind = match (principal.role.as_str(), principal.namespace) {
        ("admin", _) => "an admin key".to_owned(),
        (role, Some(namespace)) => format!("a {role} key for namespace `{namespace}`"),
        (role, None) => format!("a {role} key"),
    };
    out.note(format_args!("logged in to {} with {key_kind}; the key is kept in {place}", client.location()));
    if let Some(previous) = replaced {
        let role = bkg_schema::auth::Role::ALL.into_iter().find(|role| previous.starts_with(role.key_prefix()));
        let which = role.map(|role| format!(" ({}…)", role.key_prefix())).unwrap_or_default();
        out.note(format_args!(
            "it replaces the key kept for {} before{which}, which logging in does not revoke: keep it elsewhere if \
             you still need it, or `bkg keys revoke ID`",
            client.location()
        ));
    }
    Ok(SUCCESS)
}

/// `bkg logout`: forgets the key kept for `--remote`; one a password login made is revoked first,
/// as the Web UI's logout revokes its own (a key given with `--key-stdin` may be shared: it stays).
pub async fn logout(settings: &Settings) -> Result<i32, CliError> {
    let out = settings.out;
    let Some(remote) = settings.remote_url()? else {
        return Err(CliError::usage("bkg logout forgets the key of a remote agent: give --remote URL"));
    };
    let origin = remote.origin().ascii_serialization();
    if let Some(key) = credentials::kept_key(&remote)? {
        match revoke_if_a_logins(settings, &remote, key).await {
            Ok(Revoked::Login(id)) => out.note(format_args!("revoked {id}, the session key the login made")),
            Ok(Revoked::Shared) => {}
            Ok(Revoked::NotTaken(why)) => {
                out.note(format_args!("the kept key was no longer taken by the agent ({why}): nothing to revoke"))
            }
            Err(error) => out.note(format_args!(
                "could not revoke the login's session key ({}); it ends at its expiry",
                error.message
            )),
        }
    }
    if credentials::forget(&remote)? {
        out.note(format_args!("logged out of {origin}; its key is no longer kept"));
    } else {
        out.note(format_args!("no key was kept for {origin}"));
    }
    if std::env::var_os(credentials::API_KEY_ENV).is_some() {
        out.note(format_args!("{} is still set and still sends its key", credentials::API_KEY_ENV));
    }
    Ok(SUCCESS)
}

/// What `bkg logout` did to the key kept for the agent.
enum Revoked {
    /// A password login made it: revoked, this id.
    Login(String),
    /// Given with `--key-stdin`: it may be shared, so it stays.
    Shared,
    /// The agent no longer takes it (revoked, expired): why, as it says.
    NotTaken(String),
}

/// Revokes `key` if a password login made it (its `user` is set).
async fn revoke_if_a_logins(settings: &Settings, remote: &reqwest::Url, key: String) -> Result<Revoked, CliError> {
    let client =
        AgentClient::new(&Endpoint::remote(remote.clone(), Some(key), settings.cacert.clone())?)?.checking_its_key();
    // Found by a new-user trial: a key revoked already was said to be one that could not be
    // revoked and would end at its expiry, with `log in again` in the middle of a logout.
    let response = client.send(client.http().get(client.url("/api/v1/auth/whoami"))).await?;
    if response.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Ok(Revoked::NotTaken(crate::client::api_error(response).await.message));
    }
    if !response.status().is_success() {
        return Err(crate::client::api_error(response).await);
    }
    let principal: Principal = response
        .json()
        .await
        .map_err(|error| CliError::new(crate::exit::BKG_FAILED, format!("the agent's answer to whoami: {error}")))?;
    let Some(id) = principal.key_id else { return Ok(Revoked::Shared) };
    let info: KeyInfo = client.get(&format!("/api/v1/auth/keys/{id}")).await?;
    if info.user.is_none() {
        return Ok(Revoked::Shared);
    }
    let _: KeyInfo = client.post(&format!("/api/v1/auth/keys/{id}/revoke")).await?;
    Ok(Revoked::Login(id))
}
