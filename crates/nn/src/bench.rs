//! `cryoden bench train`: time training steps of a model on synthetic data.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::{AdamParams, Backend, LossKind};
use crate::models::{Arch, Model};
use crate::train::{train_step, TrainState};
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
    for s in 0..cfg.warmup + cfg.steps {
        let t0 = Instant::now();
        let l = if s < cfg.warmup + cfg.steps - 1 {
            train_step(
                be, &model, &mut state, &mut acts, &input, &target, cfg.loss, &adam,
            )?
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
