//! `bkgr`: runs the persistent sandboxes a project's `cave.yaml` declares.

use std::process::ExitCode;

use clap::Parser;

/// Run the sandboxes of a bkg project (cave.yaml).
#[derive(Debug, Parser)]
#[command(name = "bkgr", version)]
struct Args {
    /// The sandbox to run [default: all of them]
    name: Option<String>,
    /// The script of the sandbox to run
    #[arg(default_value = "start")]
    script: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = (&args.name, &args.script);
    eprintln!("bkgr: projects (cave.yaml) are not supported yet; use `bkg exe` for one-off runs");
    ExitCode::from(125)
}
