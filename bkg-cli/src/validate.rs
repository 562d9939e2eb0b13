//! `bkg validate`: checks a cave.yaml and lists every problem in it.

use bkg_schema::cave::{self, CaveError};
use serde::Serialize;

use crate::args::ValidateArgs;
use crate::exit::{BKG_FAILED, CliError, SUCCESS};
use crate::out::Printer;
use crate::settings::Settings;

pub fn run(settings: &Settings, args: ValidateArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let path = match args.file {
        Some(file) => file,
        None => crate::project::nearest_cave_file(args.dir.as_deref())?,
    };
    let name = path.display().to_string();
    let text = match cave::read_text(&path) {
        Ok(text) => text,
        Err(error) => {
            let hint = match error.kind() {
                std::io::ErrorKind::NotFound => " (`bkg init` writes one)".to_owned(),
                _ if path.is_dir() => format!(": give a file, or `bkg validate -C {name}` for the cave.yaml in it"),
                _ => String::new(),
            };
            let message = format!("cannot read {name}: {error}{hint}");
            if out.is_json() {
                let unreadable = CaveError { line: None, pointer: String::new(), message: message.clone() };
                print_report(out, &name, &[unreadable]);
                return Ok(BKG_FAILED);
            }
            return Err(CliError::usage(message));
        }
    };
    match cave::parse(&text, &name) {
        Ok(cave) => {
            if out.is_json() {
                print_report(out, &name, &[]);
            } else {
                let sandboxes = crate::out::count(cave.sandboxes.len(), "sandbox", "sandboxes");
                out.human(format_args!("{name}: valid ({sandboxes})"));
            }
            Ok(SUCCESS)
        }
        Err(errors) => {
            if out.is_json() {
                print_report(out, &name, &errors.errors);
            } else {
                // The one case of many lines: each problem, compiler style.
                out.human(format_args!("{errors}"));
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

fn print_report(out: Printer, file: &str, errors: &[CaveError]) {
    let report = Report { file, valid: errors.is_empty(), errors };
    if let Err(error) = out.json(&report) {
        out.note(format_args!("cannot print the report: {error}", error = error.message));
    }
}
