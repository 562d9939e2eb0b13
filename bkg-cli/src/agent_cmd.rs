//! `bkg agent start|stop|status`.

use std::time::Duration;

use bkg_schema::AgentInfo;
use bkg_schema::units::{format_cpus, format_duration_ms, format_size};

use crate::args::{AgentAction, AgentArgs, GlobalArgs};
use crate::client::{AgentClient, agent_command, start_agent};
use crate::exit::{BKG_FAILED, CliError};

pub async fn run(global: &GlobalArgs, args: AgentArgs) -> Result<i32, CliError> {
    let client = AgentClient::new(global)?;
    match args.action {
        AgentAction::Start { foreground, state_dir } => {
            if client.is_remote() {
                return Err(CliError::usage(format!(
                    "bkg agent start starts a local agent; it cannot start {}",
                    client.endpoint()
                )));
            }
            if client.is_up() {
                eprintln!("bkg: an agent is already running on {}", client.socket.display());
                return Ok(0);
            }
            if !nix::unistd::geteuid().is_root() {
                return Err(CliError::new(BKG_FAILED, "the agent needs root: run `sudo bkg agent start`"));
            }
            let state_dir = state_dir.unwrap_or_else(bkg_schema::paths::default_state_dir);
            if foreground {
                let error = std::os::unix::process::CommandExt::exec(&mut agent_command(&client.socket, &state_dir));
                return Err(CliError::new(BKG_FAILED, format!("cannot start bkg-agent: {error}")));
            }
            let pid = start_agent(&client.socket, &state_dir)?;
            client.wait_until_up(Duration::from_secs(15)).await?;
            eprintln!("bkg: agent started (pid {pid}) on {}", client.socket.display());
            Ok(0)
        }
        AgentAction::Stop => {
            if !client.is_up() {
                eprintln!("bkg: no agent is running on {}", client.endpoint());
                return Ok(0);
            }
            client.post_empty("/api/v1/agent/shutdown").await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while client.is_up() {
                if std::time::Instant::now() > deadline {
                    return Err(CliError::new(BKG_FAILED, "the agent did not stop within 30 s"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eprintln!("bkg: agent stopped");
            Ok(0)
        }
        AgentAction::Status { json } => {
            if !client.is_up() {
                if json {
                    println!("{}", serde_json::json!({ "running": false, "socket": client.endpoint() }));
                } else {
                    eprintln!("bkg: no agent is running on {}", client.endpoint());
                }
                return Ok(1);
            }
            let info: AgentInfo = client.get("/api/v1/agent").await?;
            if json {
                let mut value = serde_json::to_value(&info).map_err(|error| CliError::internal(error.to_string()))?;
                value["running"] = serde_json::Value::Bool(true);
                println!("{value}");
            } else {
                print_status(&info);
            }
            Ok(0)
        }
    }
}

fn print_status(info: &AgentInfo) {
    let limits = |l: &bkg_schema::Limits| {
        format!(
            "cpus {} · memory {} · timeout {} · disk {} · pids {}",
            format_cpus(l.cpu_millis),
            format_size(l.memory_bytes),
            format_duration_ms(l.timeout_ms),
            format_size(l.disk_bytes),
            l.pids
        )
    };
    println!("agent      running (pid {}, version {})", info.pid, info.version);
    println!("socket     {}", info.socket);
    println!("state dir  {}", info.state_dir);
    println!("cgroups    {}", info.cgroup_version);
    println!(
        "runs       {} active · {} warm sandboxes · {} cleanups pending",
        info.active_runs, info.warm_sandboxes, info.pending_cleanups
    );
    println!(
        "warm pool  {} of {} prepared · {} of memory",
        info.warm_sandboxes,
        info.warm_target,
        format_size(info.warm_memory_bytes)
    );
    println!("defaults   {}", limits(&info.default_limits));
    println!("maximum    {}", limits(&info.max_limits));
}
