//! Compare a simulated micrograph with the real Falcon micrograph epu2.9_example.mrc (4096², 0.667 Å/px, counted,
//! ~41 e⁻/Å²) and write the side-by-side figure docs/figures/sim_vs_real.png:
//! top row real, bottom row simulated; left the image (8×8 binned), right the power spectrum (Welch average of
//! 512² tiles, log scale, DC at the centre).
//!
//! cargo run --release -p cryoden-sim --example realism -- [OUT.png]
//! (needs $CRYODEN_TESTDATA, set by scripts/setup-python.sh; fails when it is missing)

use cryoden_sim::fft::Fft2;
use cryoden_sim::{SimConfig, Simulator, Structure};
use std::time::Instant;

const TILE: usize = 512;

/// Welch power spectrum: mean |FFT|² of non-overlapping TILE² tiles (each minus its mean), DC moved to the centre.
fn power_spectrum(img: &[f32], nx: usize, ny: usize) -> Vec<f64> {
    let fft = Fft2::new(TILE, TILE);
    let mut acc = vec![0f64; TILE * TILE];
    let mut n = 0;
    for ty in 0..ny / TILE {
        for tx in 0..nx / TILE {
            let mut t = vec![0f32; TILE * TILE];
            for y in 0..TILE {
                let src = &img[(ty * TILE + y) * nx + tx * TILE..][..TILE];
                t[y * TILE..(y + 1) * TILE].copy_from_slice(src);
            }
            let m = t.iter().sum::<f32>() / t.len() as f32;
            t.iter_mut().for_each(|v| *v -= m);
            let s = fft.forward(&t);
            for kx in 0..=TILE / 2 {
                for ky in 0..TILE {
                    let p = s.data[kx * TILE + ky].norm_sqr() as f64;
                    // Hermitian: fill (kx, ky) and (−kx, −ky), shifted so DC is at (TILE/2, TILE/2).
                    let (cx, cy) = ((kx + TILE / 2) % TILE, (ky + TILE / 2) % TILE);
                    acc[cy * TILE + cx] += p;
                    let (mx, my) = ((TILE - kx) % TILE, (TILE - ky) % TILE);
                    let (cx2, cy2) = ((mx + TILE / 2) % TILE, (my + TILE / 2) % TILE);
                    if (cx2, cy2) != (cx, cy) && kx != 0 && kx != TILE / 2 {
                        acc[cy2 * TILE + cx2] += p;
                    }
                }
            }
            n += 1;
        }
    }
    acc.iter().map(|v| v / n as f64).collect()
}

fn bin(img: &[f32], nx: usize, ny: usize, f: usize) -> Vec<f32> {
    let (bx, by) = (nx / f, ny / f);
    let mut out = vec![0f32; bx * by];
    for y in 0..by * f {
        for x in 0..bx * f {
            out[(y / f) * bx + x / f] += img[y * nx + x];
        }
    }
    out
}

/// Mean, variance, and the white-noise level: mean power at 0.8–1.0 × Nyquist divided by the tile size, which
/// for pure Poisson noise equals the mean count.
fn stats(img: &[f32], ps: &[f64]) -> (f64, f64, f64) {
    let n = img.len() as f64;
    let mean = img.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = img.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let (mut s, mut c) = (0.0, 0);
    for y in 0..TILE {
        for x in 0..TILE {
            let r = (((x as f64 - (TILE / 2) as f64).powi(2)
                + (y as f64 - (TILE / 2) as f64).powi(2))
            .sqrt())
                / (TILE / 2) as f64;
            if (0.8..1.0).contains(&r) {
                s += ps[y * TILE + x];
                c += 1;
            }
        }
    }
    (mean, var, s / c as f64 / (TILE * TILE) as f64)
}

fn radial(ps: &[f64]) -> Vec<f64> {
    let mut sum = vec![0f64; TILE / 2 + 1];
    let mut cnt = vec![0usize; TILE / 2 + 1];
    for y in 0..TILE {
        for x in 0..TILE {
            let r = (((x as f64 - (TILE / 2) as f64).powi(2)
                + (y as f64 - (TILE / 2) as f64).powi(2))
            .sqrt())
            .round() as usize;
            if r <= TILE / 2 {
                sum[r] += ps[y * TILE + x];
                cnt[r] += 1;
            }
        }
    }
    sum.iter()
        .zip(&cnt)
        .map(|(s, &c)| s / c.max(1) as f64)
        .collect()
}

fn to_u8(v: &[f32]) -> Vec<u8> {
    cryoden_io::preview::to_u8(
        v,
        cryoden_io::Contrast {
            low: 0.5,
            high: 99.5,
        },
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "docs/figures/sim_vs_real.png".into());
    let testdata = std::env::var("CRYODEN_TESTDATA").map_err(|_| {
        "CRYODEN_TESTDATA is not set: run scripts/setup-python.sh and export it (see README)"
    })?;
    let real_path = std::path::Path::new(&testdata).join("mrcfile/epu2.9_example.mrc");
    let real = cryoden_io::read(&real_path)?;
    let (nx, ny) = (real.nx(), real.ny());
    let pixel = real.voxel_size()[0] as f64;
    let fei = cryoden_io::MrcStack::open(&real_path)?
        .fei_sections()
        .and_then(|s| s.first().cloned())
        .ok_or("the real micrograph has no FEI extended header")?;
    eprintln!(
        "real: {} {nx}x{ny}, {pixel:.3} Å/px, {:.2} e/Å², defocus {:.2} µm",
        real_path.display(),
        fei.dose_e_per_a2,
        fei.defocus_um
    );

    // The same geometry, dose and defocus as the real micrograph (from its header), 40 frames summed.
    let df = fei.defocus_um.abs();
    let cfg = SimConfig {
        width: nx,
        height: ny,
        pixel_size: pixel,
        frames: 40,
        dose: fei.dose_e_per_a2,
        defocus_um: [df, df],
        seed: 1,
        ..SimConfig::default()
    };
    let t0 = Instant::now();
    let sim = Simulator::new(cfg.clone(), &Structure::apoferritin())?;
    let mut sum = vec![0f32; nx * ny];
    let (truth, meta) = sim.simulate_streaming(0, |_, counts| {
        sum.iter_mut()
            .zip(counts)
            .for_each(|(s, &c)| *s += c as f32);
        Ok(())
    })?;
    eprintln!(
        "simulated {nx}x{ny}x{} in {:.1} s ({} particles, defocus {:.0}/{:.0} Å at {:.0}°)",
        cfg.frames,
        t0.elapsed().as_secs_f64(),
        meta.particles.len(),
        meta.ctf.defocus_u,
        meta.ctf.defocus_v,
        meta.ctf.astigmatism_angle_deg
    );

    let ps_real = power_spectrum(&real.data[..nx * ny], nx, ny);
    let ps_sim = power_spectrum(&sum, nx, ny);
    for (what, img, ps) in [
        ("real", &real.data[..nx * ny], &ps_real),
        ("simulated", &sum[..], &ps_sim),
    ] {
        let (m, v, w) = stats(img, ps);
        println!(
            "{what:>9}: mean {m:.2} counts/px ({:.1} e/Å²), variance {v:.2} (variance/mean {:.3}), \
             white-noise level at 0.8–1 Nyquist / mean {:.3}",
            m / (pixel * pixel),
            v / m,
            w / m
        );
    }
    // Radial power / mean in electron units (the real file stores counts × a constant: its mean over the dose per
    // pixel recorded in its FEI header). A Poisson image has 1 at every frequency.
    let dose_real = fei.dose_e_per_a2;
    let m_real = real.data[..nx * ny].iter().map(|&v| v as f64).sum::<f64>() / (nx * ny) as f64;
    let scale = m_real / (dose_real * pixel * pixel);
    let m_sim = sum.iter().map(|&v| v as f64).sum::<f64>() / (nx * ny) as f64;
    let (rr, rs) = (radial(&ps_real), radial(&ps_sim));
    println!("real: {dose_real:.2} e/Å² in its header, {scale:.1} units per electron");
    println!("radial power / mean (electron units):  1/Å      real    simulated");
    for k in [3, 10, 20, 40, 80, 128, 192, 255] {
        let q = k as f64 / (TILE as f64 * pixel);
        let norm = (TILE * TILE) as f64;
        println!(
            "                                       {q:.3}   {:7.3}   {:7.3}",
            rr[k] / norm / m_real / scale,
            rs[k] / norm / m_sim
        );
    }
    let tm = truth.iter().map(|&v| v as f64).sum::<f64>() / truth.len() as f64;
    println!(
        "truth mean {tm:.3} e/px; transmission {:.3}",
        meta.transmission
    );
    let dv = sim.potential(&meta);
    let sigma = cryoden_sim::optics::interaction_constant(cfg.voltage_kv * 1e3);
    let (lo, hi) = dv
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    println!(
        "phase beyond the mean ice: σ·Δv from {:.3} to {:.3} rad",
        sigma * lo as f64,
        sigma * hi as f64
    );

    // Thon rings: minima of the radial power spectrum of the simulation vs the CTF zeros at the mean defocus.
    let rad = radial(&ps_sim);
    let mean_ctf = cryoden_sim::Ctf {
        defocus_u: 0.5 * (meta.ctf.defocus_u + meta.ctf.defocus_v),
        defocus_v: 0.5 * (meta.ctf.defocus_u + meta.ctf.defocus_v),
        ..meta.ctf
    };
    let zeros: Vec<f64> = mean_ctf
        .zeros(0.0, 6)
        .iter()
        .map(|q| q * TILE as f64 * pixel)
        .collect();
    print!("CTF zeros (bin of {TILE}) / radial-spectrum minimum nearby:");
    for k in 0..5 {
        let lo = if k == 0 {
            zeros[0] * 0.6
        } else {
            (zeros[k - 1] + zeros[k]) / 2.0
        };
        let hi = (zeros[k] + zeros[k + 1]) / 2.0;
        let am = (lo.ceil() as usize..=hi.floor() as usize)
            .min_by(|&a, &b| rad[a].total_cmp(&rad[b]))
            .unwrap_or(0);
        print!(" {:.1}/{am}", zeros[k]);
    }
    println!();

    // Figure: 2 × 2 panels of 512², grayscale.
    let f = nx / TILE;
    let log = |ps: &[f64]| {
        ps.iter()
            .map(|&v| (v.max(1e-12)).ln() as f32)
            .collect::<Vec<f32>>()
    };
    let panels = [
        to_u8(&bin(&real.data[..nx * ny], nx, ny, f)),
        to_u8(&log(&ps_real)),
        to_u8(&bin(&sum, nx, ny, f)),
        to_u8(&log(&ps_sim)),
    ];
    let (pw, gap) = (TILE, 8);
    let w = 2 * pw + gap;
    let mut pix = vec![255u8; w * w];
    for (i, p) in panels.iter().enumerate() {
        let (ox, oy) = ((i % 2) * (pw + gap), (i / 2) * (pw + gap));
        for y in 0..pw {
            pix[(oy + y) * w + ox..(oy + y) * w + ox + pw]
                .copy_from_slice(&p[y * pw..(y + 1) * pw]);
        }
    }
    let file = std::fs::File::create(&out)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, w as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(&pix)?;
    eprintln!("wrote {out}");
    Ok(())
}
