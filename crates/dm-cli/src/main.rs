//! `dm`: end-to-end encrypted direct messages from a terminal.
//!
//! A thin layer over the `dm-client` library: parse arguments, unlock the local store,
//! call the library, print. Errors say what went wrong and what to do next.
#![forbid(unsafe_code)]

/// `println!` without the panic on a closed standard output (see
/// [`output::write_stdout`]).
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*), true)
    };
}

/// `print!` without the panic on a closed standard output.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*), false)
    };
}

mod cli;
mod commands;
mod output;
mod passphrase;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", output::render_error(&e));
            ExitCode::FAILURE
        }
    }
}
