//! `cryoden info`: headers and statistics of MRC and TIFF files.
//!
//! One bad file does not stop the others: its error goes to stderr, the rest are printed, and the exit status
//! is non-zero.

use cryoden_io::info::describe;
use cryoden_io::ReadOptions;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// MRC (.mrc, .mrcs, .map, plain or gzip, e.g. .mrc.gz) or TIFF (.tif, .tiff) files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print one JSON object per file, one per line (keys include nx, ny, nz, mode, voxel_size, exttyp, nsymbt,
    /// byte_order, and min, max, mean, std computed from the data), instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read what mrcfile's permissive mode reads (guess the byte order when the machine stamp is wrong, accept a
    /// missing map ID); each recovery is listed as a warning.
    #[arg(long)]
    pub permissive: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = if args.permissive {
        ReadOptions::permissive()
    } else {
        ReadOptions::strict()
    };
    let mut failed = 0;
    let stdout = std::io::stdout();
    for f in &args.files {
        match describe(f, opts) {
            Ok(info) => {
                let mut out = stdout.lock();
                if args.json {
                    serde_json::to_writer(&mut out, &info)?;
                    writeln!(out)?;
                } else {
                    write!(out, "{}", info.to_text())?;
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files could not be read", args.files.len());
    }
    Ok(())
}
