//! The `wharf` binary: everything lives in the library; `cli::entry` is where it starts.

/// mimalloc instead of glibc's malloc: fewer instructions per connection, less memory per
/// idle one (why: Cargo.toml, beside the dependency).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    wharf::cli::entry::main()
}
