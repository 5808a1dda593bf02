fn main() -> std::process::ExitCode {
    renderq::cli::main()
}
