//! `cryoden import-topaz`: converts a Topaz-Denoise model to a cryoden checkpoint.
//!
//! The `.sav` file is read by a restricted unpickler that executes nothing (crates/topaz); the result is a
//! `topaz-unet` or `topaz-unet-small` checkpoint whose metadata carries Topaz's normalisation, so
//! `cryoden denoise --model OUT` reproduces `topaz denoise -m unet --patch-size -1`.

use std::path::PathBuf;

use anyhow::Context;
use cryoden_topaz::ArchChoice;

#[derive(clap::Args)]
pub struct Args {
    /// Topaz model: a pretrained file (topaz/pretrained/denoise/unet_L2_v0.2.2.sav, unet_small_L1_v0.2.2.sav) or
    /// a model saved by `topaz denoise --save-prefix` (a whole pickled module, read as data, never run).
    pub input: PathBuf,
    /// Output cryoden checkpoint (.safetensors), written atomically.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Network: `auto` recognises it from the tensor names and shapes; `unet` (= topaz-unet) or `unet-small`
    /// (= topaz-unet-small) insist on one.
    #[arg(long, default_value = "auto", value_parser = parse_arch)]
    pub arch: ArchChoice,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary (architecture, parameters, source) instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_arch(s: &str) -> Result<ArchChoice, String> {
    s.parse()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.output.exists() && !args.force {
        anyhow::bail!(
            "{} exists; pass --force to replace it",
            args.output.display()
        );
    }
    let imported = cryoden_topaz::import(&args.input, args.arch)?;
    cryoden_topaz::write_checkpoint(&imported, &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let arch = imported.model.arch().name();
    let params = imported.model.params().num_params();
    if args.json {
        let summary = serde_json::json!({
            "input": args.input,
            "output": args.output,
            "arch": arch,
            "parameters": params,
            "tensors": imported.source.tensors.len(),
            "meta": imported.meta,
        });
        println!("{summary}");
    } else {
        println!(
            "{} -> {}: {arch}, {} tensors, {params} parameters, normalisation zscore (Topaz's); equivalent to `{}`",
            args.input.display(),
            args.output.display(),
            imported.source.tensors.len(),
            imported.meta["topaz_equivalent"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}
