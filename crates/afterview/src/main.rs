//! `afterview`: a thin entry point over the library.

fn main() -> std::process::ExitCode {
    afterview::entry::main()
}
