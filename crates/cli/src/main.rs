//! `verity`: run, chat with, and convert open-weights models on your own machine.

mod bench;
mod chat;
mod common;
mod convert;
mod convert_adapter;
mod diff;
mod eval;
mod hash;
mod inspect;
mod merge;
mod models;
mod run;
mod serve;
mod sign;
mod tune;
mod tune_receipt;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "verity",
    version,
    about = "Run, tune, audit and verify open-weights models on your own machine."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::RunArgs),
    Bench(bench::BenchArgs),
    Chat(chat::ChatArgs),
    Serve(serve::ServeArgs),
    Convert(convert::ConvertArgs),
    Inspect(inspect::InspectArgs),
    Hash(hash::HashArgs),
    Sign(sign::SignArgs),
    Verify(sign::VerifyArgs),
    Keygen(sign::KeygenArgs),
    Diff(diff::DiffArgs),
    Merge(merge::MergeArgs),
    Eval(eval::EvalArgs),
    Tune(Box<tune::TuneArgs>),
    Pull(models::PullArgs),
    List(models::ListArgs),
    Rm(models::RmArgs),
}

fn main() {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Run(_)
            | Command::Inspect(_)
            | Command::Hash(_)
            | Command::Diff(_)
            | Command::List(_)
    ) {
        // Commands whose output is read by pipes (`verity inspect m.gguf | head`) end quietly
        // when the reader goes away, as Unix tools do, instead of panicking on EPIPE. Not for
        // commands that talk HTTP, where a closed socket must stay an error, not a signal.
        #[cfg(unix)]
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Pull(a) => models::pull(a),
        Command::List(a) => models::list(a),
        Command::Rm(a) => models::rm(a),
        Command::Bench(a) => bench::bench(a),
        Command::Chat(a) => chat::chat(a),
        Command::Serve(a) => serve::serve(a),
        Command::Convert(a) => convert::convert(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Hash(a) => hash::hash(a),
        Command::Sign(a) => sign::sign(a),
        Command::Verify(a) => sign::verify(a),
        Command::Keygen(a) => sign::keygen(a),
        Command::Diff(a) => diff::diff(a),
        Command::Merge(a) => merge::merge(a),
        Command::Eval(a) => eval::eval(a),
        Command::Tune(a) => tune::tune(*a),
    };
    if let Err(e) = result {
        // One line, bounded: causes can quote text from a hostile file.
        let msg: Vec<String> = e
            .chain()
            .map(|c| c.to_string().replace(|c: char| c.is_control(), " "))
            .collect();
        eprintln!("verity: error: {}", msg.join(": "));
        std::process::exit(1);
    }
}
