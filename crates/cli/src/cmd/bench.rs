//! `cryoden bench`: throughput measurements, JSON out. Each target is one variant; its code lives in the crate
//! that owns the work (io, nn, infer, ...), this file only parses flags and prints.

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub target: Target,
}

#[derive(clap::Subcommand)]
pub enum Target {}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.target {}
}
