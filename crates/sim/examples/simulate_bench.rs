//! Time `write_dataset` (the code path of `cryoden simulate`, files included) and print one JSON line.
//!
//! cargo run --release -p cryoden-sim --example simulate_bench -- SIZE FRAMES MICROGRAPHS PIXEL OUT_DIR
//! e.g. `-- 4096 40 1 0.667 /tmp/simbench` (the directory is overwritten).

use cryoden_sim::{write_dataset, SimConfig, Structure};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 5 {
        return Err("usage: simulate_bench SIZE FRAMES MICROGRAPHS PIXEL OUT_DIR".into());
    }
    let size: usize = a[0].parse()?;
    let cfg = SimConfig {
        width: size,
        height: size,
        frames: a[1].parse()?,
        micrographs: a[2].parse()?,
        pixel_size: a[3].parse()?,
        seed: 1,
        ..SimConfig::default()
    };
    let structure = Structure::apoferritin();
    let t0 = Instant::now();
    let doc = write_dataset(&cfg, &structure, a[4].as_ref(), true, &|_| {})?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "size": size,
            "frames": cfg.frames,
            "micrographs": cfg.micrographs,
            "pixel_size": cfg.pixel_size,
            "particles_per_micrograph": doc["derived"]["particles_per_micrograph"],
            "threads": rayon::current_num_threads(),
            "seconds": secs,
            "seconds_per_movie": secs / cfg.micrographs as f64,
        })
    );
    Ok(())
}
