//! The `bkg` command line: a thin client of the agent's API.

// First, so its EPIPE-safe `println!`/`eprintln!` shadow std's in every module below.
#[macro_use]
pub mod out;
mod add;
mod agent_cmd;
pub mod args;
pub mod audit_cmd;
pub mod client;
mod credentials;
mod exe;
pub mod exit;
mod init;
mod keys_cmd;
mod login_cmd;
pub mod manage;
mod progress;
mod project;
pub mod runs_cmd;
pub mod stream;
mod sync_cmd;
pub mod table;
mod ui_cmd;
mod validate;
pub mod version_cmd;

use std::process::ExitCode;

use crate::args::{Cli, Command};
use crate::exit::CliError;

pub fn main() -> ExitCode {
    let cli: Cli = match args::parse(args::bkg_command()) {
        Ok(cli) => cli,
        Err(error) => return exit::clap_error(error, "bkg"),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            return CliError::internal(format!("cannot start the async runtime: {error}")).report();
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Exe(args) => exe::run(&cli.global, *args).await,
            Command::Agent(args) => agent_cmd::run(&cli.global, args).await,
            Command::Init(args) => init::run(args),
            Command::Add(args) => add::run(*args),
            Command::Validate(args) => validate::run(args),
            Command::Ls(args) => manage::ls(&cli.global, args).await,
            Command::Status(args) => manage::status(&cli.global, args).await,
            Command::Logs(args) => manage::logs(&cli.global, args).await,
            Command::Stop(args) => manage::stop_many(&cli.global, args).await,
            Command::Rm(args) => rm_each(&cli.global, args).await,
            Command::Runs(args) => runs_cmd::run(&cli.global, args).await,
            Command::Audit(args) => match args.action {
                args::AuditAction::Verify(args) => audit_cmd::verify(&cli.global, args).await,
                args::AuditAction::Tail(args) => audit_cmd::tail(args).await,
            },
            Command::Sync(args) => sync_cmd::sync(&cli.global, args).await,
            Command::Db(args) => sync_cmd::db(&cli.global, args).await,
            Command::Login(args) => login_cmd::run(&cli.global, args).await,
            Command::Logout => login_cmd::logout(&cli.global),
            Command::Keys(args) => keys_cmd::run(&cli.global, args).await,
            Command::Ui(args) => ui_cmd::run(&cli.global, args).await,
            Command::Version(args) => version_cmd::run(&cli.global, args).await,
            Command::Completions(args) => completions(args),
        }
    });
    // A read of our stdin may still be pending on a blocking thread (stdin is a terminal or a
    // pipe that stays open); it must not keep bkg alive after the run.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => exit::code(code),
        Err(error) => error.report(),
    }
}

/// `bkg rm NAME...`: each sandbox in turn, stopping at the first that fails or is kept.
async fn rm_each(global: &args::GlobalArgs, args: args::RmArgs) -> Result<i32, CliError> {
    for name in args.names {
        let one = manage::RmArgs {
            name,
            project: manage::ProjectArgs { dir: args.project.dir.clone() },
            force: args.force,
            json: args.json,
        };
        let code = manage::rm(global, one).await?;
        if code != 0 {
            return Ok(code);
        }
    }
    Ok(0)
}

/// `bkg completions SHELL`: the script on stdout, generated from the same grammar that parses.
fn completions(args: args::CompletionsArgs) -> Result<i32, CliError> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut args::bkg_command(), "bkg", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)
        .map_err(|error| CliError::internal(format!("cannot write the completions: {error}")))?;
    Ok(0)
}
