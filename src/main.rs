//! The `quantkit` command-line tool; see `quantkit --help`.
fn main() -> std::process::ExitCode {
    quantkit_cli::main()
}
