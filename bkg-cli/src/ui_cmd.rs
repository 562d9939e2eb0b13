//! `bkg ui`: a one-time login URL for the agent's Web UI (docs/ui.md). The agent serves the UI on
//! its TCP listener, or starts a loopback-only one for it; the URL's token logs in once.

use bkg_schema::auth::UiLaunch;

use crate::args::UiArgs;
use crate::client::AgentClient;
use crate::exit::{BKG_FAILED, CliError};
use crate::settings::{Endpoint, Settings};

pub async fn run(settings: &Settings, args: UiArgs) -> Result<i32, CliError> {
    if settings.remote.is_some() {
        return Err(CliError::new(
            BKG_FAILED,
            "bkg ui works on the agent's own machine (its unix socket); for a remote agent, open its /ui and log in",
        ));
    }
    let client = AgentClient::new(&Endpoint::socket(settings.socket.clone())?)?;
    client.ensure_running().await?;
    let launch: UiLaunch = client.post("/ui/launch").await?;
    if settings.out.is_json() {
        settings.out.json(&launch)?;
    } else {
        settings.out.line(format_args!("{}", launch.url));
        settings.out.note(format_args!("the link logs in once, within 5 minutes; keep it to yourself"));
    }
    if args.open {
        let opened = std::process::Command::new("xdg-open")
            .arg(&launch.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !opened.is_ok_and(|status| status.success()) {
            settings.out.note(format_args!("could not open a browser (xdg-open); open the URL above yourself"));
        }
    }
    Ok(0)
}
