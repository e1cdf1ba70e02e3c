//! The composition root: parse the command line, load the config, run one command.

use clap::Parser;
use keyward::cli::{self, Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Cli { config, command } = Cli::parse();
    let config = match cli::load_config(config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("keyward: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::CheckConfig => {
            println!("configuration is valid");
            Ok(())
        }
        Command::Serve => {
            keyward::logging::init(&config.logging);
            keyward::app::serve(config)
        }
        Command::User(user) => cli::run_user_command(&config, user),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward: {e:#}");
            ExitCode::FAILURE
        }
    }
}
