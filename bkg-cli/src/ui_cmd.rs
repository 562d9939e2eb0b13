//! `bkg ui`: a one-time login URL for the agent's Web UI (docs/ui.md). The agent serves the UI on
//! its TCP listener, or starts a loopback-only one for it; the URL's token logs in once.

use bkg_schema::auth::UiLaunch;
use clap::Args;

use crate::args::GlobalArgs;
use crate::client::AgentClient;
use crate::exit::{BKG_FAILED, CliError};

#[derive(Debug, Args)]
pub struct UiArgs {
    /// Open the URL in the desktop's browser (xdg-open) besides printing it.
    #[arg(long)]
    pub open: bool,
    /// Print JSON: the URL and whether a listener was started for it.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(global: &GlobalArgs, args: UiArgs) -> Result<i32, CliError> {
    if global.remote.is_some() {
        return Err(CliError::new(
            BKG_FAILED,
            "bkg ui works on the agent's own machine (its unix socket); for a remote agent, open its /ui and log in",
        ));
    }
    let client = AgentClient::new(global)?;
    client.ensure_running().await?;
    let launch: UiLaunch = client.send_json(reqwest::Method::POST, "/ui/launch", None).await?;
    if args.json {
        println!("{}", serde_json::to_string(&launch).map_err(|error| CliError::internal(error.to_string()))?);
    } else {
        println!("{}", launch.url);
        eprintln!("The link logs in once, within 5 minutes. Keep it to yourself.");
    }
    if args.open {
        let opened = std::process::Command::new("xdg-open")
            .arg(&launch.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !opened.is_ok_and(|status| status.success()) {
            eprintln!("bkg: could not open a browser (xdg-open); open the URL above yourself");
        }
    }
    Ok(0)
}
