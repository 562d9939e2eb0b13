fn main() -> std::process::ExitCode {
    bkg_cli::main()
}
