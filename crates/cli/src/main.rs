//! `cryoden`: the command-line front end. Glue only: every command parses its flags (documented where they are
//! defined, so `--help` stays the reference) and calls into a library crate.
//!
//! To add a subcommand: write `src/cmd/NAME.rs` with `pub struct Args` (clap `Args`) and
//! `pub fn run(args: Args) -> anyhow::Result<()>`, declare it in `src/cmd/mod.rs`, and add one variant below.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Noise2Noise denoising of cryo-EM micrographs, on CPU or NVIDIA GPU.
///
/// The whole chain: simulate or split movies into even/odd half sums, prepare patch datasets, train a U-Net,
/// denoise micrographs, and evaluate the result.
#[derive(Parser)]
#[command(name = "cryoden", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate counted movies (atoms → potential → CTF → Poisson frames) with their noise-free truth.
    Simulate(cmd::simulate::Args),
    /// Split movies into even/odd half sums (gain, drift correction) or thin single counted micrographs.
    Split(cmd::split::Args),
    /// Turn paired halves (or clean images + synthetic noise) into a patch dataset with a manifest.
    Prepare(cmd::prepare::Args),
    /// Train a denoiser on a dataset written by `cryoden prepare` (CPU, or CUDA when built with it).
    Train(cmd::train::Args),
    /// Denoise micrographs with a trained model (files, directories, globs; tiles with context; batched).
    Denoise(cmd::denoise::Args),
    /// Score models and baselines against a truth or independent half sets; report.html with figures.
    Evaluate(cmd::evaluate::Args),
    /// The whole chain on a small simulated set on CPU in a few minutes: simulate → train → evaluate → report.
    Demo(cmd::demo::Args),
    /// Print MRC/TIFF headers and statistics computed from the data.
    Info(cmd::info::Args),
    /// Convert a Topaz-Denoise model (.sav) to a cryoden checkpoint, executing nothing from the file.
    ImportTopaz(cmd::import_topaz::Args),
    /// Measure throughput (I/O, training, denoising); prints JSON with --json.
    Bench(cmd::bench::Args),
    /// Report OS, CPU, threads and, with the `cuda` feature, GPUs, driver, CUDA libraries and their paths.
    Doctor(cmd::doctor::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Denoise(args) => cmd::denoise::run(args),
        Command::Evaluate(args) => cmd::evaluate::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Info(args) => cmd::info::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Train(args) => cmd::train::run(args),
        Command::ImportTopaz(args) => cmd::import_topaz::run(args),
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::Simulate(args) => cmd::simulate::run(args),
        Command::Split(args) => cmd::split::run(args),
        Command::Prepare(args) => cmd::prepare::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", each cause once: library errors often put their source's text in their
/// own message too (`{path}: {source}`), which anyhow's `{:#}` would print twice.
fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "No such file or directory (os error 2)",
        );
        let lib = cryoden_nn::NnError::Io {
            path: "w.safetensors".into(),
            source: io,
        };
        let err = anyhow::Error::new(lib).context("cannot load the model");
        assert_eq!(
            error_chain(&err),
            "cannot load the model: w.safetensors: No such file or directory (os error 2)"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&plain), "outer: inner");
    }
}
