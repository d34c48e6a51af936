//! `cargo run --release -p cryoden-nn --example bench_train -- [widths] [size] [batch] [steps] [threads]`:
//! the `cryoden bench train` measurement without the CLI (for profiling this crate alone).

use cryoden_nn::bench::{bench_train, TrainBench};
use cryoden_nn::{cpu::Cpu, Arch, LossKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let widths: Vec<usize> = arg(0, "16,32,64,128")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let cfg = TrainBench {
        arch: Arch::Unet { widths },
        size: arg(1, "128").parse()?,
        batch: arg(2, "8").parse()?,
        steps: arg(3, "20").parse()?,
        warmup: 2,
        seed: 0,
        loss: LossKind::Mse,
    };
    let be = Cpu::new(arg(4, "2").parse()?)?;
    let r = bench_train(&be, &cfg)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
