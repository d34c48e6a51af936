//! `split` end to end on small files written with cryoden-io: sums, frame parity, gain, TIFF, alignment JSON,
//! thinning, and one test per bad input (each checks the message and that nothing was written).

use cryoden_io::{Mode, TiffCompression, TiffSample, WriteOptions};
use cryoden_prep::align::AlignParams;
use cryoden_prep::split::{expand_inputs, split_movie, Gain, SplitOptions};
use rand::SeedableRng;
use rand_distr::{Distribution, Poisson};
use std::path::{Path, PathBuf};

/// `n` frames of w × h Poisson counts (mean 3), sample-major.
fn counts(w: usize, h: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let p = Poisson::new(3.0f64).unwrap();
    (0..w * h * n).map(|_| p.sample(&mut rng) as f32).collect()
}

fn write_movie(path: &Path, data: &[f32], w: usize, h: usize, px: f32) {
    let opts = WriteOptions {
        mode: Mode::Uint16,
        voxel_size: [px; 3],
        ..WriteOptions::default()
    };
    cryoden_io::write(path, data, [w, h, data.len() / (w * h)], &opts).unwrap();
}

fn read(path: &Path) -> (Vec<f32>, [f32; 3]) {
    let m = cryoden_io::read(path).unwrap();
    let v = m.voxel_size();
    (m.data, v)
}

/// Sum of frames `idx` of a stack.
fn sum_frames(data: &[f32], plane: usize, idx: impl Iterator<Item = usize>) -> Vec<f32> {
    let mut s = vec![0f32; plane];
    for i in idx {
        for (a, b) in s.iter_mut().zip(&data[i * plane..(i + 1) * plane]) {
            *a += b;
        }
    }
    s
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(files_under(&p));
            } else {
                v.push(p);
            }
        }
    }
    v
}

#[test]
fn even_plus_odd_is_the_full_sum_and_parity_is_relion() {
    let t = tempfile::tempdir().unwrap();
    let (w, h, n) = (37, 29, 6);
    let data = counts(w, h, n, 1);
    let movie = t.path().join("m1.mrcs");
    write_movie(&movie, &data, w, h, 0.83);
    let out = t.path().join("out");
    let r = split_movie(&movie, &out, &SplitOptions::default()).unwrap();
    assert_eq!((r.frames, r.frames_used, r.name.as_str()), (6, 6, "m1"));
    let (even, vs) = read(&out.join("even/m1.mrc"));
    let (odd, _) = read(&out.join("odd/m1.mrc"));
    let plane = w * h;
    // Integer counts in f32: sums are exact, so equality is exact.
    assert_eq!(even, sum_frames(&data, plane, [0, 2, 4].into_iter()));
    assert_eq!(odd, sum_frames(&data, plane, [1, 3, 5].into_iter()));
    let full = sum_frames(&data, plane, 0..n);
    let eo: Vec<f32> = even.iter().zip(&odd).map(|(a, b)| a + b).collect();
    assert_eq!(eo, full);
    // Voxel size carried from the movie (f32 header field).
    assert!((vs[0] - 0.83).abs() < 1e-6, "{vs:?}");
}

#[test]
fn odd_frame_count_leaves_out_the_last_frame() {
    let t = tempfile::tempdir().unwrap();
    let (w, h) = (16, 12);
    let data = counts(w, h, 5, 2);
    let movie = t.path().join("odd5.mrc");
    write_movie(&movie, &data, w, h, 1.0);
    let r = split_movie(&movie, t.path(), &SplitOptions::default()).unwrap();
    assert_eq!((r.frames, r.frames_used), (5, 4));
    let (even, _) = read(&t.path().join("even/odd5.mrc"));
    let (odd, _) = read(&t.path().join("odd/odd5.mrc"));
    assert_eq!(even, sum_frames(&data, w * h, [0, 2].into_iter()));
    assert_eq!(odd, sum_frames(&data, w * h, [1, 3].into_iter()));
}

#[test]
fn gain_is_multiplied_and_tiff_reads_like_mrc() {
    let t = tempfile::tempdir().unwrap();
    let (w, h, n) = (20, 14, 4);
    let data = counts(w, h, n, 3);
    let gain: Vec<f32> = (0..w * h).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
    let gpath = t.path().join("gain.mrc");
    cryoden_io::write(&gpath, &gain, [w, h, 1], &WriteOptions::default()).unwrap();
    let tif = t.path().join("tm.tif");
    cryoden_io::tiff::write_stack(&tif, &data, w, h, TiffSample::U16, TiffCompression::Lzw)
        .unwrap();
    let opts = SplitOptions {
        gain: Some(Gain::load(&gpath).unwrap()),
        ..SplitOptions::default()
    };
    split_movie(&tif, t.path(), &opts).unwrap();
    let (even, _) = read(&t.path().join("even/tm.mrc"));
    let want: Vec<f32> = sum_frames(&data, w * h, [0, 2].into_iter())
        .iter()
        .zip(&gain)
        .map(|(s, g)| s * g)
        .collect();
    for (a, b) in even.iter().zip(&want) {
        // Tolerance: f32 rounding of (a·g + b·g) vs (a + b)·g.
        assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    // A gain of another size is refused, naming both sizes.
    let small = t.path().join("small_gain.mrc");
    cryoden_io::write(&small, &[1.0; 4], [2, 2, 1], &WriteOptions::default()).unwrap();
    let opts = SplitOptions {
        gain: Some(Gain::load(&small).unwrap()),
        ..SplitOptions::default()
    };
    let out = t.path().join("o2");
    let msg = split_movie(&tif, &out, &opts).unwrap_err().to_string();
    assert!(msg.contains("20 x 14") && msg.contains("2 x 2"), "{msg}");
    assert!(files_under(&out).is_empty());
}

#[test]
fn align_writes_shifts_json_and_recovers_drift() {
    // Frames of a specimen of random Gaussian blobs (running out of the frame on every side) drifting by known
    // sub-pixel amounts; bright (20 counts/px) so that the estimator, not the noise, is tested.
    use rand::Rng;
    let t = tempfile::tempdir().unwrap();
    let (w, h, n) = (256usize, 256usize, 6usize);
    let truth: Vec<[f32; 2]> = (0..n).map(|i| [0.6 * i as f32, -0.35 * i as f32]).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let blobs: Vec<(f32, f32, f32, f32)> = (0..400)
        .map(|_| {
            (
                rng.random_range(-8.0..264.0),
                rng.random_range(-8.0..264.0),
                rng.random_range(1.5..4.0),
                rng.random_range(0.5..2.0),
            )
        })
        .collect();
    let mut data = vec![];
    for d in &truth {
        let mut frame = vec![1.0f32; w * h];
        for &(bx, by, s, a) in &blobs {
            let (cx, cy) = (bx + d[0], by + d[1]);
            for y in (cy as i64 - 16).max(0)..(cy as i64 + 17).min(h as i64) {
                for x in (cx as i64 - 16).max(0)..(cx as i64 + 17).min(w as i64) {
                    let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                    frame[y as usize * w + x as usize] += a * (-d2 / (2.0 * s * s)).exp();
                }
            }
        }
        data.extend(
            frame
                .iter()
                .map(|&v| Poisson::new(20.0 * v as f64).unwrap().sample(&mut rng) as f32),
        );
    }
    let movie = t.path().join("drift.mrcs");
    write_movie(&movie, &data, w, h, 1.1);
    let opts = SplitOptions {
        align: Some(AlignParams::default()),
        ..SplitOptions::default()
    };
    let r = split_movie(&movie, t.path(), &opts).unwrap();
    let shifts = r.shifts.clone().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("shifts/drift.json")).unwrap())
            .unwrap();
    assert_eq!(json["shifts"].as_array().unwrap().len(), n);
    assert_eq!(json["frames_used"], 6);
    for (s, d) in shifts.iter().zip(&truth) {
        // Tolerance 0.1 px at 256² (the unit test in align.rs checks 0.05 px at 512²).
        assert!(
            (s[0] - d[0]).abs() < 0.1 && (s[1] - d[1]).abs() < 0.1,
            "found {shifts:?}, true {truth:?}"
        );
    }
    // Total counts are conserved by the shifts (periodic Fourier shift): tolerance 1e-4 relative (f32 FFT).
    let (even, _) = read(&t.path().join("even/drift.mrc"));
    let (odd, _) = read(&t.path().join("odd/drift.mrc"));
    let got: f64 = even.iter().chain(&odd).map(|&v| v as f64).sum();
    let want: f64 = data.iter().map(|&v| v as f64).sum();
    assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
    // With a refinement pass (every frame against all the others, then re-centred on frame 0): same tolerance.
    let opts = SplitOptions {
        align: Some(AlignParams {
            refine_passes: 1,
            ..AlignParams::default()
        }),
        ..SplitOptions::default()
    };
    let r = split_movie(&movie, &t.path().join("refined"), &opts).unwrap();
    let shifts = r.shifts.unwrap();
    assert_eq!(shifts[0], [0.0, 0.0]);
    for (s, d) in shifts.iter().zip(&truth) {
        assert!(
            (s[0] - d[0]).abs() < 0.1 && (s[1] - d[1]).abs() < 0.1,
            "refined {shifts:?}, true {truth:?}"
        );
    }
}

#[test]
fn thinning_a_single_micrograph() {
    let t = tempfile::tempdir().unwrap();
    let (w, h) = (64, 48);
    let img: Vec<f32> = counts(w, h, 1, 4).iter().map(|v| v * 4.0).collect();
    let movie = t.path().join("mic.mrc");
    write_movie(&movie, &img, w, h, 1.0);
    let opts = SplitOptions {
        thin: true,
        seed: 3,
        ..SplitOptions::default()
    };
    split_movie(&movie, t.path(), &opts).unwrap();
    let (a, _) = read(&t.path().join("even/mic.mrc"));
    let (b, _) = read(&t.path().join("odd/mic.mrc"));
    let ab: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(ab, img);
    // Same seed → same halves.
    let t2 = tempfile::tempdir().unwrap();
    split_movie(&movie, t2.path(), &opts).unwrap();
    assert_eq!(read(&t2.path().join("even/mic.mrc")).0, a);
    // A movie with frames is refused by --thin.
    let m2 = t.path().join("two.mrcs");
    write_movie(&m2, &counts(w, h, 2, 5), w, h, 1.0);
    let out = t.path().join("o3");
    let msg = split_movie(&m2, &out, &opts).unwrap_err().to_string();
    assert!(msg.contains("2 frames") && msg.contains("--thin"), "{msg}");
    // Fractional values (gain-normalised or dose-weighted) are refused.
    let frac = t.path().join("frac.mrc");
    let mut f = img.clone();
    f[5] = 2.5;
    cryoden_io::write(&frac, &f, [w, h, 1], &WriteOptions::default()).unwrap();
    let msg = split_movie(&frac, &out, &opts).unwrap_err().to_string();
    assert!(
        msg.contains("x=5, y=0") && msg.contains("not a whole count"),
        "{msg}"
    );
    assert!(files_under(&out).is_empty());
}

#[test]
fn one_frame_movie_is_refused_without_output() {
    let t = tempfile::tempdir().unwrap();
    let movie = t.path().join("single.mrc");
    write_movie(&movie, &counts(8, 8, 1, 6), 8, 8, 1.0);
    let out = t.path().join("out");
    let msg = split_movie(&movie, &out, &SplitOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("single.mrc") && msg.contains("1 frame(s)") && msg.contains("--thin"),
        "{msg}"
    );
    assert!(files_under(&out).is_empty());
}

#[test]
fn nan_frame_is_refused_without_output() {
    let t = tempfile::tempdir().unwrap();
    let data = counts(8, 8, 4, 7);
    let movie = t.path().join("nan.mrcs");
    cryoden_io::write(&movie, &data, [8, 8, 4], &WriteOptions::default()).unwrap();
    // cryoden-io refuses to write NaN, so poke one into frame 2 (mode 2, no extended header).
    let mut bytes = std::fs::read(&movie).unwrap();
    let at = 1024 + 4 * (64 * 2 + 9);
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&movie, bytes).unwrap();
    let out = t.path().join("out");
    let msg = split_movie(&movie, &out, &SplitOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("nan.mrcs") && msg.to_lowercase().contains("nan"),
        "{msg}"
    );
    assert!(files_under(&out).is_empty());
}

#[test]
fn inputs_expand_from_directories_and_globs_and_refuse_duplicate_names() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("movies");
    std::fs::create_dir_all(&d).unwrap();
    for n in ["b.mrcs", "a.tif", "notes.txt"] {
        std::fs::write(d.join(n), b"x").unwrap();
    }
    let v = expand_inputs(std::slice::from_ref(&d)).unwrap();
    assert_eq!(v, vec![d.join("a.tif"), d.join("b.mrcs")]);
    let pat = PathBuf::from(format!("{}/*.mrcs", d.display()));
    assert_eq!(expand_inputs(&[pat]).unwrap(), vec![d.join("b.mrcs")]);
    std::fs::write(d.join("a.mrcs"), b"x").unwrap();
    let msg = expand_inputs(&[d]).unwrap_err().to_string();
    assert!(msg.contains("same name \"a\""), "{msg}");
}
