//! A loaded model that denoises whole images of any size through fixed-size, batched tiles.
//!
//! Memory: besides the caller's input and output images there is only a fixed workspace, set by tile, context
//! and batch: the network's forward-only buffers on the backend and two host batches. Padding and
//! normalisation are applied while cutting each window (or, on a backend that maps on the device, during the
//! transfers), and the output's scratch space holds the statistics' work, so no other whole-image copy is made.
//! An image in the backend's transfer memory that one window covers is not even cut: the device reads it and
//! writes the result in place ([`Pixels`]).

use crate::receptive::{alignment, default_context};
use crate::tiling::{plan_axis, reflect_index, Segment};
use crate::Error;
use cryoden_nn::{checkpoint, Activations, Arch, Backend, HostBuf, Model};
use cryoden_prep::normalize::{center_spread, Method};
use rayon::prelude::*;
use std::collections::VecDeque;
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
    /// Host batches: the input being cut and the output being placed (page-locked on a GPU, see
    /// `Backend::alloc_host`; grown on demand).
    host: [Option<HostBuf>; 2],
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
            host: [None, None],
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
        let method = self.norm.method;
        if method == Method::P95 {
            out.copy_from_slice(img);
        }
        let stats = stats_using(img, method, out)?;
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

    /// One image through [`Denoiser::run_stream`] (its windows planned, counted as they are cut and placed); a
    /// bad image becomes a work with no windows and its error, reported when its turn comes.
    fn plan<I, O, T>(&self, item: Item<I, O, T>) -> Work<I, O, T>
    where
        I: Pixels,
        O: PixelsMut,
    {
        let mut item = item;
        let (nx, ny) = (item.nx, item.ny);
        let align = alignment(self.arch());
        let (len_in, len_out) = (item.input.as_ref().len(), item.out.as_mut().len());
        let problem = if len_in != nx * ny {
            Some(Error::Usage(format!(
                "{len_in} values for a {nx}×{ny} image"
            )))
        } else if len_out != nx * ny {
            Some(Error::Usage(format!(
                "an output of {len_out} values for a {nx}×{ny} image"
            )))
        } else if nx < align || ny < align {
            Some(Error::TooSmall {
                nx,
                ny,
                min: align,
                arch: self.arch().describe(),
            })
        } else {
            None
        };
        if let Some(e) = problem {
            return Work {
                item,
                windows: Vec::new(),
                wx: 0,
                wy: 0,
                n: 0,
                cut: 0,
                placed: 0,
                direct: false,
                error: Some(e),
            };
        }
        let (px, py) = (nx.div_ceil(align) * align, ny.div_ceil(align) * align);
        let ctx = self.context();
        let (ax, ay) = (
            plan_axis(px, self.opts.tile, ctx, align),
            plan_axis(py, self.opts.tile, ctx, align),
        );
        let windows: Vec<(Segment, Segment)> = ay
            .segments
            .iter()
            .flat_map(|sy| ax.segments.iter().map(move |sx| (*sx, *sy)))
            .collect();
        // One window that is the image itself (no padding, its core all of it), in and out of transfer memory:
        // the device reads the input and writes the output there, and the host copies nothing.
        let whole = |s: &Segment, len: usize, n: usize| {
            len == n && s.win == 0 && s.core == 0 && s.core_len >= n
        };
        let direct = windows.len() == 1
            && whole(&windows[0].0, ax.len, nx)
            && whole(&windows[0].1, ay.len, ny)
            && item.input.host_buf().is_some_and(|h| h.len() >= nx * ny)
            && item.out.host_buf_mut().is_some_and(|h| h.len() >= nx * ny);
        Work {
            n: self.opts.batch.min(windows.len()),
            wx: ax.len,
            wy: ay.len,
            windows,
            cut: 0,
            placed: 0,
            direct,
            item,
            error: None,
        }
    }

    /// Denoises a stream of images: `source` is asked for the next image when the device needs more work, `sink`
    /// gets each result, in the order of `source`, with the phase times so far. Windows of one image (reflect-padded to the
    /// model's alignment and normalised on the fly, so neither a padded nor a normalised copy exists) go through
    /// the network in batches; the cores go to the image's output with the normalisation undone.
    ///
    /// Host work is overlapped with the device across batches AND images: while the device computes batch k, the
    /// host cuts batch k+1 (possibly the next image's first), then places batch k's output while the device
    /// computes k+1. On the CPU backend the same steps simply run in turn. A failing image is passed to `sink` as
    /// an error and the stream goes on.
    pub fn run_stream<I, O, T>(
        &mut self,
        mut source: impl FnMut() -> Option<Item<I, O, T>>,
        mut sink: impl FnMut(T, Result<O, Error>, &Profile),
    ) where
        I: Pixels,
        O: PixelsMut,
    {
        let mut works: VecDeque<Work<I, O, T>> = VecDeque::new();
        // Where the normalisation is done: on the device during the transfers when the backend does it there (the
        // host then only copies windows), else while cutting and placing.
        let on_device = self.be.maps_on_device();
        // The batch on the device: its image (a position in `works`) and its windows.
        let mut in_flight: Option<(usize, std::ops::Range<usize>)> = None;
        loop {
            // 1. Cut the next batch while the device computes the one in flight.
            let next = loop {
                if let Some(i) = works.iter().position(|w| w.cut < w.windows.len()) {
                    let w = &mut works[i];
                    let r = w.cut..(w.cut + w.n).min(w.windows.len());
                    w.cut = r.end;
                    if w.direct {
                        break Some((i, r));
                    }
                    let t = Instant::now();
                    let len = w.n * w.wx * w.wy;
                    let host = match host_batch(&self.be, &mut self.host[0], len) {
                        Ok(h) => h,
                        Err(e) => {
                            // No host memory for this image's batches: it fails, the stream goes on.
                            w.cut = w.windows.len();
                            w.placed = w.windows.len();
                            w.error = Some(e);
                            continue;
                        }
                    };
                    Source {
                        img: w.item.input.as_ref(),
                        nx: w.item.nx,
                        ny: w.item.ny,
                        // A backend that normalises during the upload gets the raw pixels.
                        stats: w.item.stats.filter(|_| !on_device),
                    }
                    .cut(&w.windows[r.clone()], w.wx, w.wy, host);
                    self.profile.extract_s += t.elapsed().as_secs_f64();
                    break Some((i, r));
                }
                match source() {
                    None => break None,
                    Some(item) => works.push_back(self.plan(item)),
                }
            };
            if next.is_none() && in_flight.is_none() {
                // Only images that failed before reaching the device can be left.
                for w in works.drain(..) {
                    let e = w.error.expect("every planned window was placed");
                    sink(w.item.tag, Err(e), &self.profile);
                }
                break;
            }
            // 2. Wait for the batch in flight; 3. start the next one; 4. place the finished one.
            let step = self.device_step(&mut works, in_flight.as_ref(), next.as_ref());
            if let Err(e) = step {
                // A device failure fails every image that has a window in flight or cut.
                let msg = e.to_string();
                for w in works.drain(..) {
                    sink(w.item.tag, Err(Error::Usage(msg.clone())), &self.profile);
                }
                in_flight = None;
                continue;
            }
            if let Some((i, r)) = in_flight.take() {
                let t = Instant::now();
                let w = &mut works[i];
                // A direct image's output is already in place, restored by the transfer.
                if !w.direct {
                    let out = self.host[1]
                        .as_ref()
                        .expect("a placed batch was downloaded");
                    place(
                        &w.windows[r.clone()],
                        w.wx,
                        w.wy,
                        out,
                        w.item.nx,
                        w.item.ny,
                        w.item.stats.filter(|_| !on_device),
                        w.item.out.as_mut(),
                    );
                }
                w.placed += r.len();
                self.profile.place_s += t.elapsed().as_secs_f64();
            }
            // Hand back, in order, every image at the front that is done (or failed before the device).
            let mut retired = 0;
            while works.front().is_some_and(|w| w.placed == w.windows.len()) {
                let w = works.pop_front().expect("checked");
                retired += 1;
                match w.error {
                    Some(e) => sink(w.item.tag, Err(e), &self.profile),
                    None => {
                        self.profile.images += 1;
                        self.profile.direct += w.direct as usize;
                        self.profile.tiles += w.windows.len();
                        sink(w.item.tag, Ok(w.item.out), &self.profile);
                    }
                }
            }
            // Positions in `works` moved down by the images retired (the next batch belongs to a later one).
            in_flight = next.map(|(j, r)| (j - retired, r));
        }
    }

    /// Starts the batch just cut (host buffer 0) and collects the one in flight (into host buffer 1), in the order
    /// that keeps the device busy: upload the next input (on a GPU the copy overlaps the forward pass in flight),
    /// start copying the finished output out, queue the next forward pass, then wait for the output. Only when the
    /// next batch needs buffers of another shape is the batch in flight collected first.
    fn device_step<I: Pixels, O: PixelsMut, T>(
        &mut self,
        works: &mut VecDeque<Work<I, O, T>>,
        in_flight: Option<&(usize, std::ops::Range<usize>)>,
        next: Option<&(usize, std::ops::Range<usize>)>,
    ) -> Result<(), Error> {
        let mut collect = in_flight.is_some();
        if let Some((i, _)) = next {
            let w = &works[*i];
            let (n, wy, wx) = (w.n, w.wy, w.wx);
            let norm = self.transfer_norm(w);
            if !matches!(&self.acts, Some((a, b, c, _)) if (*a, *b, *c) == (n, wy, wx)) {
                if collect {
                    self.start_download(works, in_flight)?;
                    self.finish_download()?;
                    collect = false;
                }
                self.acts = None; // free the old buffers before allocating new ones
                let acts = self.model.inference_activations(&self.be, n, wy, wx)?;
                self.acts = Some((n, wy, wx, acts));
            }
            let Some((_, _, _, acts)) = self.acts.as_mut() else {
                unreachable!("allocated just above")
            };
            let t = Instant::now();
            // A short last batch keeps the allocated shape; the unused slots hold earlier windows.
            let w = &works[*i];
            let host = match w.item.input.host_buf().filter(|_| w.direct) {
                Some(image) => image,
                None => self.host[0].as_ref().expect("a batch was cut"),
            };
            acts.upload_input_host(&self.be, host, norm)?;
            self.profile.upload_s += t.elapsed().as_secs_f64();
            if collect {
                self.start_download(works, in_flight)?;
            }
            let Some((_, _, _, acts)) = self.acts.as_mut() else {
                unreachable!("allocated just above")
            };
            let t = Instant::now();
            // As one step: a GPU backend captures the pass once per shape and replays it (no per-op launches).
            let (be, model, params) = (&self.be, &self.model, &self.params);
            be.run_step(&mut || model.forward(be, params, acts))?;
            self.profile.forward_s += t.elapsed().as_secs_f64();
        } else if collect {
            self.start_download(works, in_flight)?;
        }
        if collect {
            self.finish_download()?;
        }
        Ok(())
    }

    /// The normalisation the transfers of `w`'s batches apply: all of it for a direct image (the host never
    /// touches its pixels), else its statistics where the backend maps on the device (cut and place then copy).
    fn transfer_norm<I, O, T>(&self, w: &Work<I, O, T>) -> Option<Stats> {
        w.item
            .stats
            .filter(|_| w.direct || self.be.maps_on_device())
    }

    /// Queues the copy of the output of the batch in flight into host buffer 1 (a direct image: into its output).
    fn start_download<I, O: PixelsMut, T>(
        &mut self,
        works: &mut VecDeque<Work<I, O, T>>,
        in_flight: Option<&(usize, std::ops::Range<usize>)>,
    ) -> Result<(), Error> {
        let Some((i, _)) = in_flight else {
            return Ok(());
        };
        let t = Instant::now();
        let norm = self.transfer_norm(&works[*i]);
        let w = &mut works[*i];
        if !w.direct {
            host_batch(&self.be, &mut self.host[1], w.n * w.wx * w.wy)?;
        }
        let Some((_, _, _, acts)) = self.acts.as_ref() else {
            unreachable!("a batch in flight has buffers")
        };
        let host = match w.item.out.host_buf_mut().filter(|_| w.direct) {
            Some(image) => image,
            None => self.host[1].as_mut().expect("allocated just above"),
        };
        acts.download_output_host(&self.be, host, norm)?;
        self.profile.download_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Waits for the output's copy (on a GPU: for the forward pass that was in flight, then the copy).
    fn finish_download(&mut self) -> Result<(), Error> {
        let t = Instant::now();
        self.be.wait_host()?;
        self.profile.download_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// One image, borrowed: see [`Denoiser::run_stream`].
    fn run_tiles(
        &mut self,
        src: &[f32],
        nx: usize,
        ny: usize,
        stats: Option<Stats>,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let mut item = Some(Item {
            input: src,
            nx,
            ny,
            stats,
            out,
            tag: (),
        });
        let mut result = Ok(());
        self.run_stream(|| item.take(), |_, r, _| result = r.map(|_| ()));
        result
    }
}

/// An image for [`Denoiser::run_stream`].
pub struct Item<I, O, T> {
    /// Row-major `nx × ny` pixels.
    pub input: I,
    pub nx: usize,
    pub ny: usize,
    /// The normalisation to apply on the way in and undo on the way out; `None` = already normalised.
    pub stats: Option<Stats>,
    /// Where the `nx × ny` result goes (every pixel is written).
    pub out: O,
    /// The caller's label, handed back with the result.
    pub tag: T,
}

/// An image's pixels for [`Denoiser::run_stream`]. When they are in memory from the backend's
/// [`Backend::host_allocator`] and one window covers the image, the device reads them from there (no host copy).
pub trait Pixels: AsRef<[f32]> {
    /// The pixels as transfer memory (its first `nx · ny` values are the image), if they are.
    fn host_buf(&self) -> Option<&HostBuf> {
        None
    }
}

/// Where [`Denoiser::run_stream`] writes an image's result; see [`Pixels`].
pub trait PixelsMut: AsMut<[f32]> {
    /// The output as transfer memory (its first `nx · ny` values are the image), if it is.
    fn host_buf_mut(&mut self) -> Option<&mut HostBuf> {
        None
    }
}

impl Pixels for &[f32] {}
impl Pixels for Vec<f32> {}
impl PixelsMut for &mut [f32] {}
impl PixelsMut for Vec<f32> {}

impl Pixels for HostBuf {
    fn host_buf(&self) -> Option<&HostBuf> {
        Some(self)
    }
}

impl PixelsMut for HostBuf {
    fn host_buf_mut(&mut self) -> Option<&mut HostBuf> {
        Some(self)
    }
}

/// An image in [`Denoiser::run_stream`]: its windows and how many are cut and placed.
struct Work<I, O, T> {
    item: Item<I, O, T>,
    windows: Vec<(Segment, Segment)>,
    /// Window size and batch.
    wx: usize,
    wy: usize,
    n: usize,
    cut: usize,
    placed: usize,
    /// One window that is the whole image, with input and output in transfer memory: no cut, no place.
    direct: bool,
    /// Why the image cannot be denoised (it has no windows then).
    error: Option<Error>,
}

/// Centre and spread of an image (the training normalisation: `(v − centre) / spread`).
pub type Stats = cryoden_nn::ImageNorm;

/// The normalisation statistics of `img` by `method` (uses a scratch copy of the image).
pub fn image_stats(img: &[f32], method: Method) -> Result<Stats, Error> {
    image_stats_with(img, method, &mut Vec::new())
}

/// [`image_stats`] with a caller's scratch buffer, reused across images: a fresh image-sized allocation costs a
/// page fault per 4 KiB on first touch (~16 k faults for a 4096² image), more than the copy itself. `zscore` only
/// reads the image and needs no scratch.
pub fn image_stats_with(
    img: &[f32],
    method: Method,
    scratch: &mut Vec<f32>,
) -> Result<Stats, Error> {
    if method == Method::P95 {
        scratch.clear();
        scratch.extend_from_slice(img);
    }
    stats_using(img, method, scratch)
}

/// The statistics of `img`; `p95` reorders `scratch`, which must hold a copy of `img` for it.
fn stats_using(img: &[f32], method: Method, scratch: &mut [f32]) -> Result<Stats, Error> {
    let (center, spread) = match method {
        Method::Zscore => cryoden_prep::normalize::zscore(img),
        Method::P95 => center_spread(scratch, method),
    }
    .map_err(|e| Error::Normalize(format!("{e:?}")))?;
    Ok(Stats { center, spread })
}

fn check_len(len: usize, nx: usize, ny: usize) -> Result<(), Error> {
    if len != nx * ny {
        return Err(Error::Usage(format!("{len} values for a {nx}×{ny} image")));
    }
    Ok(())
}

/// Seconds per phase of [`Denoiser`] on the calling thread, summed since the last [`Denoiser::take_profile`].
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
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
    /// Images that went to the device and back without a host copy (one window, transfer memory: see [`Pixels`]).
    pub direct: usize,
}

impl Profile {
    /// The phase times accumulated since `earlier` (an earlier snapshot of the same counters).
    pub fn since(&self, earlier: &Profile) -> Profile {
        Profile {
            images: self.images - earlier.images,
            tiles: self.tiles - earlier.tiles,
            extract_s: self.extract_s - earlier.extract_s,
            upload_s: self.upload_s - earlier.upload_s,
            forward_s: self.forward_s - earlier.forward_s,
            download_s: self.download_s - earlier.download_s,
            place_s: self.place_s - earlier.place_s,
            direct: self.direct - earlier.direct,
        }
    }
    fn add(&mut self, o: &Profile) {
        self.images += o.images;
        self.tiles += o.tiles;
        self.extract_s += o.extract_s;
        self.upload_s += o.upload_s;
        self.forward_s += o.forward_s;
        self.download_s += o.download_s;
        self.place_s += o.place_s;
        self.direct += o.direct;
    }
}

/// Sums per-file profiles (e.g. the steady-state files of a benchmark).
pub fn sum_profiles<'a>(ps: impl IntoIterator<Item = &'a Profile>) -> Profile {
    let mut t = Profile::default();
    ps.into_iter().for_each(|p| t.add(p));
    t
}

/// Host batch memory of at least `len` floats in `slot`, allocated by the backend (page-locked on a GPU) and
/// reallocated only to grow; returns the first `len` floats.
fn host_batch<'a, B: Backend>(
    be: &B,
    slot: &'a mut Option<HostBuf>,
    len: usize,
) -> Result<&'a mut [f32], Error> {
    if slot.as_ref().is_none_or(|h| h.len() < len) {
        *slot = None; // free before allocating the larger one
        *slot = Some(be.alloc_host(len)?);
    }
    Ok(&mut slot.as_mut().expect("allocated above")[..len])
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
                    dst.iter_mut().for_each(|d| *d = s.normalize(*d));
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
                            *o = s.restore(v);
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

    /// A stream of images of different sizes (buffers reallocated between them), with a bad one in the middle,
    /// gives each image exactly what denoising it alone gives, in order, and reports the bad one.
    #[test]
    fn a_stream_equals_images_one_by_one() {
        let sizes = [(96, 80), (150, 118), (3, 3), (96, 80)];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let images: Vec<Vec<f32>> = sizes
            .iter()
            .map(|&(nx, ny)| (0..nx * ny).map(|_| rng.random::<f32>()).collect())
            .collect();
        let mut d = denoiser(Method::Zscore, 48, 3);
        let mut queue: VecDeque<Item<&[f32], Vec<f32>, usize>> = images
            .iter()
            .zip(sizes)
            .enumerate()
            .map(|(k, (img, (nx, ny)))| Item {
                input: img.as_slice(),
                nx,
                ny,
                stats: Some(image_stats(img, Method::Zscore).unwrap()),
                out: vec![0.0; nx * ny],
                tag: k,
            })
            .collect();
        let mut got = Vec::new();
        d.run_stream(|| queue.pop_front(), |k, r, _| got.push((k, r)));
        assert_eq!(
            got.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        for (k, r) in got {
            let (nx, ny) = sizes[k];
            if k == 2 {
                assert!(matches!(r, Err(Error::TooSmall { .. })), "image 2: {r:?}");
                continue;
            }
            let alone = denoiser(Method::Zscore, 48, 3)
                .denoise(&images[k], nx, ny)
                .unwrap();
            assert_same_bits(&r.unwrap(), &alone, k);
        }
    }

    fn assert_same_bits(got: &[f32], want: &[f32], k: usize) {
        assert_eq!(got.len(), want.len(), "image {k}");
        assert!(
            got.iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "image {k} differs"
        );
    }

    /// Images in transfer memory that one window covers skip the cut and the place (the transfers normalise and
    /// restore): bit for bit the same results as the copying path, in a stream that mixes both.
    #[test]
    fn direct_images_equal_cut_and_placed_ones() {
        let sizes = [(96, 80), (150, 118), (96, 80)];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let images: Vec<Vec<f32>> = sizes
            .iter()
            .map(|&(nx, ny)| (0..nx * ny).map(|_| 50.0 + rng.random::<f32>()).collect())
            .collect();
        let mut d = denoiser(Method::Zscore, 160, 2);
        let mut queue: VecDeque<Item<HostBuf, HostBuf, usize>> = images
            .iter()
            .zip(sizes)
            .enumerate()
            .map(|(k, (img, (nx, ny)))| {
                let mut input = HostBuf::pageable(nx * ny);
                input.copy_from_slice(img);
                Item {
                    input,
                    nx,
                    ny,
                    stats: Some(image_stats(img, Method::Zscore).unwrap()),
                    out: HostBuf::pageable(nx * ny),
                    tag: k,
                }
            })
            .collect();
        let mut got = Vec::new();
        d.run_stream(|| queue.pop_front(), |k, r, _| got.push((k, r)));
        // 96 × 80 is aligned and inside one 160 window; 150 × 118 is padded to the alignment, so it is cut.
        assert_eq!(d.take_profile().direct, 2);
        for (k, r) in got {
            let (nx, ny) = sizes[k];
            let alone = denoiser(Method::Zscore, 160, 2)
                .denoise(&images[k], nx, ny)
                .unwrap();
            assert_same_bits(&r.unwrap(), &alone, k);
        }
    }
}
