//! `cryoden info`: headers and statistics of MRC and TIFF files.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// MRC (.mrc, .mrcs, .map, .mrc.gz) or TIFF files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print one JSON object per file instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Filled in by the I/O work (issue 2).
    anyhow::bail!("`cryoden info` is not implemented yet ({} files given)", args.files.len())
}
