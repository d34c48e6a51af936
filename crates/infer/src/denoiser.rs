//! A loaded model that denoises whole images of any size through fixed-size, batched tiles.
//!
//! Memory: besides the caller's input and output images there is only a fixed workspace, set by tile, context
//! and batch: the network's forward-only buffers on the backend and three host batches. Padding and
//! normalisation are applied while cutting each window, and the output's scratch space holds the statistics'
//! work, so no other whole-image copy is made.

use crate::receptive::{alignment, default_context};
use crate::tiling::{plan_axis, reflect_index, Segment};
use crate::Error;
use cryoden_nn::{checkpoint, Activations, Arch, Backend, Model};
use cryoden_prep::normalize::{center_spread, Method};
use rayon::prelude::*;
use std::path::Path;
use std::time::Instant;

/// Tiling and batching settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Options {
    /// Core tile side in pixels (rounded up to the model's alignment).
    pub tile: usize,
    /// Context around each tile; `None` = the model's receptive radius rounded up to its alignment.
    pub context: Option<usize>,
    /// Tiles per forward pass.
    pub batch: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tile: 1024,
            context: None,
            batch: 1,
        }
    }
}

/// How the input is normalised before the network and restored after it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// The training dataset's method (from the checkpoint metadata; Topaz models use `zscore`, its
    /// standardisation).
    pub method: Method,
    /// True when the checkpoint named the method, false when `zscore` was assumed.
    pub from_checkpoint: bool,
}

/// A model with its weights on a backend, ready to denoise images.
pub struct Denoiser<B: Backend> {
    be: B,
    model: Model,
    params: B::Buf,
    norm: Normalization,
    label: String,
    opts: Options,
    context: usize,
    /// Forward-only buffers for (batch, window height, window width): fixed by tile, context and batch.
    acts: Option<(usize, usize, usize, Activations<B>)>,
    /// Host batches of the same shape: two inputs (double-buffered) and one output.
    host: [Vec<f32>; 3],
    profile: Profile,
}

impl<B: Backend> Denoiser<B> {
    /// Loads a cryoden weights file (`*.safetensors` written by `cryoden train`).
    pub fn load(be: B, path: &Path, opts: Options) -> Result<Denoiser<B>, Error> {
        let w = checkpoint::load_weights(path, None)?;
        let norm = match w.meta.get("normalize").and_then(|v| v.as_str()) {
            Some(s) => Normalization {
                method: s.parse().map_err(|e: String| Error::Checkpoint {
                    path: path.to_path_buf(),
                    problem: format!("metadata field normalize: {e}"),
                })?,
                from_checkpoint: true,
            },
            None => Normalization {
                method: Method::Zscore,
                from_checkpoint: false,
            },
        };
        let label = format!("{} ({})", path.display(), w.model.arch().describe());
        Denoiser::new(be, w.model, &w.params, norm, label, opts)
    }

    /// A denoiser from parameters in memory (flat, the model's internal layout).
    pub fn new(
        be: B,
        model: Model,
        params: &[f32],
        norm: Normalization,
        label: String,
        opts: Options,
    ) -> Result<Denoiser<B>, Error> {
        if opts.batch == 0 || opts.tile == 0 {
            return Err(Error::Usage("--tile and --batch must be at least 1".into()));
        }
        let mut buf = be.alloc(params.len())?;
        be.upload(params, &mut buf, 0)?;
        let context = opts
            .context
            .unwrap_or_else(|| default_context(model.arch()));
        Ok(Denoiser {
            be,
            model,
            params: buf,
            norm,
            label,
            opts,
            context,
            acts: None,
            host: [Vec::new(), Vec::new(), Vec::new()],
            profile: Profile::default(),
        })
    }

    pub fn arch(&self) -> &Arch {
        self.model.arch()
    }
    /// Checkpoint path and architecture, for labels and reports.
    pub fn label(&self) -> &str {
        &self.label
    }
    pub fn normalization(&self) -> Normalization {
        self.norm
    }
    /// The context actually used (pixels on each side of a tile, a multiple of the alignment).
    pub fn context(&self) -> usize {
        self.context.div_ceil(alignment(self.arch())) * alignment(self.arch())
    }
    pub fn options(&self) -> Options {
        self.opts
    }
    pub fn backend(&self) -> &B {
        &self.be
    }

    /// Denoises a row-major `nx × ny` image: normalise as in training, run the network tile by tile, undo the
    /// normalisation (output in the input's units).
    pub fn denoise(&mut self, img: &[f32], nx: usize, ny: usize) -> Result<Vec<f32>, Error> {
        let mut out = vec![0.0f32; img.len()];
        self.denoise_into(img, nx, ny, &mut out)?;
        Ok(out)
    }

    /// [`Denoiser::denoise`] into `out` (`nx · ny` values). The only whole-image memory is `img` and `out`:
    /// `out` doubles as the scratch space of the normalisation statistics before the tiles overwrite it.
    pub fn denoise_into(
        &mut self,
        img: &[f32],
        nx: usize,
        ny: usize,
        out: &mut [f32],
    ) -> Result<(), Error> {
        check_len(img.len(), nx, ny)?;
        check_len(out.len(), nx, ny)?;
        out.copy_from_slice(img);
        let stats = stats_in_place(out, self.norm.method)?;
        self.denoise_with_stats(img, nx, ny, stats, out)
    }

    /// [`Denoiser::denoise_into`] with the normalisation statistics already known (from [`image_stats`] of the
    /// same image, e.g. computed on a reader thread while the network works on the previous image).
    pub fn denoise_with_stats(
        &mut self,
        img: &[f32],
        nx: usize,
        ny: usize,
        stats: Stats,
        out: &mut [f32],
    ) -> Result<(), Error> {
        check_len(img.len(), nx, ny)?;
        check_len(out.len(), nx, ny)?;
        self.run_tiles(img, nx, ny, Some(stats), out)
    }

    /// The network on an already-normalised image, tiled; output in network units.
    pub fn denoise_normalized(
        &mut self,
        img: &[f32],
        nx: usize,
        ny: usize,
    ) -> Result<Vec<f32>, Error> {
        check_len(img.len(), nx, ny)?;
        let mut out = vec![0.0f32; img.len()];
        self.run_tiles(img, nx, ny, None, &mut out)?;
        Ok(out)
    }

    /// Seconds per phase since the last call (and resets them).
    pub fn take_profile(&mut self) -> Profile {
        std::mem::take(&mut self.profile)
    }

    /// Bytes of the network's buffers on the backend (fixed by tile, context and batch; 0 before the first image).
    pub fn workspace_bytes(&self) -> usize {
        self.acts
            .as_ref()
            .map_or(0, |(_, _, _, a)| a.bytes(&self.be))
    }

    /// Tiles of `src` (reflect-padded to the model's alignment and normalised by `stats` on the fly, so neither a
    /// padded nor a normalised copy of the image exists) through the network in batches; the cores go to `out`
    /// with the normalisation undone. While the device computes batch k, the host cuts batch k+1 and then places
    /// batch k−1's output (on the CPU backend the same steps simply run in turn).
    fn run_tiles(
        &mut self,
        src: &[f32],
        nx: usize,
        ny: usize,
        stats: Option<Stats>,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let align = alignment(self.arch());
        if nx < align || ny < align {
            return Err(Error::TooSmall {
                nx,
                ny,
                min: align,
                arch: self.arch().describe(),
            });
        }
        let (px, py) = (nx.div_ceil(align) * align, ny.div_ceil(align) * align);
        let ctx = self.context();
        let (ax, ay) = (
            plan_axis(px, self.opts.tile, ctx, align),
            plan_axis(py, self.opts.tile, ctx, align),
        );
        let (wx, wy) = (ax.len, ay.len);
        let windows: Vec<(Segment, Segment)> = ay
            .segments
            .iter()
            .flat_map(|sy| ax.segments.iter().map(move |sx| (*sx, *sy)))
            .collect();
        let n = self.opts.batch.min(windows.len());
        if !matches!(&self.acts, Some((a, b, c, _)) if (*a, *b, *c) == (n, wy, wx)) {
            self.acts = None; // free the old buffers before allocating new ones
            self.host = [Vec::new(), Vec::new(), Vec::new()];
            let acts = self.model.inference_activations(&self.be, n, wy, wx)?;
            self.acts = Some((n, wy, wx, acts));
            // Two input batches (one is cut while the other is on the device) and one output batch.
            self.host = [
                vec![0.0f32; n * wx * wy],
                vec![0.0f32; n * wx * wy],
                vec![0.0f32; n * wx * wy],
            ];
        }
        let Some((_, _, _, acts)) = self.acts.as_mut() else {
            unreachable!("allocated just above")
        };
        let [in_a, in_b, output] = &mut self.host;
        let (mut cur, mut next) = (in_a, in_b);
        let src = Source {
            img: src,
            nx,
            ny,
            stats,
        };
        let prof = &mut self.profile;
        let chunks: Vec<&[(Segment, Segment)]> = windows.chunks(n).collect();
        let t = Instant::now();
        src.cut(chunks[0], wx, wy, cur);
        prof.extract_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        // A short last batch keeps the allocated shape; the unused slots hold the previous tiles.
        acts.upload_input(&self.be, cur)?;
        prof.upload_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        self.model.forward(&self.be, &self.params, acts)?;
        prof.forward_s += t.elapsed().as_secs_f64();
        for k in 0..chunks.len() {
            if let Some(c) = chunks.get(k + 1) {
                let t = Instant::now();
                src.cut(c, wx, wy, next);
                prof.extract_s += t.elapsed().as_secs_f64();
            }
            let t = Instant::now();
            acts.download_output(&self.be, output)?;
            prof.download_s += t.elapsed().as_secs_f64();
            if k + 1 < chunks.len() {
                let t = Instant::now();
                acts.upload_input(&self.be, next)?;
                prof.upload_s += t.elapsed().as_secs_f64();
                let t = Instant::now();
                self.model.forward(&self.be, &self.params, acts)?;
                prof.forward_s += t.elapsed().as_secs_f64();
                std::mem::swap(&mut cur, &mut next);
            }
            let t = Instant::now();
            place(chunks[k], wx, wy, output, nx, ny, stats, out);
            prof.place_s += t.elapsed().as_secs_f64();
        }
        prof.images += 1;
        prof.tiles += windows.len();
        Ok(())
    }
}

/// Centre and spread of an image (the training normalisation: `(v − centre) / spread`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Stats {
    pub center: f64,
    pub spread: f64,
}

/// The normalisation statistics of `img` by `method` (uses a scratch copy of the image).
pub fn image_stats(img: &[f32], method: Method) -> Result<Stats, Error> {
    let mut scratch = img.to_vec();
    stats_in_place(&mut scratch, method)
}

fn stats_in_place(scratch: &mut [f32], method: Method) -> Result<Stats, Error> {
    let (center, spread) =
        center_spread(scratch, method).map_err(|e| Error::Normalize(format!("{e:?}")))?;
    Ok(Stats { center, spread })
}

fn check_len(len: usize, nx: usize, ny: usize) -> Result<(), Error> {
    if len != nx * ny {
        return Err(Error::Usage(format!("{len} values for a {nx}×{ny} image")));
    }
    Ok(())
}

/// Seconds per phase of [`Denoiser`] on the calling thread, summed since the last [`Denoiser::take_profile`].
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Profile {
    pub images: usize,
    pub tiles: usize,
    /// Cutting windows out of the image (reflect padding and normalisation on the fly) into a batch.
    pub extract_s: f64,
    /// Host → device copies of input batches.
    pub upload_s: f64,
    /// The forward pass as seen by the host (all of it on the CPU; the launches only on a GPU).
    pub forward_s: f64,
    /// Copying output batches back; on a GPU this includes waiting for the compute not hidden by host work.
    pub download_s: f64,
    /// Writing tile cores into the output (normalisation undone).
    pub place_s: f64,
}

/// An image as the network sees it: reflect-padded to the alignment, normalised by `stats` (if any).
struct Source<'a> {
    img: &'a [f32],
    nx: usize,
    ny: usize,
    stats: Option<Stats>,
}

impl Source<'_> {
    /// Fills the first `windows.len()` slots of `batch` (each `wx × wy`) with the windows, rows in parallel.
    fn cut(&self, windows: &[(Segment, Segment)], wx: usize, wy: usize, batch: &mut [f32]) {
        let (img, nx, ny) = (self.img, self.nx, self.ny);
        let stats = self.stats;
        batch[..windows.len() * wx * wy]
            .par_chunks_mut(wx)
            .enumerate()
            .for_each(|(r, dst)| {
                let (sx, sy) = windows[r / wy];
                let row = reflect_index(sy.win + r % wy, ny) * nx;
                let row = &img[row..row + nx];
                // Inside the image: one contiguous run; beyond its right edge: mirrored columns.
                let inside = nx.saturating_sub(sx.win).min(wx);
                dst[..inside].copy_from_slice(&row[sx.win..sx.win + inside]);
                for (i, d) in dst.iter_mut().enumerate().skip(inside) {
                    *d = row[reflect_index(sx.win + i, nx)];
                }
                if let Some(s) = stats {
                    // The same f64 arithmetic as normalising the whole image first.
                    for d in dst.iter_mut() {
                        *d = ((*d as f64 - s.center) / s.spread) as f32;
                    }
                }
            });
    }
}

/// Writes the cores of the `windows`' outputs (`batch`, each `wx × wy`) into `out` (`nx × ny`, the unpadded
/// image), undoing the normalisation.
#[allow(clippy::too_many_arguments)]
fn place(
    windows: &[(Segment, Segment)],
    wx: usize,
    wy: usize,
    batch: &[f32],
    nx: usize,
    ny: usize,
    stats: Option<Stats>,
    out: &mut [f32],
) {
    for (b, (sx, sy)) in windows.iter().enumerate() {
        let tile = &batch[b * wx * wy..(b + 1) * wx * wy];
        // Keep the core, cropped to the unpadded image.
        let (y0, y1) = (sy.core, (sy.core + sy.core_len).min(ny));
        let (x0, x1) = (sx.core, (sx.core + sx.core_len).min(nx));
        if y1 <= y0 || x1 <= x0 {
            continue;
        }
        out[y0 * nx..y1 * nx]
            .par_chunks_mut(nx)
            .enumerate()
            .for_each(|(dy, orow)| {
                let j = y0 + dy - sy.win;
                let trow = &tile[j * wx + (x0 - sx.win)..j * wx + (x1 - sx.win)];
                let orow = &mut orow[x0..x1];
                match stats {
                    Some(s) => {
                        for (o, &v) in orow.iter_mut().zip(trow) {
                            *o = (v as f64 * s.spread + s.center) as f32;
                        }
                    }
                    None => orow.copy_from_slice(trow),
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiling::pad_reflect;
    use cryoden_nn::cpu::Cpu;
    use rand::{Rng, SeedableRng};

    fn denoiser(method: Method, tile: usize, batch: usize) -> Denoiser<Cpu> {
        let model = Model::new(Arch::Unet {
            widths: vec![4, 8, 8],
        })
        .unwrap();
        let params = model.init_params(5);
        let norm = Normalization {
            method,
            from_checkpoint: true,
        };
        let opts = Options {
            tile,
            context: None,
            batch,
        };
        Denoiser::new(Cpu::new(1).unwrap(), model, &params, norm, "t".into(), opts).unwrap()
    }

    /// Padding and normalisation applied while cutting windows give exactly (bit for bit) what the earlier
    /// implementation computed: normalise the whole image, pad it, tile it, crop, un-normalise.
    #[test]
    fn on_the_fly_padding_and_normalisation_are_exact() {
        let (nx, ny) = (150, 118); // not multiples of the alignment (4)
        let (px, py) = (152, 120);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let img: Vec<f32> = (0..nx * ny)
            .map(|_| rng.random::<f32>() * 40.0 + 7.0)
            .collect();
        for method in [Method::Zscore, Method::P95] {
            for (tile, batch) in [(48, 3), (1024, 1)] {
                let mut d = denoiser(method, tile, batch);
                let got = d.denoise(&img, nx, ny).unwrap();
                let s = image_stats(&img, method).unwrap();
                let norm: Vec<f32> = img
                    .iter()
                    .map(|&v| ((v as f64 - s.center) / s.spread) as f32)
                    .collect();
                let padded = pad_reflect(&norm, nx, ny, px, py);
                let net = d.denoise_normalized(&padded, px, py).unwrap();
                for y in 0..ny {
                    for x in 0..nx {
                        let want = (net[y * px + x] as f64 * s.spread + s.center) as f32;
                        assert_eq!(
                            got[y * nx + x].to_bits(),
                            want.to_bits(),
                            "{method:?} tile {tile} batch {batch} at ({x}, {y})"
                        );
                    }
                }
                let p = d.take_profile();
                assert_eq!(p.images, 2);
            }
        }
    }
}
