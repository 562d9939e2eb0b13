//! End-to-end tests of `bkg exe` against a real agent, as root. Each test starts its own agent.

mod api;
mod bkg_db;
mod changes;
mod cli_habits;
mod compat;
mod docs_bkg_db;
mod exe_basics;
mod files;
mod host;
mod inputs;
mod isolation;
mod lifecycle;
mod limits;
mod net;
mod ownership;
mod projects;
mod reliability;
mod retention;
mod sessions;
mod signals;
mod ui;
