//! `bkg validate`: checks a cave.yaml and lists every problem in it.

use std::path::PathBuf;

use bkg_schema::cave::{self, CaveError, FILE_NAME};
use clap::Args;
use serde::Serialize;

use crate::exit::{BKG_FAILED, CliError};
use crate::project::print_errors;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The file to check [default: DIR/cave.yaml]
    #[arg(value_name = "FILE", conflicts_with = "dir")]
    pub file: Option<PathBuf>,
    /// The project directory [default: .]
    #[arg(short = 'C', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print only one JSON object: {"file", "valid", "errors": [{"line", "pointer", "message"}]}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ValidateArgs) -> Result<i32, CliError> {
    let path = args.file.unwrap_or_else(|| args.dir.unwrap_or_default().join(FILE_NAME));
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            let hint = if error.kind() == std::io::ErrorKind::NotFound { " (`bkg init` writes one)" } else { "" };
            let message = format!("cannot read {name}: {error}{hint}");
            if args.json {
                let unreadable = CaveError { line: None, pointer: String::new(), message: message.clone() };
                print_json(&name, &[unreadable]);
                return Ok(BKG_FAILED);
            }
            return Err(CliError::usage(message));
        }
    };
    match cave::parse(&text, &name) {
        Ok(cave) => {
            if args.json {
                print_json(&name, &[]);
            } else {
                let count = cave.sandboxes.len();
                let noun = if count == 1 { "sandbox" } else { "sandboxes" };
                eprintln!("{name}: valid ({count} {noun})");
            }
            Ok(0)
        }
        Err(errors) => {
            if args.json {
                print_json(&name, &errors.errors);
            } else {
                print_errors(&errors);
            }
            Ok(BKG_FAILED)
        }
    }
}

/// The `--json` report; a struct so its keys keep this order.
#[derive(Serialize)]
struct Report<'a> {
    file: &'a str,
    valid: bool,
    errors: &'a [CaveError],
}

fn print_json(file: &str, errors: &[CaveError]) {
    let report = Report { file, valid: errors.is_empty(), errors };
    match serde_json::to_string(&report) {
        Ok(json) => println!("{json}"),
        Err(error) => eprintln!("bkg: cannot print the report: {error}"),
    }
}
