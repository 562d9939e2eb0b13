//! The `bkg` command line: a thin client of the agent's API. `bkgr` uses it through [`shared`]
//! only; the other public modules are for this crate's tests and for xtask (help, man pages).

// Every write goes through `out::Printer`, which drops what a closed pipe cannot take.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod add;
pub mod agent_cmd;
pub mod args;
pub mod audit_cmd;
mod client;
mod credentials;
mod define;
mod deps_cmd;
pub mod doctor;
mod exe;
pub mod exit;
mod files_cmd;
mod init;
mod inline_metadata;
mod keys_cmd;
mod login_cmd;
pub mod manage;
pub mod out;
mod progress;
mod project;
mod prompt;
pub mod runs_cmd;
mod session_cmd;
pub mod settings;
pub mod shared;
mod stream;
mod sync_cmd;
mod table;
mod terminal;
mod ui_cmd;
mod users_cmd;
mod validate;
pub mod version_cmd;
mod watch_cmd;

use std::process::ExitCode;

use crate::args::{AuditAction, Cli, Command};
use crate::exit::CliError;
use crate::out::Printer;
use crate::settings::Settings;

pub fn main() -> ExitCode {
    bkg_schema::environment::forget_empty_variables();
    let cli: Cli = match args::parse(args::bkg_command()) {
        Ok(cli) => cli,
        Err(error) => return out::clap_error(error, "bkg"),
    };
    let settings = Settings::new(cli.global, Printer::new("bkg", cli.command.json()));
    shared::run_to_exit("bkg", dispatch(settings, cli.command))
}

async fn dispatch(settings: Settings, command: Command) -> Result<i32, CliError> {
    let settings = &settings;
    match command {
        Command::Exe(args) => exe::run(settings, *args).await,
        Command::Agent(args) => agent_cmd::run(settings, args).await,
        Command::Init(args) => init::run(settings, args),
        Command::Add(args) => add::run(settings, *args),
        Command::Validate(args) => validate::run(settings, args),
        Command::Ls(args) => manage::ls(settings, args).await,
        Command::Status(args) => manage::status(settings, args).await,
        Command::Logs(args) => manage::logs(settings, args).await,
        Command::Shell(args) => terminal::shell(settings, args).await,
        Command::Cp(args) => files_cmd::cp(settings, args).await,
        Command::Exec(args) => session_cmd::exec(settings, args).await,
        Command::Repl(args) => session_cmd::repl(settings, args).await,
        Command::Stop(args) => manage::stop_many(settings, args).await,
        Command::Rm(args) => manage::rm_many(settings, args).await,
        Command::Runs(args) => runs_cmd::run(settings, args).await,
        Command::Audit(args) => match args.action {
            AuditAction::Verify(args) => audit_cmd::verify(settings, args).await,
            AuditAction::Tail(args) => audit_cmd::tail(settings, args).await,
        },
        Command::Sync(args) => sync_cmd::sync(settings, args).await,
        Command::Db(args) => sync_cmd::db(settings, args).await,
        Command::Login(args) => login_cmd::run(settings, args).await,
        Command::Logout => login_cmd::logout(settings).await,
        Command::Keys(args) => keys_cmd::run(settings, args).await,
        Command::Users(args) => users_cmd::run(settings, args).await,
        Command::Envs(args) => deps_cmd::envs(settings, args).await,
        Command::Secrets(args) => deps_cmd::secrets(settings, args).await,
        Command::Watch(args) => watch_cmd::run(settings, args).await,
        Command::Ui(args) => ui_cmd::run(settings, args).await,
        Command::Doctor(args) => doctor::run(settings, args).await,
        Command::Version(_) => version_cmd::run(settings).await,
        Command::Completions(args) => completions(args),
    }
}

/// `bkg completions SHELL`: the script on stdout, generated from the same grammar that parses;
/// what a closed stdout cannot take is dropped, as for every command (out.rs).
fn completions(args: args::CompletionsArgs) -> Result<i32, CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut args::bkg_command(), "bkg", &mut script);
    out::Printer::new("bkg", false).text(&String::from_utf8_lossy(&script));
    Ok(exit::SUCCESS)
}
