fn main() -> std::process::ExitCode {
    // The sandbox init, when no bkg-sandbox-init is installed beside the agent: this same binary
    // started again, which must not start a runtime or logger.
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "__sandbox-init") {
        bkg_agent::engine::init::main();
    }
    bkg_schema::environment::forget_empty_variables();
    bkg_agent::daemon::main()
}
