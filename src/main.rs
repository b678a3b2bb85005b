//! The `wharf` binary: everything lives in the library; `cli::entry` is where it starts.

fn main() -> std::process::ExitCode {
    wharf::cli::entry::main()
}
