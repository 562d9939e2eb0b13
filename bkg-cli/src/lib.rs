//! The `bkg` command line: a thin client of the agent's API.

mod agent_cmd;
mod args;
pub mod client;
mod exe;
pub mod exit;
pub mod stream;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::CliError;

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return exit::clap_error(error),
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
        }
    });
    match outcome {
        Ok(code) => exit::code(code),
        Err(error) => error.report(),
    }
}
