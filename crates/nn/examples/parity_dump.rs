//! Writes a checkpoint of a freshly initialised model, an input batch, the forward output and the parameter
//! parameter gradients of the MSE loss to a directory, for an ad-hoc comparison with PyTorch (load `w.safetensors`
//! into `python/bench_torch.py`'s `UNet` or Topaz's model, run the same batch, compare):
//! `DIMS=n,h,w THREADS=t cargo run --release -p cryoden-nn --example parity_dump -- DIR ARCH [widths]`.

use cryoden_nn::{checkpoint, cpu::Cpu, train, Arch, LossKind, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(&a[0]);
    let widths: Option<Vec<usize>> = a
        .get(2)
        .map(|w| w.split(',').map(|v| v.parse().unwrap()).collect());
    let model = Model::new(Arch::from_name(&a[1], widths.as_deref())?)?;
    let dims: Vec<usize> = std::env::var("DIMS")
        .unwrap_or("2,40,48".into())
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    let be = Cpu::new(
        std::env::var("THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2),
    )?;
    let p = model.init_params(1);
    checkpoint::save_weights(
        &dir.join("w.safetensors"),
        &model,
        &p,
        &serde_json::Value::Null,
    )?;
    let input: Vec<f32> = (0..n * h * w)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let target: Vec<f32> = (0..n * h * w)
        .map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0)
        .collect();
    let mut acts = model.activations(&be, n, h, w)?;
    acts.upload_input(&be, &input)?;
    acts.upload_target(&be, &target)?;
    let mut grads = vec![0.0f32; p.len()];
    let loss = train::loss_and_gradients(&be, &model, &p, &mut grads, &mut acts, LossKind::Mse)?;
    let mut out = vec![0.0f32; n * h * w];
    acts.download_output(&be, &mut out)?;
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join("input.f32"), bytes(&input))?;
    std::fs::write(dir.join("target.f32"), bytes(&target))?;
    std::fs::write(dir.join("output.f32"), bytes(&out))?;
    checkpoint::save_weights(
        &dir.join("grads.safetensors"),
        &model,
        &grads,
        &serde_json::json!({"loss": loss}),
    )?;
    println!("loss {loss}");
    Ok(())
}
