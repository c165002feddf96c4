//! The `maas` binary: the library's command line ([`maas::cli::entry::main`]).

#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    maas::cli::entry::main()
}
