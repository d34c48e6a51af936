//! A loaded model that denoises whole images of any size through fixed-size, batched tiles.

use crate::receptive::{alignment, default_context};
use crate::tiling::{pad_reflect, plan_axis, Segment};
use crate::Error;
use cryoden_nn::{checkpoint, Activations, Arch, Backend, Model};
use cryoden_prep::normalize::{center_spread, Method};
use std::path::Path;

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
    acts: Option<(usize, usize, usize, Activations<B>)>,
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
        if img.len() != nx * ny {
            return Err(Error::Usage(format!(
                "{} values for a {nx}×{ny} image",
                img.len()
            )));
        }
        let mut scratch = img.to_vec();
        let (center, spread) = center_spread(&mut scratch, self.norm.method)
            .map_err(|e| Error::Normalize(format!("{e:?}")))?;
        for (s, &v) in scratch.iter_mut().zip(img) {
            *s = ((v as f64 - center) / spread) as f32;
        }
        let mut out = self.denoise_normalized(&scratch, nx, ny)?;
        for v in out.iter_mut() {
            *v = (*v as f64 * spread + center) as f32;
        }
        Ok(out)
    }

    /// The network on an already-normalised image, tiled; output in network units.
    pub fn denoise_normalized(
        &mut self,
        img: &[f32],
        nx: usize,
        ny: usize,
    ) -> Result<Vec<f32>, Error> {
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
        let padded;
        let src: &[f32] = if (px, py) == (nx, ny) {
            img
        } else {
            padded = pad_reflect(img, nx, ny, px, py);
            &padded
        };
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
            self.acts = Some((n, wy, wx, self.model.activations(&self.be, n, wy, wx)?));
        }
        let Some((_, _, _, acts)) = self.acts.as_mut() else {
            unreachable!("allocated just above")
        };
        let mut input = vec![0.0f32; n * wx * wy];
        let mut output = vec![0.0f32; n * wx * wy];
        let mut result = vec![0.0f32; nx * ny];
        for chunk in windows.chunks(n) {
            for (b, (sx, sy)) in chunk.iter().enumerate() {
                let dst = &mut input[b * wx * wy..(b + 1) * wx * wy];
                for j in 0..wy {
                    let row = (sy.win + j) * px + sx.win;
                    dst[j * wx..(j + 1) * wx].copy_from_slice(&src[row..row + wx]);
                }
            }
            // A short last batch keeps the allocated shape; the unused slots hold the previous tiles.
            acts.upload_input(&self.be, &input)?;
            self.model.forward(&self.be, &self.params, acts)?;
            acts.download_output(&self.be, &mut output)?;
            for (b, (sx, sy)) in chunk.iter().enumerate() {
                let tile = &output[b * wx * wy..(b + 1) * wx * wy];
                // Keep the core, cropped to the unpadded image.
                for y in sy.core..(sy.core + sy.core_len).min(ny) {
                    let j = y - sy.win;
                    let x0 = sx.core;
                    let x1 = (sx.core + sx.core_len).min(nx);
                    if x1 > x0 {
                        result[y * nx + x0..y * nx + x1]
                            .copy_from_slice(&tile[j * wx + (x0 - sx.win)..j * wx + (x1 - sx.win)]);
                    }
                }
            }
        }
        Ok(result)
    }
}
