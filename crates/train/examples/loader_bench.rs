//! Throughput and memory of the two loaders (the numbers in docs/PERFORMANCE.md, section "Loaders").
//!
//! ```text
//! cargo run --release -p cryoden-train --example loader_bench -- DIR [PAIRS] [SIZE] [EPOCHS] [WIDTHS] [LOADER] [THREADS]
//! ```
//! Writes a synthetic dataset of PAIRS training pairs of SIZE² (plus PAIRS/8 validation pairs) into DIR/data
//! (kept between invocations), reads it once so it is in the page cache, then for each loader:
//! 1. loader alone: assembles every batch of one epoch (batch 8, full augmentation), no network;
//! 2. training: `train` for EPOCHS epochs of unet[WIDTHS] (batch 8) on the CPU backend
//!    (THREADS, 0 = all), and reports from metrics.jsonl each epoch's training images/s and the median of the
//!    per-step images/s (robust to hiccups of a shared machine), and the process's peak anonymous memory (the
//!    largest RssAnon a sampler thread saw every 20 ms: page-cache pages of the memory map are not in it).
//!
//! Run each loader in its own process (LOADER selects it) so the memory figures do not mix:
//! `... -- DIR 4096 128 2 16,32,64,128 in-memory` and `... streaming`.

use cryoden_nn::cpu::Cpu;
use cryoden_nn::Arch;
use cryoden_train::loader::{BatchSpec, Batches};
use cryoden_train::{train, AugmentConfig, Device, LoaderChoice, Quiet, RunOptions, TrainConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn rss_anon_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn write_dataset(dir: &Path, pairs: usize, size: usize) {
    use cryoden_prep::manifest::*;
    if dir.join("manifest.json").exists() {
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let val = (pairs / 8).max(1);
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        // xorshift: fast, deterministic, good enough for benchmark pixels.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut entries = Vec::new();
    for (name, n) in [
        ("train_input.mrcs", pairs),
        ("train_target.mrcs", pairs),
        ("val_input.mrcs", val),
        ("val_target.mrcs", val),
    ] {
        let path = dir.join(name);
        let mut w = cryoden_io::StackWriter::create(
            &path,
            size,
            size,
            &cryoden_io::WriteOptions::default(),
        )
        .unwrap();
        let mut img = vec![0.0f32; size * size];
        for _ in 0..n {
            img.iter_mut().for_each(|v| *v = next());
            w.append(&img).unwrap();
        }
        w.finish().unwrap();
        let bytes = std::fs::metadata(&path).unwrap().len();
        let sha = cryoden_prep::dataset::sha256_file(&path).unwrap();
        entries.push(FileEntry {
            name: name.into(),
            bytes,
            sha256: sha,
        });
    }
    let mg = |name: &str, split, n: usize| Micrograph {
        name: name.into(),
        even: name.into(),
        odd: name.into(),
        split,
        width: size * n,
        height: size,
        pixel_size: 1.0,
        normalization: cryoden_prep::normalize::Affine {
            offset: 0.0,
            scale: 1.0,
        },
        first_patch: 0,
        patch_count: n,
        x_starts: (0..n).map(|i| i * size).collect(),
        y_starts: vec![0],
    };
    let [ti, tt, vi, vt]: [FileEntry; 4] = entries.try_into().unwrap();
    let m = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        tool: "loader_bench".into(),
        patch_size: size,
        stride: size,
        normalize: cryoden_prep::normalize::Method::Zscore,
        source: Source::Clean {
            dir: "synthetic".into(),
            noise: cryoden_prep::noise::NoiseModel::Gaussian { sigma: 1.0 },
        },
        seed: 0,
        val_fraction: 0.125,
        counts: Counts { train: pairs, val },
        files: Files {
            train_input: ti,
            train_target: tt,
            val_input: vi,
            val_target: vt,
        },
        micrographs: vec![mg("train", Split::Train, pairs), mg("val", Split::Val, val)],
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root =
        PathBuf::from(args.get(1).expect(
            "usage: loader_bench DIR [PAIRS] [SIZE] [EPOCHS] [WIDTHS] [in-memory|streaming]",
        ));
    let pairs: usize = args.get(2).map_or(4096, |v| v.parse().unwrap());
    let size: usize = args.get(3).map_or(128, |v| v.parse().unwrap());
    let epochs: u64 = args.get(4).map_or(2, |v| v.parse().unwrap());
    let widths: Vec<usize> = args
        .get(5)
        .map_or("16,32,64,128", |v| v)
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let which = args.get(6).map_or("in-memory", |v| v);
    let threads: usize = args.get(7).map_or(0, |v| v.parse().unwrap());
    let data = root.join("data");
    write_dataset(&data, pairs, size);
    // Warm the page cache.
    for f in std::fs::read_dir(&data).unwrap() {
        let _ = std::fs::read(f.unwrap().path());
    }

    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon_kib(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let choice = if which == "streaming" {
        LoaderChoice::Streaming
    } else {
        LoaderChoice::InMemory
    };
    let base = rss_anon_kib();

    // 1. Loader alone.
    let d = cryoden_train::data::open(&data, choice).unwrap();
    let spec = BatchSpec {
        seed: 0,
        batch: 8,
        crop: size,
        augment: AugmentConfig::ALL,
    };
    let t = Instant::now();
    let mut n = 0usize;
    let mut it = match choice {
        LoaderChoice::Streaming => Batches::prefetch(d.train.clone(), spec, 0, 0, 1, 4),
        _ => Batches::sync(d.train.clone(), spec, 0, 0, 1),
    };
    while let Some(b) = it.next() {
        n += b.n;
        it.give_back(b);
    }
    let loader_ips = n as f64 / t.elapsed().as_secs_f64();
    drop(it);
    drop(d);

    // 2. Training.
    let mut c = TrainConfig::new(Arch::Unet {
        widths: widths.clone(),
    });
    c.epochs = epochs;
    c.batch = 8;
    c.sample_every = 0;
    let out = root.join(format!("run-{which}-{}", std::process::id()));
    let be = Cpu::new(threads).unwrap();
    let opts = RunOptions {
        data: data.clone(),
        out: out.clone(),
        loader: choice,
        prefetch: 4,
        device: Device::Cpu,
        resume: false,
    };
    train(&be, &c, &opts, &mut Quiet).unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let recs = cryoden_train::metrics::read(&out.join("metrics.jsonl")).unwrap();
    let epochs_ips: Vec<f64> = recs
        .iter()
        .filter(|r| r.kind == cryoden_train::metrics::Kind::Epoch)
        .map(|r| r.images_per_s)
        .collect();
    let mut steps: Vec<f64> = recs
        .iter()
        .filter(|r| r.kind == cryoden_train::metrics::Kind::Step)
        .map(|r| r.images_per_s)
        .collect();
    steps.sort_by(f64::total_cmp);
    let median = steps[steps.len() / 2];
    let dataset_mib =
        ((pairs + (pairs / 8).max(1)) * 2 * size * size * 4) as f64 / (1 << 20) as f64;
    println!(
        "{{\"loader\":\"{which}\",\"pairs\":{pairs},\"size\":{size},\"dataset_mib\":{dataset_mib:.1},\
         \"widths\":{widths:?},\"loader_only_images_per_s\":{loader_ips:.0},\"train_epoch_images_per_s\":{epochs_ips:?},\"train_step_median_images_per_s\":{median:.1},\"threads\":{},\
         \"rss_anon_start_mib\":{:.1},\"rss_anon_peak_mib\":{:.1}}}",
        be.threads(),
        base as f64 / 1024.0,
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&out);
}
