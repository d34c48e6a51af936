//! The report's figures as RGB PNGs: line plots (loss curves, FRC, power spectra, tuning curves), histograms,
//! image panels with a zoomed region, difference maps and tile grids (filters, activation maps).
//!
//! Plots are drawn with `plotters` into an in-memory RGB buffer (its bitmap backend, no system font libraries:
//! text uses an embedded DejaVu Sans through `ab_glyph`) and encoded with `png`; image panels are drawn pixel by
//! pixel and labelled with the same font.

use crate::Error;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans.LICENSE`), embedded so plots need no system fonts.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static FONT_INIT: Once = Once::new();
const FONT_NAME: &str = "sans-serif";

fn init_font() {
    FONT_INIT.call_once(|| {
        // The embedded file is a valid TrueType font, checked by the tests.
        plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("embedded DejaVuSans.ttf failed to parse"));
    });
}

/// Series colours (a colour-blind-friendly palette: Okabe & Ito).
pub const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

/// An RGB image, row-major, 3 bytes per pixel.
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            rgb: vec![255; w * h * 3],
        }
    }

    fn put(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let k = 3 * (y * self.w + x);
            self.rgb[k..k + 3].copy_from_slice(&c);
        }
    }

    fn rect_outline(
        &mut self,
        x0: usize,
        y0: usize,
        x1: usize,
        y1: usize,
        c: [u8; 3],
        thick: usize,
    ) {
        for t in 0..thick {
            for x in x0..=x1 {
                self.put(x, y0 + t, c);
                self.put(x, y1.saturating_sub(t), c);
            }
            for y in y0..=y1 {
                self.put(x0 + t, y, c);
                self.put(x1.saturating_sub(t), y, c);
            }
        }
    }

    /// Draws text with its top-left corner at `(x, y)`.
    fn text(&mut self, s: &str, x: i32, y: i32, size: f64) -> Result<(), Error> {
        init_font();
        let (w, h) = (self.w as u32, self.h as u32);
        let root = BitMapBackend::with_buffer(&mut self.rgb, (w, h)).into_drawing_area();
        root.draw(&Text::new(
            s.to_string(),
            (x, y),
            (FONT_NAME, size).into_font().color(&BLACK),
        ))
        .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
        Ok(())
    }

    /// Encodes as PNG and writes atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Best);
            enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
            let mut wr = enc
                .write_header()
                .map_err(|e| Error::Plot(format!("PNG header: {e}")))?;
            wr.write_image_data(&self.rgb)
                .map_err(|e| Error::Plot(format!("PNG data: {e}")))?;
        }
        crate::write_file_atomic(path, &bytes)
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Plot(format!("{e:?}"))
}

/// One line of a line plot.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed lines are drawn as dots (plotters has no dash style for bitmaps).
    pub dashed: bool,
}

/// A line plot: axes labels, optional logarithmic y, optional horizontal reference line.
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub log_y: bool,
    pub log_x: bool,
    pub hline: Option<(f64, String)>,
}

fn finite_range(vals: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { (0.1, 1.0) } else { (0.0, 1.0) };
    }
    if hi <= lo {
        let d = if log {
            lo * 0.5
        } else {
            lo.abs().max(1.0) * 0.05
        };
        return (lo - d, hi + d);
    }
    if log {
        (lo / 1.2, hi * 1.2)
    } else {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    }
}

/// Tick label: short decimals on linear axes; on logarithmic ones only 1, 2 and 5 × 10ᵏ are labelled (the others
/// stay as unlabelled ticks, so labels never crowd).
fn tick(v: f64, log: bool) -> String {
    if !v.is_finite() {
        return String::new();
    }
    if log {
        let e = v.abs().log10().floor();
        let m = (v / 10f64.powf(e)).round() as i64;
        if ![1, 2, 5].contains(&m) || (v / (m as f64 * 10f64.powf(e)) - 1.0).abs() > 1e-6 {
            return String::new();
        }
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        // Up to 4 significant digits without trailing zeros.
        let s = format!(
            "{v:.*}",
            (3 - a.log10().floor() as i32).clamp(0, 6) as usize
        );
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// Draws a line plot into a `w × h` canvas.
pub fn line_plot(p: &LinePlot, w: usize, h: usize) -> Result<Canvas, Error> {
    init_font();
    let mut c = Canvas::new(w, h);
    let pts = || p.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = finite_range(pts().map(|q| q.0), p.log_x);
    let (mut y0, mut y1) = finite_range(
        pts().map(|q| q.1).chain(p.hline.as_ref().map(|h| h.0)),
        p.log_y,
    );
    if !p.log_y && y0 > 0.0 && y0 < 0.3 * (y1 - y0) {
        y0 = 0.0; // start at zero when it costs little room
    }
    if y1 == y0 {
        y1 = y0 + 1.0;
    }
    {
        let root = BitMapBackend::with_buffer(&mut c.rgb, (w as u32, h as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut b = ChartBuilder::on(&root);
        b.caption(&p.title, (FONT_NAME, 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(70);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                let fx = |v: &f64| tick(*v, p.log_x);
                let fy = |v: &f64| tick(*v, p.log_y);
                chart
                    .configure_mesh()
                    .x_desc(p.x_label.as_str())
                    .y_desc(p.y_label.as_str())
                    .x_label_formatter(&fx)
                    .y_label_formatter(&fy)
                    .label_style((FONT_NAME, 13))
                    .axis_desc_style((FONT_NAME, 14))
                    .light_line_style(WHITE)
                    .draw()
                    .map_err(plot_err)?;
                if let Some((v, label)) = &p.hline {
                    let style = RGBColor(120, 120, 120).stroke_width(1);
                    chart
                        .draw_series(LineSeries::new(vec![(x0, *v), (x1, *v)], style))
                        .map_err(plot_err)?
                        .label(label.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                }
                for (i, s) in p.series.iter().enumerate() {
                    let color = COLORS[i % COLORS.len()];
                    let style = color.stroke_width(2);
                    let pts: Vec<(f64, f64)> = s
                        .points
                        .iter()
                        .copied()
                        .filter(|q| {
                            q.0.is_finite()
                                && q.1.is_finite()
                                && (!p.log_y || q.1 > 0.0)
                                && (!p.log_x || q.0 > 0.0)
                        })
                        .collect();
                    let anno = if s.dashed {
                        chart
                            .draw_series(pts.iter().map(|&q| Circle::new(q, 1, color.filled())))
                            .map_err(plot_err)?
                    } else {
                        chart
                            .draw_series(LineSeries::new(pts, style))
                            .map_err(plot_err)?
                    };
                    anno.label(s.label.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                }
                chart
                    .configure_series_labels()
                    .label_font((FONT_NAME, 13))
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(180, 180, 180))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .map_err(plot_err)?;
            }};
        }
        match (p.log_x, p.log_y) {
            (false, false) => draw!(b.build_cartesian_2d(x0..x1, y0..y1).map_err(plot_err)?),
            (false, true) => draw!(b
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(plot_err)?),
            (true, false) => draw!(b
                .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map_err(plot_err)?),
            (true, true) => {
                draw!(b
                    .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                    .map_err(plot_err)?)
            }
        }
        root.present().map_err(plot_err)?;
    }
    Ok(c)
}

/// Overlaid histograms of one metric per method (outlined bars, shared bins).
pub fn histogram(
    title: &str,
    x_label: &str,
    series: &[(String, Vec<f64>)],
    w: usize,
    h: usize,
) -> Result<Canvas, Error> {
    init_font();
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let (mut lo, mut hi) = finite_range(all.iter().copied(), false);
    if hi - lo < 1e-9 {
        lo -= 0.5;
        hi += 0.5;
    }
    let bins = (all.len() / series.len().max(1)).clamp(5, 30);
    let bw = (hi - lo) / bins as f64;
    let counts: Vec<Vec<usize>> = series
        .iter()
        .map(|s| {
            let mut c = vec![0usize; bins];
            for v in s.1.iter().filter(|v| v.is_finite()) {
                c[(((v - lo) / bw) as usize).min(bins - 1)] += 1;
            }
            c
        })
        .collect();
    let top = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.15;
    let mut c = Canvas::new(w, h);
    {
        let root = BitMapBackend::with_buffer(&mut c.rgb, (w as u32, h as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_NAME, 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi, 0.0..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("images")
            .x_label_formatter(&|v| tick(*v, false))
            .y_label_formatter(&|v| {
                if v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .label_style((FONT_NAME, 13))
            .axis_desc_style((FONT_NAME, 14))
            .light_line_style(WHITE)
            .draw()
            .map_err(plot_err)?;
        let n = series.len().max(1) as f64;
        for (i, (label, _)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            // Side by side within each bin so no series hides another.
            let bars = counts[i]
                .iter()
                .enumerate()
                .filter(|(_, &k)| k > 0)
                .map(move |(b, &k)| {
                    let x0 = lo + bw * (b as f64 + i as f64 / n);
                    Rectangle::new(
                        [(x0, 0.0), (x0 + bw / n, k as f64)],
                        color.mix(0.8).filled(),
                    )
                });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .label_font((FONT_NAME, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(c)
}

/// Gray levels for `v` between `lo` and `hi`.
fn gray(v: f32, lo: f32, hi: f32) -> [u8; 3] {
    let g = if hi > lo {
        ((v - lo) / (hi - lo) * 255.0).round().clamp(0.0, 255.0) as u8
    } else {
        128
    };
    [g, g, g]
}

/// Blue-white-red for `v` in `[−m, m]`.
fn diverging(v: f32, m: f32) -> [u8; 3] {
    let t = if m > 0.0 {
        (v / m).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let a = (255.0 * (1.0 - t.abs())).round() as u8;
    if t >= 0.0 {
        [255, a, a]
    } else {
        [a, a, 255]
    }
}

/// `(lo, hi)` percentiles (0.5 %, 99.5 %) of a subsample of `img`.
pub fn contrast_limits(img: &[f32]) -> (f32, f32) {
    let step = (img.len() / 200_000).max(1);
    let lo = cryoden_io::preview::percentile(
        &img.iter().step_by(step).copied().collect::<Vec<_>>(),
        0.5,
    );
    let hi = cryoden_io::preview::percentile(
        &img.iter().step_by(step).copied().collect::<Vec<_>>(),
        99.5,
    );
    (lo.unwrap_or(0.0), hi.unwrap_or(1.0))
}

/// One image of a panel figure.
pub struct Panel<'a> {
    pub label: String,
    pub data: &'a [f32],
    pub nx: usize,
    pub ny: usize,
    /// Difference maps use a diverging colour map symmetric about 0; other panels are gray.
    pub diverging: bool,
}

/// A zoomed square: its top-left corner and side, in image pixels.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Zoom {
    pub x: usize,
    pub y: usize,
    pub size: usize,
}

const PANEL: usize = 300;
const LABEL_H: usize = 26;

/// Panels side by side: the whole images (area-averaged down to 300 px, the zoom marked in yellow) and below
/// them the zoomed region at 300 px (nearest-neighbour). Gray panels each use their own 0.5–99.5 % limits
/// (denoisers change the scale); diverging panels share one symmetric limit (the 99.5 % of |value|).
pub fn image_panels(panels: &[Panel], zoom: Option<Zoom>) -> Result<Canvas, Error> {
    let cols = panels.len().max(1);
    let rows = if zoom.is_some() { 2 } else { 1 };
    let pad = 8;
    let mut c = Canvas::new(
        cols * (PANEL + pad) + pad,
        rows * (PANEL + LABEL_H + pad) + pad,
    );
    let div_max = {
        let mut m: Vec<f32> = Vec::new();
        for p in panels.iter().filter(|p| p.diverging) {
            let step = (p.data.len() / 200_000).max(1);
            m.extend(p.data.iter().step_by(step).map(|v| v.abs()));
        }
        cryoden_io::preview::percentile(&m, 99.5).unwrap_or(1.0)
    };
    for (i, p) in panels.iter().enumerate() {
        let (lo, hi) = contrast_limits(p.data);
        let color = |v: f32| {
            if p.diverging {
                diverging(v, div_max)
            } else {
                gray(v, lo, hi)
            }
        };
        let x_off = pad + i * (PANEL + pad);
        let y_off = pad + LABEL_H;
        // Whole image, aspect kept, each output pixel the mean of its source block.
        let scale = (p.nx.max(p.ny) as f64 / PANEL as f64).max(1e-9);
        let (ow, oh) = (
            ((p.nx as f64 / scale) as usize).min(PANEL),
            ((p.ny as f64 / scale) as usize).min(PANEL),
        );
        for oy in 0..oh {
            let (sy0, sy1) = (
                (oy as f64 * scale) as usize,
                (((oy + 1) as f64 * scale) as usize).clamp(1, p.ny),
            );
            for ox in 0..ow {
                let (sx0, sx1) = (
                    (ox as f64 * scale) as usize,
                    (((ox + 1) as f64 * scale) as usize).clamp(1, p.nx),
                );
                let (mut s, mut n) = (0.0f32, 0usize);
                for sy in sy0..sy1.max(sy0 + 1).min(p.ny) {
                    for sx in sx0..sx1.max(sx0 + 1).min(p.nx) {
                        s += p.data[sy * p.nx + sx];
                        n += 1;
                    }
                }
                c.put(x_off + ox, y_off + oy, color(s / n.max(1) as f32));
            }
        }
        if let Some(z) = zoom {
            let zx0 = x_off + (z.x as f64 / scale) as usize;
            let zy0 = y_off + (z.y as f64 / scale) as usize;
            let zs = ((z.size as f64 / scale) as usize).max(3);
            c.rect_outline(zx0, zy0, zx0 + zs, zy0 + zs, [255, 200, 0], 2);
            let y2 = y_off + PANEL + pad + LABEL_H;
            for oy in 0..PANEL {
                let sy = (z.y + oy * z.size / PANEL).min(p.ny - 1);
                for ox in 0..PANEL {
                    let sx = (z.x + ox * z.size / PANEL).min(p.nx - 1);
                    c.put(x_off + ox, y2 + oy, color(p.data[sy * p.nx + sx]));
                }
            }
            c.text(
                &format!("zoom {}×{} px", z.size, z.size),
                x_off as i32,
                (y2 - LABEL_H + 4) as i32,
                15.0,
            )?;
        }
        c.text(&p.label, x_off as i32, (pad + 4) as i32, 15.0)?;
    }
    Ok(c)
}

/// Small images in a grid (first-layer filters, activation maps), each with its own contrast, upscaled
/// (nearest) to `tile` pixels, with a title above.
pub fn tile_grid(
    title: &str,
    tiles: &[(Vec<f32>, usize, usize)],
    cols: usize,
    tile: usize,
) -> Result<Canvas, Error> {
    let cols = cols.max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let pad = 4;
    let top = 30;
    let w = (cols * (tile + pad) + pad).max(360);
    let mut c = Canvas::new(w, top + rows * (tile + pad) + pad);
    for (i, (data, nx, ny)) in tiles.iter().enumerate() {
        let (lo, hi) = data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let (x0, y0) = (
            pad + (i % cols) * (tile + pad),
            top + (i / cols) * (tile + pad),
        );
        let s = (*nx).max(*ny);
        for oy in 0..tile {
            for ox in 0..tile {
                let (sx, sy) = (ox * s / tile, oy * s / tile);
                if sx < *nx && sy < *ny {
                    c.put(x0 + ox, y0 + oy, gray(data[sy * nx + sx], lo, hi));
                }
            }
        }
    }
    c.text(title, pad as i32, 6, 16.0)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_render_text_and_lines() {
        let p = LinePlot {
            title: "test".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                label: "a".into(),
                points: (0..50).map(|i| (i as f64, (i as f64).sqrt())).collect(),
                dashed: false,
            }],
            log_y: true,
            log_x: false,
            hline: Some((2.0, "two".into())),
        };
        let c = line_plot(&p, 400, 300).unwrap();
        // Something other than white was drawn: the line (blue) and black text.
        assert!(c.rgb.chunks(3).any(|px| px == [0, 114, 178]));
        assert!(
            c.rgb
                .chunks(3)
                .filter(|px| px[0] < 80 && px[1] < 80 && px[2] < 80)
                .count()
                > 100
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        c.save(&path).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let r = dec.read_info().unwrap();
        assert_eq!((r.info().width, r.info().height), (400, 300));
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick(0.25, false), "0.25");
        assert_eq!(tick(20.5, false), "20.5");
        assert_eq!(tick(3.0e-7, false), "3e-7");
        assert_eq!(tick(2.0, true), "2");
        assert_eq!(tick(3.0, true), "");
        assert_eq!(tick(1.0e-6, true), "1e-6");
    }

    #[test]
    fn panels_and_grids_have_the_expected_size() {
        let img: Vec<f32> = (0..100 * 80).map(|i| (i % 100) as f32).collect();
        let panels = [
            Panel {
                label: "a".into(),
                data: &img,
                nx: 100,
                ny: 80,
                diverging: false,
            },
            Panel {
                label: "b".into(),
                data: &img,
                nx: 100,
                ny: 80,
                diverging: true,
            },
        ];
        let c = image_panels(
            &panels,
            Some(Zoom {
                x: 10,
                y: 10,
                size: 32,
            }),
        )
        .unwrap();
        assert_eq!(c.w, 2 * (PANEL + 8) + 8);
        let g = tile_grid("filters", &vec![(vec![0.0, 1.0, 2.0, 3.0], 2, 2); 5], 4, 20).unwrap();
        assert_eq!(g.h, 30 + 2 * 24 + 4);
        let h = histogram(
            "h",
            "dB",
            &[("a".into(), vec![1.0, 2.0, 2.5]), ("b".into(), vec![3.0])],
            300,
            200,
        )
        .unwrap();
        assert_eq!(h.rgb.len(), 300 * 200 * 3);
    }
}
