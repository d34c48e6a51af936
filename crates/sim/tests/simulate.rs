//! End-to-end properties of simulated micrographs: Poisson frames, reproducibility across thread counts, Thon
//! rings where the CTF puts them, the files on disk, and clear errors with nothing written for bad input.

use cryoden_sim::{optics, write_dataset, SimConfig, SimError, Simulator, Structure};
use std::sync::OnceLock;

fn apoferritin() -> &'static Structure {
    static S: OnceLock<Structure> = OnceLock::new();
    S.get_or_init(Structure::apoferritin)
}

/// A small, fast configuration: 256² at 1.5 Å, 2 particles, 12 frames.
fn small() -> SimConfig {
    SimConfig {
        width: 256,
        height: 256,
        pixel_size: 1.5,
        frames: 12,
        dose: 12.0,
        particles: Some(2),
        seed: 11,
        ..SimConfig::default()
    }
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Same seed → bit-identical frames, truth and metadata with 1 and 3 threads; another seed differs.
#[test]
fn same_seed_same_output_any_thread_count() {
    let cfg = small();
    let run = |threads| {
        in_pool(threads, || {
            Simulator::new(cfg.clone(), apoferritin())
                .unwrap()
                .simulate_micrograph(0)
                .unwrap()
        })
    };
    let (a, b) = (run(1), run(3));
    assert_eq!(a.frames, b.frames);
    assert_eq!(
        a.truth.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        b.truth.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(a.meta, b.meta);
    let other = Simulator::new(SimConfig { seed: 12, ..cfg }, apoferritin())
        .unwrap()
        .simulate_micrograph(0)
        .unwrap();
    assert_ne!(a.frames, other.frames);
    assert_ne!(a.meta.ctf, other.meta.ctf);
}

/// Without drift and decay, each pixel's frames are i.i.d. Poisson(truth/F): over 256² pixels × 40 frames the
/// pooled within-pixel variance equals the mean (within 1.5 %), the mean of the frames equals truth/F (within
/// 0.5 %), and the per-pixel frame mean tracks the truth (correlation of the residual with the truth ≈ 0).
#[test]
fn frames_have_poisson_statistics() {
    let cfg = SimConfig {
        frames: 40,
        dose: 120.0,
        particles: Some(3),
        drift: 0.0,
        exposure_filter: false,
        ..small()
    };
    let m = Simulator::new(cfg.clone(), apoferritin())
        .unwrap()
        .simulate_micrograph(0)
        .unwrap();
    let n = m.truth.len();
    let f = cfg.frames as f64;
    let (mut sum_mean, mut sum_var, mut sum_truth) = (0.0, 0.0, 0.0);
    for p in 0..n {
        let xs: Vec<f64> = m.frames.iter().map(|fr| fr[p] as f64).collect();
        let mean = xs.iter().sum::<f64>() / f;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (f - 1.0);
        sum_mean += mean;
        sum_var += var;
        sum_truth += m.truth[p] as f64 / f;
    }
    let ratio = sum_var / sum_mean;
    assert!((ratio - 1.0).abs() < 0.015, "variance / mean = {ratio}");
    assert!(
        (sum_mean / sum_truth - 1.0).abs() < 0.005,
        "frame mean {sum_mean} vs truth/F {sum_truth}"
    );
    assert_eq!(m.meta.clamped_pixels, 0);
    // The truth has structure (particles, ice), far beyond the Poisson noise of a single pixel's mean.
    let mean_t = sum_truth / n as f64;
    let var_t = m
        .truth
        .iter()
        .map(|&t| (t as f64 / f - mean_t).powi(2))
        .sum::<f64>()
        / n as f64;
    assert!(var_t > 1e-4 * mean_t * mean_t, "truth is flat: {var_t}");
}

/// With drift and the exposure filter the frame expectations differ, but the frame sum still has the truth's
/// mean (within 0.5 %) and frame 0 is unshifted.
#[test]
fn drift_and_decay_keep_the_dose() {
    let cfg = SimConfig {
        drift: 1.0,
        ..small()
    };
    let m = Simulator::new(cfg, apoferritin())
        .unwrap()
        .simulate_micrograph(1)
        .unwrap();
    assert_eq!(m.meta.drift_px[0], [0.0, 0.0]);
    assert!(m.meta.drift_px.iter().any(|d| d[0].abs() > 0.1));
    let total: f64 = m.frames.iter().flatten().map(|&c| c as f64).sum();
    let truth: f64 = m.truth.iter().map(|&t| t as f64).sum();
    assert!((total / truth - 1.0).abs() < 0.005, "{total} vs {truth}");
}

/// Thon rings: the radially averaged power spectrum of the truth (no astigmatism) has its minima at the CTF's
/// analytic zeros: for each of the first three zeros, the lowest value between the midpoints to its neighbouring
/// zeros lies within 1.5 frequency bins of it.
#[test]
fn thon_rings_at_the_ctf_zeros() {
    let n = 512;
    let cfg = SimConfig {
        width: n,
        height: n,
        pixel_size: 1.0,
        defocus_um: [1.5, 1.5],
        astigmatism_um: 0.0,
        particles: Some(6),
        ctf_bfactor: 0.0,
        ..small()
    };
    let sim = Simulator::new(cfg.clone(), apoferritin()).unwrap();
    let m = sim.simulate_micrograph(0).unwrap();
    let fft = cryoden_sim::fft::Fft2::new(n, n);
    let mean = m.truth.iter().sum::<f32>() / m.truth.len() as f32;
    let centred: Vec<f32> = m.truth.iter().map(|v| v - mean).collect();
    let s = fft.forward(&centred);
    let mut radial = vec![0f64; n / 2 + 1];
    let mut count = vec![0usize; n / 2 + 1];
    for kx in 0..=n / 2 {
        for ky in 0..n {
            let (fx, fy) = fft.freq(kx, ky);
            let r = ((fx * fx + fy * fy).sqrt() * n as f64).round() as usize;
            if r <= n / 2 {
                radial[r] += s.data[kx * n + ky].norm_sqr() as f64;
                count[r] += 1;
            }
        }
    }
    let radial: Vec<f64> = radial
        .iter()
        .zip(&count)
        .map(|(s, &c)| s / c.max(1) as f64)
        .collect();
    let bins: Vec<f64> = m
        .meta
        .ctf
        .zeros(0.0, 4)
        .iter()
        .map(|q| q * n as f64 * cfg.pixel_size)
        .collect();
    for k in 0..3 {
        let bin = bins[k];
        // Search between the midpoints to the neighbouring zeros.
        let lo = if k == 0 {
            bin * 0.6
        } else {
            (bins[k - 1] + bin) / 2.0
        };
        let hi = (bin + bins[k + 1]) / 2.0;
        let argmin = (lo.ceil() as usize..=hi.floor() as usize)
            .min_by(|&a, &b| radial[a].total_cmp(&radial[b]))
            .unwrap();
        assert!(
            (argmin as f64 - bin).abs() <= 1.5,
            "zero {k}: minimum at bin {argmin}, CTF zero at {bin:.1}"
        );
    }
    // Sanity: the defocus used is the one requested.
    let l = optics::wavelength(300e3);
    assert!((m.meta.ctf.defocus_u - 15_000.0).abs() < 1e-6 && l > 0.0);
}

#[test]
fn writes_movies_truth_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SimConfig {
        micrographs: 2,
        ..small()
    };
    let calls = std::sync::atomic::AtomicUsize::new(0);
    write_dataset(&cfg, apoferritin(), dir.path(), false, &|p| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(p.done <= p.total);
    })
    .unwrap();
    assert_eq!(calls.into_inner(), 2 * cfg.frames);
    let movie = cryoden_io::MrcStack::open(dir.path().join("movies/sim_0001.mrcs")).unwrap();
    assert_eq!((movie.nx(), movie.ny(), movie.nz()), (256, 256, 12));
    assert_eq!(movie.mode(), cryoden_io::Mode::Uint16);
    assert_eq!(movie.voxel_size()[0], 1.5);
    let truth = cryoden_io::read(dir.path().join("truth/sim_0001.mrc")).unwrap();
    assert_eq!(truth.nz(), 1);
    // The file holds exactly what the in-memory API returns.
    let m = Simulator::new(cfg.clone(), apoferritin())
        .unwrap()
        .simulate_micrograph(1)
        .unwrap();
    assert_eq!(truth.data, m.truth);
    let frame3: Vec<u16> = movie
        .read_image(3)
        .unwrap()
        .iter()
        .map(|&v| v as u16)
        .collect();
    assert_eq!(frame3, m.frames[3]);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("simulation.json")).unwrap())
            .unwrap();
    assert_eq!(json["micrographs"].as_array().unwrap().len(), 2);
    assert_eq!(
        json["micrographs"][1]["particles"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(json["config"]["seed"], 11);
    assert!(json["cryoden_version"].is_string());
    let back: SimConfig = serde_json::from_value(json["config"].clone()).unwrap();
    assert_eq!(back, cfg);
    // A second run into the same directory is refused without --overwrite.
    let e = write_dataset(&cfg, apoferritin(), dir.path(), false, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--overwrite"), "{e}");
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir);
    v.sort();
    v
}
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

/// Each bad input is refused with a message naming the flag or file, and nothing is written.
#[test]
fn bad_inputs_are_clear_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cases: Vec<(SimConfig, &str)> = vec![
        (
            SimConfig {
                width: 0,
                ..small()
            },
            "--size",
        ),
        (
            SimConfig {
                dose: -40.0,
                ..small()
            },
            "--dose",
        ),
        (
            SimConfig {
                dose: f64::NAN,
                ..small()
            },
            "--dose",
        ),
        (
            SimConfig {
                frames: 0,
                ..small()
            },
            "--frames",
        ),
        (
            SimConfig {
                micrographs: 0,
                ..small()
            },
            "--micrographs",
        ),
        (
            SimConfig {
                defocus_um: [2.0, 1.0],
                ..small()
            },
            "--defocus",
        ),
        (
            SimConfig {
                pixel_size: 0.0,
                ..small()
            },
            "--pixel-size",
        ),
        (
            SimConfig {
                amplitude_contrast: 1.5,
                ..small()
            },
            "--amplitude-contrast",
        ),
        (
            SimConfig {
                ice_thickness: 50.0,
                ..small()
            },
            "--ice-thickness",
        ),
        // 200 apoferritins cannot fit in 384 × 384 Å.
        (
            SimConfig {
                particles: Some(200),
                ..small()
            },
            "--particles",
        ),
        // One particle does not fit in 64 × 64 pixels of 1.5 Å.
        (
            SimConfig {
                width: 64,
                height: 64,
                particles: Some(1),
                ..small()
            },
            "--size",
        ),
    ];
    for (cfg, flag) in cases {
        let e = write_dataset(&cfg, apoferritin(), &out, false, &|_| {}).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(flag), "expected {flag} in: {msg}");
        assert!(
            matches!(e, SimError::Config { .. } | SimError::NoRoom(_)),
            "{e:?}"
        );
        assert!(
            listing(dir.path()).is_empty(),
            "{msg}: wrote {:?}",
            listing(dir.path())
        );
    }
    // Zero particles is a valid, ice-only micrograph.
    let m = Simulator::new(
        SimConfig {
            particles: Some(0),
            ..small()
        },
        apoferritin(),
    )
    .unwrap()
    .simulate_micrograph(0)
    .unwrap();
    assert!(m.meta.particles.is_empty());
    // An unreadable structure names the file.
    let e = Structure::from_file(&dir.path().join("missing.pdb"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pdb"), "{e}");
    let junk = dir.path().join("junk.pdb");
    std::fs::write(&junk, "this is not a PDB file\n").unwrap();
    let e = Structure::from_file(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.pdb") && e.contains("no atoms"), "{e}");
}
