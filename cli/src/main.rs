//! `icae`: import models, compress text into ICAE memory slots, generate from slots, and
//! talk to the gRPC services (the benchmarks are `icae-bench`).

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "icae",
    version,
    about = "In-context Autoencoder: compress long text into memory slots and decode from them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a GGUF checkpoint into an HF model directory.
    ImportGguf(commands::import::ImportArgs),
    /// Print the token ids of a text.
    Tokenize(commands::tokenize::TokenizeArgs),
    /// Compress a text into memory slots (a safetensors file).
    Compress(commands::compress::CompressArgs),
    /// Generate text from one or more slot files.
    Generate(commands::generate::GenerateArgs),
    /// Describe a model (and adapter): architecture, sizes, fingerprint.
    Info(commands::info::InfoArgs),
    /// Adapter tools.
    #[command(subcommand)]
    Adapter(commands::adapter::AdapterCommand),
    /// gRPC client for encoder-svc and decoder-svc.
    #[command(subcommand)]
    Client(commands::client::ClientCommand),
    /// Compress the example document, reconstruct it and answer its questions.
    Demo(commands::demo::DemoArgs),
    /// Write the base model's logits for a text to a safetensors file (for parity checks).
    #[command(hide = true)]
    Logits(commands::logits::LogitsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ImportGguf(args) => commands::import::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Compress(args) => commands::compress::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Adapter(cmd) => commands::adapter::run(cmd),
        Command::Client(cmd) => commands::client::run(cmd),
        Command::Demo(args) => commands::demo::run(args),
        Command::Logits(args) => commands::logits::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the context chain joined with ": ".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
