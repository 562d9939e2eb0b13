//! `bkg version`: this CLI's version, commit and build date, and the agent's when one answers.

use bkg_schema::AgentInfo;
use serde::Serialize;

use crate::client::{AgentClient, AgentView};
use crate::exit::{CliError, SUCCESS};
use crate::settings::Settings;

#[derive(Debug, Serialize)]
pub struct Build {
    pub version: String,
    pub commit: String,
    pub build_date: String,
}

/// What `bkg version --json` prints.
#[derive(Debug, Serialize)]
pub struct Versions {
    pub cli: Build,
    /// None when no agent answers (it is not started for this).
    pub agent: Option<AgentVersion>,
}

#[derive(Debug, Serialize)]
pub struct AgentVersion {
    pub version: String,
    pub commit: String,
    pub build_date: String,
    pub endpoint: String,
    pub protections: Vec<String>,
}

pub fn cli_build() -> Build {
    Build {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: env!("BKG_COMMIT").to_owned(),
        build_date: env!("BKG_BUILD_DATE").to_owned(),
    }
}

pub async fn run(settings: &Settings) -> Result<i32, CliError> {
    let client = AgentClient::new(&settings.endpoint()?)?;
    // Only an agent that is there already: `bkg version` starts nothing. Its reason for not
    // answering (down, not an admin key) is the agent's line of the output.
    let (agent, missing) = match client.is_up() {
        Ok(true) => match client.agent_view().await {
            Ok(AgentView::Shown(info)) => {
                let AgentInfo { version, commit, build_date, protections, .. } = *info;
                let endpoint = client.location();
                (Some(AgentVersion { version, commit, build_date, endpoint, protections }), None)
            }
            // It answers, but its configuration is its admins' to read.
            Ok(AgentView::AdminsOnly(_)) => {
                (None, Some(format!("answers on {}; its version is shown to its admins only", client.location())))
            }
            Err(error) => (None, Some(error.message)),
        },
        Ok(false) => (None, Some(client.not_running())),
        Err(error) => (None, Some(error.message)),
    };
    let versions = Versions { cli: cli_build(), agent };
    settings.out.answer(&versions, |versions| describe(versions, missing.as_deref()))?;
    Ok(SUCCESS)
}

/// The text of `bkg version`; `agent_missing` says why there is no agent part.
pub fn describe(versions: &Versions, agent_missing: Option<&str>) -> String {
    let cli = &versions.cli;
    let mut text = format!("bkg        {} ({}, built {})\n", cli.version, cli.commit, cli.build_date);
    match (&versions.agent, agent_missing) {
        (Some(agent), _) => {
            text.push_str(&format!(
                "bkg-agent  {} ({}, built {}) on {}\n",
                agent.version, agent.commit, agent.build_date, agent.endpoint
            ));
            for (index, protection) in agent.protections.iter().enumerate() {
                let label = if index == 0 { "protection" } else { "" };
                text.push_str(&format!("{label:<11}{protection}\n"));
            }
        }
        (None, reason) => text.push_str(&format!("bkg-agent  - ({})\n", reason.unwrap_or("not reached"))),
    }
    text
}
