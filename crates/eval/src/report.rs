//! `report.html` and its PNG figures, made from an [`Evaluation`]. The HTML is one self-contained page (inline
//! CSS, no scripts) that references the figures beside it; every number in it is also in the `--json` output.

use crate::evaluate::{Evaluation, FirstLayer, Sample};
use crate::plot::{histogram, image_panels, line_plot, tile_grid, LinePlot, Panel, Series, Zoom};
use crate::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A figure file and its caption.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figure {
    pub file: String,
    pub title: String,
    pub caption: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The zoom: the 256-pixel square (on a 128-pixel grid) where the truth, or else the input, varies most (where
/// the particles are).
fn pick_zoom(s: &Sample) -> Option<Zoom> {
    let img = s.truth.as_deref().unwrap_or(&s.input);
    let size = 256.min(s.nx).min(s.ny);
    if size < 32 {
        return None;
    }
    let mut best = (f64::NEG_INFINITY, 0, 0);
    let step = (size / 2).max(1);
    let mut y = 0;
    while y + size <= s.ny {
        let mut x = 0;
        while x + size <= s.nx {
            let (mut m, mut m2, mut n) = (0.0f64, 0.0f64, 0.0f64);
            for j in (y..y + size).step_by(2) {
                for &v in img[j * s.nx + x..j * s.nx + x + size].iter().step_by(2) {
                    m += v as f64;
                    m2 += (v as f64) * (v as f64);
                    n += 1.0;
                }
            }
            let var = m2 / n - (m / n).powi(2);
            if var > best.0 {
                best = (var, x, y);
            }
            x += step;
        }
        y += step;
    }
    Some(Zoom {
        x: best.1,
        y: best.2,
        size,
    })
}

/// First-layer activation maps: `act(conv(x, w) + b)` of the first model on a `crop`-pixel window of the
/// sample, normalised to zero mean and unit variance (the scale the network sees, up to its normalisation).
fn activation_maps(
    f: &FirstLayer,
    s: &Sample,
    z: Zoom,
    crop: usize,
) -> Vec<(Vec<f32>, usize, usize)> {
    let c = crop.min(z.size);
    let (x0, y0) = (z.x + (z.size - c) / 2, z.y + (z.size - c) / 2);
    let mut x: Vec<f32> = (0..c * c)
        .map(|i| s.input[(y0 + i / c) * s.nx + x0 + i % c])
        .collect();
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    let sd = (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64)
        .sqrt()
        .max(1e-12);
    x.iter_mut()
        .for_each(|v| *v = ((*v as f64 - mean) / sd) as f32);
    let (k, r) = (f.k, (f.k / 2) as isize);
    let channels = f.cout.min(16);
    (0..channels)
        .map(|o| {
            let mut out = vec![0.0f32; c * c];
            for j in 0..c as isize {
                for i in 0..c as isize {
                    let mut acc = f.bias[o];
                    for dy in 0..k as isize {
                        let yy = j + dy - r;
                        if yy < 0 || yy >= c as isize {
                            continue;
                        }
                        for dx in 0..k as isize {
                            let xx = i + dx - r;
                            if xx < 0 || xx >= c as isize {
                                continue;
                            }
                            // Weight [o, 0, dy, dx]: the first layer has one input channel.
                            acc += f.weight[(o * f.cin * k + dy as usize) * k + dx as usize]
                                * x[yy as usize * c + xx as usize];
                        }
                    }
                    out[j as usize * c + i as usize] = if acc > 0.0 {
                        acc
                    } else if f.activation == "relu" {
                        0.0
                    } else {
                        0.1 * acc
                    };
                }
            }
            (out, c, c)
        })
        .collect()
}

fn freq_axis(px: f64) -> (String, f64) {
    if px > 0.0 {
        ("spatial frequency (1/Å)".into(), 1.0 / px)
    } else {
        ("spatial frequency (cycles/pixel)".into(), 1.0)
    }
}

/// Writes the figures, `evaluation.json` (every number, as `--json` prints it) and `report.html` into `dir`
/// (created if missing); returns the report's path.
pub fn write_report(ev: &Evaluation, dir: &Path) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut figs: Vec<Figure> = Vec::new();
    let mut save =
        |c: crate::plot::Canvas, file: &str, title: &str, caption: String| -> Result<(), Error> {
            c.save(&dir.join(file))?;
            figs.push(Figure {
                file: file.into(),
                title: title.into(),
                caption,
            });
            Ok(())
        };
    let names: Vec<String> = ev.methods.iter().map(|m| m.name.clone()).collect();
    let (fx_label, fscale) = freq_axis(ev.pixel_size);

    if let Some(s) = &ev.sample {
        let zoom = pick_zoom(s);
        let mut panels = vec![Panel {
            label: "input".into(),
            data: &s.input,
            nx: s.nx,
            ny: s.ny,
            diverging: false,
        }];
        for (k, out) in s.outputs.iter().enumerate().skip(1) {
            panels.push(Panel {
                label: names[k].clone(),
                data: out,
                nx: s.nx,
                ny: s.ny,
                diverging: false,
            });
        }
        if let Some(t) = &s.truth {
            panels.push(Panel {
                label: "truth".into(),
                data: t,
                nx: s.nx,
                ny: s.ny,
                diverging: false,
            });
        }
        save(
            image_panels(&panels, zoom)?,
            "panels.png",
            "Input, outputs and truth",
            format!(
                "Micrograph {}: each panel with its own 0.5–99.5 % contrast; the yellow square is enlarged below.",
                esc(&s.name)
            ),
        )?;
        if let Some(t) = &s.truth {
            let diffs: Vec<Vec<f32>> = s
                .outputs
                .iter()
                .map(|o| o.iter().zip(t).map(|(a, b)| a - b).collect())
                .collect();
            let dp: Vec<Panel> = diffs
                .iter()
                .enumerate()
                .map(|(k, d)| Panel {
                    label: format!("{} − truth", names[k]),
                    data: d,
                    nx: s.nx,
                    ny: s.ny,
                    diverging: true,
                })
                .collect();
            save(
                image_panels(&dp, zoom)?,
                "differences.png",
                "Difference maps",
                "Each output after the affine fit to the truth, minus the truth: red above, blue below, one shared \
                 symmetric scale. Structure left in a map is signal the method lost or invented."
                    .into(),
            )?;
        }
        for (i, f) in s.first_layers.iter().enumerate() {
            let tiles: Vec<(Vec<f32>, usize, usize)> = (0..f.cout)
                .map(|o| {
                    (
                        f.weight[o * f.cin * f.k * f.k..(o * f.cin + 1) * f.k * f.k].to_vec(),
                        f.k,
                        f.k,
                    )
                })
                .collect();
            let cols = (tiles.len() as f64).sqrt().ceil() as usize;
            save(
                tile_grid(
                    &format!("{}: first-layer filters ({}×{})", f.model, f.k, f.k),
                    &tiles,
                    cols,
                    48,
                )?,
                &format!("filters_{i}.png"),
                "First-layer filters",
                format!(
                    "The {} filters of the first convolution of {}, each with its own contrast.",
                    f.cout,
                    esc(&f.model)
                ),
            )?;
            if let Some(z) = zoom {
                let maps = activation_maps(f, s, z, 128);
                save(
                    tile_grid(&format!("{}: first-layer activations", f.model), &maps, 4, 128)?,
                    &format!("activations_{i}.png"),
                    "First-layer activation maps",
                    format!(
                        "The first {} channels after the first convolution and its {}, on the central 128 px of the \
                         zoomed region (input standardised).",
                        maps.len(),
                        f.activation
                    ),
                )?;
            }
        }
    }
    if let Some(t) = &ev.truth {
        let per = |f: fn(&crate::metrics::TruthScores) -> f64| -> Vec<(String, Vec<f64>)> {
            names
                .iter()
                .cloned()
                .zip(t.scores.iter().map(|v| v.iter().map(f).collect()))
                .collect()
        };
        save(
            histogram("PSNR per image", "PSNR (dB)", &per(|s| s.psnr), 640, 360)?,
            "hist_psnr.png",
            "PSNR per image",
            "After the affine fit to the truth.".into(),
        )?;
        save(
            histogram("SSIM per image", "SSIM", &per(|s| s.ssim), 640, 360)?,
            "hist_ssim.png",
            "SSIM per image",
            "After the affine fit to the truth.".into(),
        )?;
        let series = |curves: &Vec<Vec<f64>>, freq: &Vec<f64>| -> Vec<Series> {
            curves
                .iter()
                .zip(&names)
                .map(|(c, n)| Series {
                    label: n.clone(),
                    points: freq
                        .iter()
                        .zip(c)
                        .skip(1)
                        .map(|(f, v)| (f * fscale, *v))
                        .collect(),
                    dashed: false,
                })
                .collect()
        };
        let mut ps = series(&t.power, &t.power_freq);
        ps.push(Series {
            label: "truth".into(),
            points: t
                .power_freq
                .iter()
                .zip(&t.power_truth)
                .skip(1)
                .map(|(f, v)| (f * fscale, *v))
                .collect(),
            dashed: true,
        });
        save(
            line_plot(&LinePlot { title: "Radially averaged power spectra".into(), x_label: fx_label.clone(), y_label: "power (truth units²)".into(), series: ps, log_y: true, log_x: false, hline: None }, 760, 440)?,
            "power_spectra.png",
            "Power spectra",
            "Mean over images, each output after its affine fit to the truth; the truth dotted. Power above the \
             truth's at high frequency is noise left in; below it, signal removed."
                .into(),
        )?;
        save(
            line_plot(
                &LinePlot {
                    title: "FRC with the truth".into(),
                    x_label: fx_label.clone(),
                    y_label: "FRC".into(),
                    series: series(&t.frc_to_truth, &t.frc_freq),
                    log_y: false,
                    log_x: false,
                    hline: Some((1.0 / 7.0, "1/7".into())),
                },
                760,
                440,
            )?,
            "frc_truth.png",
            "FRC with the truth",
            "Fourier ring correlation of each output with the truth, mean over images.".into(),
        )?;
    }
    if let Some(h) = &ev.halves {
        let series: Vec<Series> = h
            .frc
            .iter()
            .zip(&names)
            .map(|(c, n)| Series {
                label: n.clone(),
                points: h
                    .frc_freq
                    .iter()
                    .zip(c)
                    .skip(1)
                    .map(|(f, v)| (f * fscale, *v))
                    .collect(),
                dashed: false,
            })
            .collect();
        save(
            line_plot(&LinePlot { title: "FRC of f(A) and f(B)".into(), x_label: fx_label.clone(), y_label: "FRC".into(), series, log_y: false, log_x: false, hline: Some((1.0 / 7.0, "1/7".into())) }, 760, 440)?,
            "frc_halves.png",
            "FRC of the denoised half sets",
            "Each method applied to both independent half sets; mean curve over images. A linear isotropic filter \
             scales both spectra equally within a ring, so it leaves this FRC unchanged (the baselines' curves \
             equal the raw input's where they keep power); where a filter leaves almost no power, the curve shows \
             float rounding, not signal."
                .into(),
        )?;
        let per: Vec<(String, Vec<f64>)> = names
            .iter()
            .cloned()
            .zip(h.n2n_error.iter().cloned())
            .collect();
        save(
            histogram(
                "Held-out Noise2Noise error per image",
                "MSE(f(A), B)",
                &per,
                640,
                360,
            )?,
            "hist_n2n.png",
            "N2N error per image",
            "Lower is better.".into(),
        )?;
    }
    for (i, l) in ev.loss_curves.iter().enumerate() {
        let mut series = vec![Series {
            label: "training (step)".into(),
            points: l.steps.clone(),
            dashed: true,
        }];
        series.push(Series {
            label: "training (epoch mean)".into(),
            points: l
                .epochs
                .iter()
                .filter_map(|e| e.1.map(|v| (e.0, v)))
                .collect(),
            dashed: false,
        });
        series.push(Series {
            label: "validation".into(),
            points: l
                .epochs
                .iter()
                .filter_map(|e| e.2.map(|v| (e.0, v)))
                .collect(),
            dashed: false,
        });
        save(
            line_plot(
                &LinePlot {
                    title: format!("{}: loss", l.model),
                    x_label: "step".into(),
                    y_label: "loss".into(),
                    series,
                    log_y: true,
                    log_x: false,
                    hline: None,
                },
                760,
                400,
            )?,
            &format!("loss_{i}.png"),
            "Training curves",
            format!("From {}.", esc(&l.file.display().to_string())),
        )?;
    }
    for t in &ev.tuning {
        let series = vec![Series {
            label: t.best.label(),
            points: t.tried.clone(),
            dashed: false,
        }];
        let (what, y) = match t.criterion {
            crate::Criterion::PsnrToTruth => ("mean PSNR", "PSNR (dB)"),
            crate::Criterion::N2nError => ("mean N2N error", "MSE(f(A), B)"),
        };
        let (x, file) = match t.kind {
            crate::BaselineKind::GaussianBlur => ("σ (pixels)", "tuning_gaussian.png"),
            _ => ("cutoff (cycles/pixel)", "tuning_lowpass.png"),
        };
        save(
            line_plot(
                &LinePlot {
                    title: format!("Tuning: {what} vs parameter"),
                    x_label: x.into(),
                    y_label: y.into(),
                    series,
                    log_y: false,
                    log_x: true,
                    hline: None,
                },
                560,
                340,
            )?,
            file,
            "Baseline tuning",
            format!(
                "{} images, central {} px crops; the best value is used.",
                t.images, t.crop
            ),
        )?;
    }
    let json = serde_json::to_string_pretty(ev)
        .map_err(|e| Error::Invalid(format!("serialising the evaluation: {e}")))?;
    crate::write_file_atomic(&dir.join("evaluation.json"), json.as_bytes())?;
    let html = render_html(ev, &figs);
    let path = dir.join("report.html");
    crate::write_file_atomic(&path, html.as_bytes())?;
    Ok(path)
}

fn fmt_res(r: Option<f64>, px: f64) -> String {
    match r {
        Some(v) if px > 0.0 => format!("{v:.1} Å"),
        Some(v) => format!("{v:.2} px"),
        None if px > 0.0 => format!("≤ {:.2} Å (Nyquist)", 2.0 * px),
        None => "≤ 2 px (Nyquist)".into(),
    }
}

fn render_html(ev: &Evaluation, figs: &[Figure]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cryoden evaluation</title>\n<style>\
         body{{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}\
         th{{background:#f2f2f2}}td:first-child,th:first-child,td:nth-child(2){{text-align:left}}.best{{font-weight:bold;background:#e8f4ea}}\
         figure{{display:inline-block;margin:1em 1em 1em 0;vertical-align:top}}figcaption{{max-width:760px;font-size:90%;color:#555}}\
         img{{max-width:100%;border:1px solid #ddd}}code{{background:#f5f5f5;padding:1px 4px}}</style></head><body>\n\
         <h1>cryoden evaluation</h1>\n<p>cryoden {} · pixel size {} · baselines tuned on {}</p>\n",
        esc(&ev.cryoden_version),
        if ev.pixel_size > 0.0 { format!("{:.3} Å", ev.pixel_size) } else { "unknown".into() },
        if ev.tuned_on == "separate" { "separate tuning data" } else { "the evaluated images themselves (favours the baselines)" }
    );
    h.push_str("<h2>Metrics</h2>\n<table><tr><th>method</th><th>details</th>");
    if ev.truth.is_some() {
        h.push_str("<th>PSNR (dB)</th><th>SSIM</th>");
    }
    if ev.halves.is_some() {
        h.push_str("<th>N2N error MSE(f(A),B)</th><th>FRC(f(A),f(B)) at 1/7</th>");
    }
    h.push_str("<th>time (s)</th></tr>\n");
    let best_of = |v: &[f64], higher: bool| -> Option<usize> {
        (0..v.len()).filter(|&i| v[i].is_finite()).reduce(|a, b| {
            if (v[b] > v[a]) == higher && v[b] != v[a] {
                b
            } else {
                a
            }
        })
    };
    let bp = ev.truth.as_ref().and_then(|t| best_of(&t.mean_psnr, true));
    let bs = ev.truth.as_ref().and_then(|t| best_of(&t.mean_ssim, true));
    let bn = ev
        .halves
        .as_ref()
        .and_then(|t| best_of(&t.mean_n2n_error, false));
    for (k, m) in ev.methods.iter().enumerate() {
        let details = match (&m.checkpoint, &m.arch) {
            (Some(c), Some(a)) => format!(
                "{} · <code>{}</code> · context {} px",
                esc(a),
                esc(&c.display().to_string()),
                m.context.unwrap_or(0)
            ),
            _ => m.kind.clone(),
        };
        let _ = write!(h, "<tr><td>{}</td><td>{}</td>", esc(&m.name), details);
        let cls = |b: Option<usize>| if b == Some(k) { " class=\"best\"" } else { "" };
        if let Some(t) = &ev.truth {
            let _ = write!(
                h,
                "<td{}>{:.2}</td><td{}>{:.4}</td>",
                cls(bp),
                t.mean_psnr[k],
                cls(bs),
                t.mean_ssim[k]
            );
        }
        if let Some(hv) = &ev.halves {
            let _ = write!(
                h,
                "<td{}>{:.5}</td><td>{}</td>",
                cls(bn),
                hv.mean_n2n_error[k],
                fmt_res(hv.mean_frc_resolution[k], ev.pixel_size)
            );
        }
        let _ = writeln!(h, "<td>{:.1}</td></tr>", m.seconds);
    }
    h.push_str("</table>\n");
    if let Some(t) = &ev.truth {
        let _ = writeln!(
            h,
            "<p>PSNR and SSIM are means over {} images, computed after fitting, per image and method, the \
             least-squares affine map (scale, offset) from the output to the truth: denoisers output arbitrary \
             scale and offset (a Noise2Noise network learns the target half's units), and the fit removes that \
             before scoring. Data range = max − min of the truth. SSIM: Gaussian window 11 px, σ 1.5, K1 0.01, \
             K2 0.03 (scikit-image's <code>structural_similarity</code> with <code>gaussian_weights=True</code>).</p>",
            t.images.len()
        );
    }
    if let Some(hv) = &ev.halves {
        let _ = writeln!(
            h,
            "<p>Without a truth: the held-out Noise2Noise error MSE(f(A), B) over {} half-set pairs equals the \
             error to the (unknown) truth plus the noise variance of B, so it ranks methods as the true error \
             would. The FRC of f(A) and f(B) is read at the 1/7 threshold (images mean-subtracted, edges tapered).</p>",
            hv.images.len()
        );
    }
    h.push_str("<h3>Baselines</h3><ul>");
    for t in &ev.tuning {
        let _ = write!(
            h,
            "<li>{}: tried {} values by {} on {} images; best {}</li>",
            esc(&t.best.label()),
            t.tried.len(),
            match t.criterion {
                crate::Criterion::PsnrToTruth => "mean PSNR against the truth",
                crate::Criterion::N2nError => "mean N2N error",
            },
            t.images,
            t.best.param
        );
    }
    h.push_str("</ul>\n");
    if let Some(t) = &ev.truth {
        h.push_str("<h3>Per image</h3><table><tr><th>image</th>");
        for n in &ev.methods {
            let _ = write!(h, "<th>{} PSNR / SSIM</th>", esc(&n.name));
        }
        h.push_str("</tr>");
        for (i, img) in t.images.iter().enumerate() {
            let _ = write!(h, "<tr><td>{}</td>", esc(img));
            for s in &t.scores {
                let _ = write!(h, "<td>{:.2} / {:.4}</td>", s[i].psnr, s[i].ssim);
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>\n");
    }
    let mut last = String::new();
    for f in figs {
        if f.title != last {
            let _ = writeln!(h, "<h2>{}</h2>", esc(&f.title));
            last = f.title.clone();
        }
        let _ = writeln!(
            h,
            "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
            esc(&f.file),
            esc(&f.title),
            f.caption
        );
    }
    h.push_str("<p>Every number on this page is in the <code>--json</code> output of <code>cryoden evaluate</code>.</p></body></html>\n");
    h
}
