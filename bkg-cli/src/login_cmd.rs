//! `bkg login`: gets or takes an API key for a remote agent and keeps it (see credentials.rs).

use std::io::{BufRead, IsTerminal};

use bkg_schema::auth::{IssuedKey, Principal};
use clap::Args;

use crate::args::GlobalArgs;
use crate::client::AgentClient;
use crate::credentials::{self, Kept};
use crate::exit::CliError;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Log in as this user; the password is read from stdin (asked for on a terminal).
    #[arg(long, value_name = "NAME", conflicts_with = "key_stdin")]
    pub user: Option<String>,
    /// Read an existing API key from stdin instead.
    #[arg(long)]
    pub key_stdin: bool,
    /// Print what the agent says of the key as JSON.
    #[arg(long)]
    pub json: bool,
}

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

pub async fn run(global: &GlobalArgs, args: LoginArgs) -> Result<i32, CliError> {
    let Some(remote) = &global.remote else {
        return Err(CliError::usage(
            "bkg login keeps a key for a remote agent: give --remote URL (on the local socket no key is needed)",
        ));
    };
    let remote = credentials::parse_remote(remote)?;
    let key = match (&args.user, args.key_stdin) {
        (Some(user), _) => {
            let password = if std::io::stdin().is_terminal() {
                dialoguer::Password::new()
                    .with_prompt(format!("password of {user}"))
                    .interact()
                    .map_err(|error| CliError::usage(format!("cannot ask for the password: {error}")))?
            } else {
                first_line_of_stdin("password")?
            };
            // The password is the credential: the request carries no key.
            let client = AgentClient::remote(remote.clone(), None, global.cacert.as_deref())?;
            let body = serde_json::json!({ "username": user, "password": password });
            let issued: IssuedKey = client.send_json(reqwest::Method::POST, "/api/v1/auth/login", Some(&body)).await?;
            issued.key
        }
        (None, true) => first_line_of_stdin("key")?,
        (None, false) => {
            return Err(CliError::usage("give --user NAME (password login) or --key-stdin (an existing key)"));
        }
    };
    let client = AgentClient::remote(remote.clone(), Some(&key), global.cacert.as_deref())?;
    let principal: Principal = client.get("/api/v1/auth/whoami").await?;
    let kept = credentials::keep(&remote, &key)?;
    let place = match kept {
        Kept::Keyring => "the kernel keyring".to_owned(),
        Kept::File(path) => path.display().to_string(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&principal).map_err(|error| CliError::internal(error.to_string()))?);
    }
    eprintln!(
        "bkg: logged in to {} as {}{}; the key is kept in {place}",
        client.endpoint(),
        principal.role.as_str(),
        principal.namespace.map(|namespace| format!(" of namespace {namespace}")).unwrap_or_default(),
    );
    Ok(0)
}

/// `bkg logout`: forgets the key kept for `--remote`.
pub fn logout(global: &GlobalArgs) -> Result<i32, CliError> {
    let Some(remote) = &global.remote else {
        return Err(CliError::usage("bkg logout forgets the key of a remote agent: give --remote URL"));
    };
    let remote = credentials::parse_remote(remote)?;
    let origin = remote.origin().ascii_serialization();
    if credentials::forget(&remote)? {
        eprintln!("bkg: logged out of {origin}; its key is no longer kept");
    } else {
        eprintln!("bkg: no key was kept for {origin}");
    }
    if std::env::var_os(credentials::API_KEY_ENV).is_some() {
        eprintln!("bkg: {} is still set and still sends its key", credentials::API_KEY_ENV);
    }
    Ok(0)
}
