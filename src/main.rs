fn main() -> std::process::ExitCode {
    certdrop::cli::run()
}
