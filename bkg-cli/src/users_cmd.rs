//! `bkg users add|ls|rm`: the users who log in with a password, on the local socket (as admin) or
//! a remote agent.

use bkg_schema::auth::{SignupRequest, UserInfo};
use bkg_schema::sandbox::{NAMESPACE_RULE, is_dns_label, is_namespace_name};

use crate::args::{UsersAction, UsersArgs};
use crate::client::AgentClient;
use crate::exit::{CliError, SUCCESS};
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: UsersArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let client = AgentClient::new(&settings.endpoint()?)?;
    match args.action {
        UsersAction::Add { name, namespace } => {
            // Checked before the password is asked for: typed in for nothing otherwise.
            check_name(&name)?;
            if !is_namespace_name(&namespace) {
                return Err(CliError::usage(format!("--namespace `{namespace}` must be {NAMESPACE_RULE}")));
            }
            // Bounded: a larger one is refused by the agent as a body over its limit, not sent whole.
            let password = crate::prompt::hidden_value(
                &format!("password of {name} (not shown)"),
                "the password",
                bkg_schema::MAX_SMALL_BODY_BYTES as u64 + 3,
                true,
            )?;
            client.ensure_running().await?;
            let request = SignupRequest { username: name, password, namespace };
            let user: UserInfo = client.post_json("/api/v1/auth/signup", &request).await?;
            out.note(format_args!(
                "added user {} in namespace {}; they log in with `bkg --remote URL login --user {}`",
                user.username, user.namespace, user.username
            ));
        }
        UsersAction::Ls { .. } => {
            client.ensure_running().await?;
            let users: Vec<UserInfo> = client.get("/api/v1/auth/users").await?;
            out.answer(&users, |users| table(users))?;
        }
        UsersAction::Rm { name } => {
            check_name(&name)?;
            client.ensure_running().await?;
            client.delete_empty(&format!("/api/v1/auth/users/{name}")).await?;
            out.note(format_args!("removed user {name}; every key of theirs still active is revoked"));
        }
    }
    Ok(SUCCESS)
}

/// A name as the agent takes it, before it goes into a request's path (a `/` or `?` would reach
/// another endpoint).
fn check_name(name: &str) -> Result<(), CliError> {
    match is_dns_label(name) {
        true => Ok(()),
        false => Err(CliError::usage(format!(
            "`{}` is not a username: a username is a DNS label (a-z, 0-9, -)",
            bkg_schema::without_controls(name)
        ))),
    }
}

/// The `bkg users ls` table.
fn table(users: &[UserInfo]) -> String {
    let now = crate::out::now_ms();
    let rows = users.iter().map(|user| {
        vec![user.username.clone(), user.namespace.clone(), crate::out::ago(now.saturating_sub(user.created_at_ms))]
    });
    crate::table::render(&["NAME", "NAMESPACE", "ADDED"], &[], &[], rows, crate::table::width())
}
