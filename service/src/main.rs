//! The `standin` binary: everything is in the library; see `standin --help`.

fn main() -> std::process::ExitCode {
    standin::cli::main()
}
