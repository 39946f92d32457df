//! `firebreak`: the one binary. Commands are thin: they parse arguments, load config or reach a
//! broker, and print data on stdout (human text, or JSON with `-o json`) and logs on stderr.
//! Exit codes (DESIGN.md §2): 0 ok, 1 failure, 2 usage, 78 config error.
#![forbid(unsafe_code)]

mod audit_cmd;
mod cli;
mod client;
mod commands;
mod demo;
mod demo_tools;
mod gateway_cmd;
mod grants_cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    commands::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("firebreak: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firebreak: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
