//! End-to-end tests of `bkg exe` against a real agent, as root. Each test starts its own agent.

mod api;
mod bkg_db;
mod cli_habits;
mod exe_basics;
mod inputs;
mod isolation;
mod lifecycle;
mod limits;
mod net;
mod ownership;
mod projects;
mod reliability;
mod signals;
mod ui;
