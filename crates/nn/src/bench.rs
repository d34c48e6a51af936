//! `cryoden bench train`: time training steps of a model on synthetic data; `cryoden bench parity`: a backend's
//! forward, loss and gradients against a PyTorch fixture (`python/verify.py`), e.g. the CUDA backend against
//! PyTorch on the same GPU.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::{AdamParams, Backend, LossKind};
use crate::models::{Arch, Model};
use crate::train::{enqueue_train_step, TrainState};
use crate::Result;

/// What to time.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainBench {
    pub arch: Arch,
    pub batch: usize,
    /// Square image side.
    pub size: usize,
    /// Timed steps (after `warmup` untimed ones).
    pub steps: usize,
    pub warmup: usize,
    pub seed: u64,
    pub loss: LossKind,
}

/// Measured figures (`--json` prints this).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainBenchResult {
    pub config: TrainBench,
    pub backend: String,
    pub params: usize,
    /// Mean and median milliseconds per step over the timed steps.
    pub ms_per_step: f64,
    pub ms_per_step_median: f64,
    pub images_per_s: f64,
    /// Training FLOPs per step counted as 3 × forward (forward, backward-data, backward-filter).
    pub gflop_per_step: f64,
    pub gflop_per_s: f64,
    /// Peak resident memory of the process (Linux VmHWM), if known.
    pub peak_rss_mib: Option<f64>,
    pub first_loss: f32,
    pub last_loss: f32,
    /// Milliseconds per phase of the last timed step: forward, loss, backward (incl. zeroing grads), Adam.
    pub ms_forward: f64,
    pub ms_loss: f64,
    pub ms_backward: f64,
    pub ms_adam: f64,
}

/// Runs `warmup + steps` Adam steps on random pairs (a fixed batch: noise input, noisier target) and times them.
pub fn bench_train<B: Backend>(be: &B, cfg: &TrainBench) -> Result<TrainBenchResult> {
    let model = Model::new(cfg.arch.clone())?;
    model.check_input(cfg.size, cfg.size)?;
    let mut state = TrainState::new(be, &model, &model.init_params(cfg.seed))?;
    let mut acts = model.activations(be, cfg.batch, cfg.size, cfg.size)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed);
    let n = cfg.batch * cfg.size * cfg.size;
    let input: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let target: Vec<f32> = input
        .iter()
        .map(|&v| v + rng.random_range(-0.5f32..0.5))
        .collect();
    let adam = AdamParams {
        lr: 1e-4,
        ..AdamParams::default()
    };
    let mut times = Vec::with_capacity(cfg.steps);
    let mut phases = [0.0f64; 4];
    let mut first = f32::NAN;
    let mut last = f32::NAN;
    acts.upload_input(be, &input)?;
    acts.upload_target(be, &target)?;
    for s in 0..cfg.warmup + cfg.steps {
        let t0 = Instant::now();
        let l = if s < cfg.warmup + cfg.steps - 1 {
            // As `cryoden train` does: the next step's batch is uploaded while this step computes (a device
            // backend orders the upload after the queued step), then the loss is read.
            let pending = enqueue_train_step(be, &model, &mut state, &mut acts, cfg.loss, &adam)?;
            acts.upload_input(be, &input)?;
            acts.upload_target(be, &target)?;
            pending.finish(be, &acts)?
        } else {
            // The last step runs the same sequence as `train_step`, phase by phase, to time each phase.
            let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
            acts.upload_input(be, &input)?;
            acts.upload_target(be, &target)?;
            let t = Instant::now();
            model.forward(be, &state.params, &mut acts)?;
            be.synchronize()?;
            phases[0] = ms(t);
            let t = Instant::now();
            let l = crate::train::eval_loss_of_output(be, &mut acts, cfg.loss)?;
            phases[1] = ms(t);
            let t = Instant::now();
            be.fill(&mut state.grads, 0, model.params().len(), 0.0)?;
            model.backward(be, &state.params, &mut state.grads, &mut acts)?;
            be.synchronize()?;
            phases[2] = ms(t);
            let t = Instant::now();
            state.step += 1;
            be.adam_step(
                &adam,
                state.step,
                &mut state.params,
                &state.grads,
                &mut state.m,
                &mut state.v,
            )?;
            be.synchronize()?;
            phases[3] = ms(t);
            l
        };
        be.synchronize()?;
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        if s == 0 {
            first = l;
        }
        last = l;
        if s >= cfg.warmup {
            times.push(dt);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let gflop = 3.0 * model.forward_flops(cfg.batch, cfg.size, cfg.size) / 1e9;
    Ok(TrainBenchResult {
        config: cfg.clone(),
        backend: be.name(),
        params: model.params().num_params(),
        ms_per_step: mean,
        ms_per_step_median: median,
        images_per_s: cfg.batch as f64 / (mean / 1e3),
        gflop_per_step: gflop,
        gflop_per_s: gflop / (mean / 1e3),
        peak_rss_mib: peak_rss_mib(),
        first_loss: first,
        last_loss: last,
        ms_forward: phases[0],
        ms_loss: phases[1],
        ms_backward: phases[2],
        ms_adam: phases[3],
    })
}

/// Peak resident set size of this process in MiB, from `/proc/self/status` (`VmHWM`), on Linux.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One tensor's agreement with the reference: ‖ours − ref‖₂ / ‖ref‖₂ and max |ours − ref|.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Agreement {
    pub name: String,
    pub rel_l2: f64,
    pub max_abs: f64,
}

/// cryoden on a backend against a PyTorch fixture written by `python/verify.py`: the forward output, the loss and
/// every parameter gradient from the fixture's weights and batch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ParityResult {
    pub fixture: String,
    pub backend: String,
    pub arch: Arch,
    /// The fixture's `device` metadata (where PyTorch ran).
    pub torch_device: String,
    pub output: Agreement,
    pub loss_ours: f32,
    pub loss_torch: f32,
    pub loss_rel: f64,
    /// All parameter gradients as one vector (the per-model figure of docs/CUDA.md), every one of them, and the
    /// worst of them (small, deep tensors have the largest relative errors in reduced precision).
    pub grad_all: Agreement,
    pub grads: Vec<Agreement>,
    pub grad_worst: Agreement,
}

fn agreement(name: &str, ours: &[f32], reference: &[f32]) -> Agreement {
    let (mut num, mut den, mut max) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        let d = a as f64 - b as f64;
        num += d * d;
        den += b as f64 * b as f64;
        max = max.max(d.abs());
    }
    Agreement {
        name: name.to_string(),
        rel_l2: (num / den.max(f64::MIN_POSITIVE)).sqrt(),
        max_abs: max,
    }
}

/// Runs forward, loss and backward of the fixture's model on `be` from the fixture's weights and batch and
/// compares with PyTorch's output, loss and gradients (all in PyTorch layout).
pub fn parity<B: Backend>(be: &B, fixture: &std::path::Path) -> Result<ParityResult> {
    use crate::NnError;
    let bad = |problem: String| NnError::Checkpoint {
        path: fixture.to_path_buf(),
        problem,
    };
    let bytes = std::fs::read(fixture).map_err(|e| bad(format!("cannot read ({e})")))?;
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let meta = md.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, t) in st.tensors() {
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "tensor {name} is {:?}, expected F32",
                t.dtype()
            )));
        }
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.push((name, t.shape().to_vec(), v));
    }
    let get = |name: &str| {
        tensors.iter().find(|(n, _, _)| n == name).ok_or_else(|| {
            bad(format!(
                "no tensor {name}: write fixtures with python/verify.py"
            ))
        })
    };
    let field = |k: &str| {
        meta.get(k).cloned().ok_or_else(|| {
            bad(format!(
                "no metadata field {k}: write fixtures with python/verify.py"
            ))
        })
    };
    let arch: Arch =
        serde_json::from_str(&field("arch")?).map_err(|e| bad(format!("metadata arch: {e}")))?;
    let loss: LossKind = serde_json::from_value(serde_json::Value::String(field("loss")?))
        .map_err(|e| bad(format!("metadata loss: {e}")))?;
    let model = Model::new(arch.clone())?;
    let params = crate::checkpoint::params_from_torch(
        fixture,
        model.params(),
        tensors.iter().filter_map(|(n, s, v)| {
            n.strip_prefix("param.")
                .map(|n| (n, s.as_slice(), v.as_slice()))
        }),
    )?;
    let (_, shape, input) = get("input")?;
    let (n, h, w) = (shape[0], shape[2], shape[3]);
    let target = &get("target")?.2;
    let mut state = TrainState::new(be, &model, &params)?;
    let mut acts = model.activations(be, n, h, w)?;
    acts.upload_input(be, input)?;
    acts.upload_target(be, target)?;
    let l = crate::train::loss_and_gradients(
        be,
        &model,
        &state.params,
        &mut state.grads,
        &mut acts,
        loss,
    )?;
    let mut out = vec![0.0f32; acts.image_len()];
    acts.download_output(be, &mut out)?;
    let grads = TrainState::download(be, &state.grads)?;
    let mut agreements = Vec::new();
    let (mut all_ours, mut all_ref) = (Vec::new(), Vec::new());
    for (name, _, data) in model.params().export_torch(&grads)? {
        let reference = &get(&format!("grad.{name}"))?.2;
        agreements.push(agreement(&name, &data, reference));
        all_ours.extend_from_slice(&data);
        all_ref.extend_from_slice(reference);
    }
    let worst = agreements
        .iter()
        .max_by(|a, b| a.rel_l2.total_cmp(&b.rel_l2))
        .cloned()
        .ok_or_else(|| bad("the model has no parameters".into()))?;
    let loss_torch = get("loss")?.2[0];
    Ok(ParityResult {
        fixture: fixture.display().to_string(),
        backend: be.name(),
        arch,
        torch_device: meta.get("device").cloned().unwrap_or_default(),
        output: agreement("output", &out, &get("output")?.2),
        loss_ours: l,
        loss_torch,
        loss_rel: ((l as f64 - loss_torch as f64)
            / (loss_torch as f64).abs().max(f64::MIN_POSITIVE))
        .abs(),
        grad_all: agreement("all gradients", &all_ours, &all_ref),
        grads: agreements,
        grad_worst: worst,
    })
}
