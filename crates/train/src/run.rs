//! The training loop: epochs of augmented batches, validation over the whole validation set after each epoch,
//! best and last checkpoints, metrics.jsonl, sample exports, exact resume.

use crate::checkpoint::{self, EpochState};
use crate::config::{RunOptions, RunRecord, TrainConfig, RUN_FORMAT, RUN_VERSION};
use crate::data;
use crate::error::{Error, Result};
use crate::loader::{validation_batches, Batch, BatchSpec, Batches, LoaderKind, PairSource};
use crate::metrics::{Kind, MetricsLog, Record};
use crate::samples;
use cryoden_nn::train::{enqueue_train_step, eval_loss};
use cryoden_nn::{Activations, Backend, Model, NnError, TrainState};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const CONFIG_FILE: &str = "config.json";

/// What the caller sees of a run as it goes (progress bar, messages). Every method has a default that does
/// nothing.
pub trait Observer {
    /// A line for the user (stderr in the CLI): loader choice, resume point, ...
    fn message(&mut self, _msg: &str) {}
    /// Training is about to start: `total` steps in the whole run, `done` of them already taken (resume).
    fn begin(&mut self, _total: u64, _done: u64) {}
    /// After every optimizer step.
    fn step(&mut self, _r: &Record) {}
    /// Validation of an epoch starts (it can take a while on large validation sets).
    fn validating(&mut self, _epoch: u64) {}
    /// After every epoch (validation and checkpoints done).
    fn epoch(&mut self, _r: &Record) {}
    /// Polled after every step; `true` stops the run at once, without a checkpoint, as if the process had been
    /// killed there (tests use it to check that `--resume` is exact).
    fn stop_requested(&mut self) -> bool {
        false
    }
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Epochs complete (checkpointed), over all sessions of the run.
    pub epochs_done: u64,
    /// Optimizer steps taken, over all sessions.
    pub steps: u64,
    /// Validation loss of the last complete epoch and the best one (1-based epoch).
    pub last_val_loss: Option<f64>,
    pub best: Option<(u64, f64)>,
    /// The observer asked to stop before the last epoch.
    pub stopped: bool,
    pub run_dir: PathBuf,
}

/// Reads `RUN/config.json` (for `--resume`: the settings of the run to continue).
pub fn read_run_record(run: &Path) -> Result<RunRecord> {
    let path = run.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::fs(
            &path,
            "cannot read the run's configuration (is this a directory written by `cryoden train`?)",
            e,
        )
    })?;
    let rec: RunRecord = serde_json::from_str(&text)
        .map_err(|e| Error::run(&path, format!("not a cryoden run configuration: {e}")))?;
    if rec.format != RUN_FORMAT || rec.version != RUN_VERSION {
        return Err(Error::run(
            &path,
            format!(
                "format {:?} version {}, expected {RUN_FORMAT:?} version {RUN_VERSION}",
                rec.format, rec.version
            ),
        ));
    }
    Ok(rec)
}

/// Trains `config` on `be`. With `opts.resume`, continues the run in `opts.out` from its last checkpoint; the
/// run's recorded settings must equal `config` except `epochs` (which may grow) and `sample_every`.
pub fn train<B: Backend>(
    be: &B,
    config: &TrainConfig,
    opts: &RunOptions,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    let model = Model::new(config.arch.clone())?;
    check_settings(config)?;
    // Every check before anything is read into memory or written.
    let checked = data::check(&opts.data)?;
    let patch = checked.dataset.patch_size();
    let crop = config.crop.unwrap_or(patch);
    let n_train = checked.dataset.manifest().counts.train;
    check_sizes(&model, &opts.data, patch, crop, config.batch, n_train)?;
    let out = &opts.out;
    let old = if opts.resume {
        let old = read_run_record(out)?;
        check_resume(out, &old, config, &checked.manifest_sha256, &opts.data)?;
        Some(old)
    } else {
        check_run_dir_free(out)?;
        None
    };

    let data = checked.load(opts.loader);
    obs.message(&format!(
        "loader: {} ({})",
        match data.kind {
            LoaderKind::InMemory => "in-memory",
            LoaderKind::Streaming => "streaming",
        },
        data.reason
    ));
    let steps_per_epoch = data.train.len() / config.batch;
    let record = RunRecord {
        format: RUN_FORMAT.into(),
        version: RUN_VERSION,
        tool: format!("cryoden {}", env!("CARGO_PKG_VERSION")),
        config: config.clone(),
        data: std::path::absolute(&opts.data).unwrap_or_else(|_| opts.data.clone()),
        manifest_sha256: data.manifest_sha256.clone(),
        patch_size: patch,
        crop,
        train_pairs: data.train.len(),
        val_pairs: data.val.len(),
        steps_per_epoch,
        loader: data.kind,
        device: opts.device,
        backend: be.name(),
        parameters: model.params().num_params(),
    };

    // Where this session starts: a fresh run or the last checkpoint of an old one.
    let (mut state, mut es, mut log) = if old.is_some() {
        // A run killed before its first checkpoint restarts from its initial weights (same seed, same run).
        let (params, m, v, es) = match checkpoint::load_last(out, &model)? {
            Some(last) => last,
            None => {
                let n = model.params().len();
                (
                    model.init_params(config.seed),
                    vec![0.0; n],
                    vec![0.0; n],
                    EpochState::default(),
                )
            }
        };
        if es.epochs_done >= config.epochs {
            obs.message(&format!(
                "{}: all {} epochs are done already; pass a larger --epochs to train further",
                out.display(),
                es.epochs_done
            ));
            return Ok(summary(&es, out, false));
        }
        obs.message(&format!(
            "resuming {} after epoch {} (step {}) of {}",
            out.display(),
            es.epochs_done,
            es.step,
            config.epochs
        ));
        if let Some(old) = &old {
            if old.backend != record.backend {
                // Reductions split by thread (or device) sum in another order: still a valid run, not bit-identical.
                obs.message(&format!(
                    "note: the run was trained on {}, this session uses {}; training continues correctly, but the \
                     weights will not be bit-identical to an uninterrupted run (same --device and --threads for that)",
                    old.backend, record.backend
                ));
            }
        }
        let state = TrainState::resume(be, &model, &params, &m, &v, es.step)?;
        let log = MetricsLog::resume(out, es.step, es.epochs_done)?;
        write_record(out, &record)?;
        (state, es, log)
    } else {
        std::fs::create_dir_all(out)
            .map_err(|e| Error::fs(out, "cannot create the run directory", e))?;
        write_record(out, &record)?;
        let state = TrainState::new(be, &model, &model.init_params(config.seed))?;
        (state, EpochState::default(), MetricsLog::create(out)?)
    };

    let spec = BatchSpec {
        seed: config.seed,
        batch: config.batch,
        crop,
        augment: config.augment,
    };
    // Both loaders assemble batches (crops, flips, rotations) on a prefetch thread, overlapped with the step:
    // assembled on the training thread between steps, the in-memory loader ran at 75 % of the streaming one's
    // images/s on an H200 (docs/perf/gpu-denoise.md §3). The batches are the same either way.
    let mut batches = Batches::prefetch(
        data.train.clone(),
        spec,
        es.epochs_done,
        0,
        config.epochs,
        opts.prefetch,
    );
    let mut acts = model.activations(be, config.batch, crop, crop)?;
    // The batches in flight (queued by the prefetch thread, being filled, being uploaded) in host memory from the
    // backend: page-locked on a GPU, so each upload is a DMA that the training thread only starts.
    if batches.prefetching() {
        let len = config.batch * crop * crop;
        for _ in 0..opts.prefetch.max(1) + 2 {
            let b =
                Batch::with_buffers(config.batch, crop, be.alloc_host(len)?, be.alloc_host(len)?);
            batches.give_back(b);
        }
    }
    let mut val_rest: Option<Activations<B>> = None;
    let lr = config.adam.lr;
    let session = Instant::now();
    let elapsed = |es: &EpochState| es.elapsed_s + session.elapsed().as_secs_f64();
    obs.begin(config.epochs * steps_per_epoch as u64, es.step);

    for epoch in es.epochs_done..config.epochs {
        let epoch_start = Instant::now();
        let mut loss_sum = 0.0f64;
        let mut last = Instant::now();
        // Step k is queued, batch k + 1 is uploaded while the device computes it (the backend orders the copy
        // after the queued step: docs/CUDA.md, "Batch upload overlap"), then step k's loss is read. The first batch
        // of an epoch is uploaded before its step, since validation reuses `acts` between epochs.
        let mut upload_next = |acts: &mut Activations<B>| -> Result<()> {
            let b = batches
                .next()
                .expect("the loader yields steps_per_epoch batches per epoch");
            debug_assert_eq!(b.epoch, epoch);
            acts.upload_input_host(be, &b.input, None)?;
            acts.upload_target_host(be, &b.target)?;
            // Filling the buffers again waits for these copies (page-locked memory) or needs no wait (pageable).
            batches.give_back(b);
            Ok(())
        };
        upload_next(&mut acts)?;
        for k in 0..steps_per_epoch {
            let pending =
                enqueue_train_step(be, &model, &mut state, &mut acts, config.loss, &config.adam)?;
            if k + 1 < steps_per_epoch {
                upload_next(&mut acts)?;
            }
            let result = pending.finish(be, &acts);
            let step = es.step + 1;
            let now = Instant::now();
            let mut rec = Record {
                kind: Kind::Step,
                step,
                epoch: epoch + 1,
                loss: None,
                val_loss: None,
                images_per_s: config.batch as f64 / (now - last).as_secs_f64().max(1e-9),
                lr,
                elapsed_s: elapsed(&es),
                best: None,
            };
            last = now;
            let loss = match result {
                Ok(l) => l,
                Err(NnError::NonFiniteLoss(v)) => {
                    log.write(&rec)?;
                    return Err(non_finite("training loss", v, step, epoch + 1, out, &es));
                }
                Err(e) => return Err(e.into()),
            };
            es.step = step;
            loss_sum += loss as f64;
            rec.loss = Some(loss as f64);
            log.write(&rec)?;
            obs.step(&rec);
            if obs.stop_requested() {
                return Ok(summary(&es, out, true));
            }
        }
        let train_s = epoch_start.elapsed().as_secs_f64();

        obs.validating(epoch + 1);
        let val_loss = validate(
            be,
            &model,
            &state.params,
            &mut acts,
            &mut val_rest,
            &*data.val,
            crop,
            config,
        )?;
        if !val_loss.is_finite() {
            return Err(non_finite(
                "validation loss",
                val_loss as f32,
                es.step,
                epoch + 1,
                out,
                &es,
            ));
        }
        es.epochs_done = epoch + 1;
        let improved = es.best.is_none_or(|(_, b)| val_loss < b);
        if improved {
            es.best = Some((epoch + 1, val_loss));
        }
        es.last_val_loss = Some(val_loss);
        // Elapsed time in the checkpoint: everything up to now, so a resumed run continues the clock.
        let mut saved = es.clone();
        saved.elapsed_s = elapsed(&es);
        let params = TrainState::download(be, &state.params)?;
        let meta = checkpoint::Meta {
            record: &record,
            manifest: data.dataset.manifest(),
            state: &saved,
        };
        if improved {
            checkpoint::save_best(out, &model, &params, &meta)?;
        }
        let m = TrainState::download(be, &state.m)?;
        let v = TrainState::download(be, &state.v)?;
        checkpoint::save_last(out, &model, &params, &m, &v, &meta)?;
        let rec = Record {
            kind: Kind::Epoch,
            step: es.step,
            epoch: epoch + 1,
            loss: Some(loss_sum / steps_per_epoch as f64),
            val_loss: Some(val_loss),
            images_per_s: (steps_per_epoch * config.batch) as f64 / train_s.max(1e-9),
            lr,
            elapsed_s: saved.elapsed_s,
            best: Some(improved),
        };
        log.write(&rec)?;
        if config.sample_every > 0 && (epoch + 1).is_multiple_of(config.sample_every) {
            samples::export(be, &model, &state.params, &*data.val, crop, out, epoch + 1)?;
        }
        obs.epoch(&rec);
    }
    Ok(summary(&es, out, false))
}

fn summary(es: &EpochState, out: &Path, stopped: bool) -> Summary {
    Summary {
        epochs_done: es.epochs_done,
        steps: es.step,
        last_val_loss: es.last_val_loss,
        best: es.best,
        stopped,
        run_dir: out.to_path_buf(),
    }
}

fn non_finite(
    what: &'static str,
    value: f32,
    step: u64,
    epoch: u64,
    out: &Path,
    es: &EpochState,
) -> Error {
    let kept = if es.epochs_done > 0 {
        format!(
            "The last good checkpoint, {} (epoch {}), is kept.",
            out.join(checkpoint::LAST_WEIGHTS).display(),
            es.epochs_done
        )
    } else {
        "No epoch had completed, so there is no checkpoint.".to_string()
    };
    Error::NonFinite {
        what,
        value,
        step,
        epoch,
        kept,
    }
}

/// Mean loss over every pixel of every validation pair (centre crops, no augmentation), in f64.
#[allow(clippy::too_many_arguments)]
fn validate<B: Backend>(
    be: &B,
    model: &Model,
    params: &B::Buf,
    acts: &mut Activations<B>,
    rest: &mut Option<Activations<B>>,
    val: &dyn PairSource,
    crop: usize,
    config: &TrainConfig,
) -> Result<f64> {
    let mut sum = 0.0f64;
    for b in validation_batches(val, config.batch, crop) {
        // Full batches reuse the training buffers; the last, smaller one gets its own (allocated once).
        let a = if b.n == config.batch {
            &mut *acts
        } else {
            if rest.as_ref().is_none_or(|r| r.dims().n != b.n) {
                *rest = Some(model.activations(be, b.n, crop, crop)?);
            }
            rest.as_mut().expect("allocated above")
        };
        a.upload_input(be, &b.input)?;
        a.upload_target(be, &b.target)?;
        let l = eval_loss(be, model, params, a, config.loss)?;
        sum += l as f64 * b.n as f64;
    }
    Ok(sum / val.len() as f64)
}

fn check_settings(c: &TrainConfig) -> Result<()> {
    if c.batch == 0 {
        return Err(Error::Usage("--batch must be at least 1".into()));
    }
    if c.epochs == 0 {
        return Err(Error::Usage("--epochs must be at least 1".into()));
    }
    if !(c.adam.lr.is_finite() && c.adam.lr > 0.0) {
        return Err(Error::Usage(format!(
            "--lr must be a positive number, got {}",
            c.adam.lr
        )));
    }
    if c.crop == Some(0) {
        return Err(Error::Usage("--crop must be at least 1".into()));
    }
    Ok(())
}

/// The crop must fit in the patch and suit the architecture; the batch needs enough training pairs.
fn check_sizes(
    model: &Model,
    dir: &Path,
    patch: usize,
    crop: usize,
    batch: usize,
    n_train: usize,
) -> Result<()> {
    if crop > patch {
        return Err(Error::data(
            dir,
            format!("--crop {crop} is larger than the dataset's {patch}x{patch} patches; use --crop ≤ {patch}"),
        ));
    }
    if let Err(e) = model.check_input(crop, crop) {
        let what = if crop == patch {
            format!("the dataset's patch size {patch}")
        } else {
            format!("--crop {crop}")
        };
        return Err(Error::data(
            dir,
            format!("{what} does not suit the architecture: {e}; pick a --crop the architecture takes, or re-run \
                     `cryoden prepare` with such a --patch-size"),
        ));
    }
    if n_train < batch {
        return Err(Error::data(
            dir,
            format!("{n_train} training pairs are fewer than one batch of {batch}; lower --batch or prepare more data"),
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path` under a temporary name in the same directory, then renames it into place.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = cryoden_io::AtomicFile::create(path)?;
    f.file()
        .write_all(bytes)
        .map_err(|e| Error::fs(path, "cannot write", e))?;
    f.commit()?;
    Ok(())
}

/// A fresh run goes into an empty or new directory: never over another run.
fn check_run_dir_free(out: &Path) -> Result<()> {
    if out.join(CONFIG_FILE).exists() {
        return Err(Error::run(
            out,
            "already holds a training run (config.json); continue it with --resume, or choose another --out",
        ));
    }
    Ok(())
}

fn write_record(out: &Path, rec: &RunRecord) -> Result<()> {
    let path = out.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(rec).expect("run records serialise") + "\n";
    write_atomic(&path, text.as_bytes())
}

/// A resumed run must be the same run: same settings (bar `epochs`, which may grow, and `sample_every`) and the
/// same dataset content.
fn check_resume(
    out: &Path,
    old: &RunRecord,
    new: &TrainConfig,
    manifest_sha256: &str,
    data: &Path,
) -> Result<()> {
    let path = out.join(CONFIG_FILE);
    let mut asked = new.clone();
    asked.epochs = old.config.epochs;
    asked.sample_every = old.config.sample_every;
    if asked != old.config {
        let (a, b) = (
            serde_json::to_value(&old.config),
            serde_json::to_value(&asked),
        );
        let mut diffs = Vec::new();
        if let (Ok(a), Ok(b)) = (a, b) {
            json_diff("", &a, &b, &mut diffs);
        }
        return Err(Error::run(
            &path,
            format!(
                "--resume keeps the run's settings (only --epochs and --sample-every may change), but this command \
                 changes {}; drop those flags or start a new run",
                diffs.join(", ")
            ),
        ));
    }
    if old.manifest_sha256 != manifest_sha256 {
        return Err(Error::run(
            &path,
            format!(
                "the run was trained on a dataset whose manifest.json has SHA-256 {}, but {} has {manifest_sha256}; \
                 resume with the original dataset",
                old.manifest_sha256,
                data.display(),
            ),
        ));
    }
    Ok(())
}

/// `key: run has A, asked B` for every leaf where two JSON values differ.
fn json_diff(key: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                json_diff(
                    &sub,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{key} (run has {a}, asked {b})")),
        _ => {}
    }
}
