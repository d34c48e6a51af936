//! Denoising a list of files with reading, compute and writing overlapped: reader threads (2 to 4) load the next
//! micrographs and compute their normalisation statistics while the network works on the current one, and a
//! writer thread saves the previous one. The hand-overs are rendezvous channels, so a bounded number of images
//! exists at any time whatever the number of files (inputs: the one finishing on the device, the next one being
//! cut, one ready per reader; outputs: the one being written and the one being made); for one file the peak is
//! its input plus its output. Images live in buffers from the backend's allocator (page-locked on a GPU), reused
//! from file to file (up to `POOL_KEEP` free ones are kept between files): a single-section file that one window
//! covers goes from the reader's buffer to the device and back into the writer's buffer with no host copy (the
//! transfers normalise and restore). A file that cannot be read or written is reported and skipped; the others are
//! still denoised.

use crate::denoiser::{image_stats_with, Denoiser, Profile, Stats};
use crate::denoiser::{Item, Pixels, PixelsMut};
use crate::files::{Format, Job};
use crate::Error;
use cryoden_io::{Mode, WriteOptions};
use cryoden_nn::{Backend, HostAllocator, HostBuf};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Reader threads: each decodes a whole file and computes its statistics (two f64 passes in lanes, ~20 ms per
/// 4096² image on the H200 machine's cores while the pipeline runs), and files are handed on in order. One per
/// four logical CPUs, 2 to 4: enough to keep a GPU fed, each costing one more input image in memory.
fn readers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus / 4).clamp(2, 4)
}

/// Writer threads: writing a 4096² float32 MRC (temporary file, header statistics, rename) takes ~34 ms on a
/// server core, about twice what a GPU needs for the plan's U-Net, so machines with the cores for it write several
/// files at once: one writer per four logical CPUs, 2 to 4 (each holds one more output image). On 2 cores the
/// CPU backend is the bottleneck: one writer.
fn writers(asked: usize) -> usize {
    if asked > 0 {
        return asked;
    }
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    if cpus >= 4 {
        (cpus / 4).clamp(2, 4)
    } else {
        1
    }
}

/// Settings of a batch run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub format: Format,
    /// Leave outputs that already exist (outputs are written atomically, so an existing one is complete).
    pub skip_existing: bool,
    /// The label written into each output MRC header (at most 80 bytes kept).
    pub label: String,
    /// Writer threads; 0 = as many as the machine's cores make worthwhile (see `writers`).
    pub writers: usize,
}

/// What happened to one file.
#[derive(Debug)]
pub enum Status {
    Denoised {
        nx: usize,
        ny: usize,
        nz: usize,
        /// Wall seconds from taking the file off the reader to its last window placed (overlapping the
        /// neighbouring files' compute).
        seconds: f64,
        /// The denoiser's phase times between the previous file's completion and this one's.
        profile: Profile,
        /// When the output was complete on disk (the writer's clock; reports reach `progress` later).
        written: Instant,
    },
    Skipped,
    Failed(String),
}

#[derive(Debug)]
pub struct Outcome {
    pub input: PathBuf,
    pub output: PathBuf,
    pub status: Status,
}

/// Totals of a run.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub denoised: usize,
    pub skipped: usize,
    pub failed: usize,
    pub pixels: u64,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// Busy seconds of each stage, summed over files (the stages run on three threads at once, so these add up
    /// to more than `seconds` when they overlap): reading and decoding, normalisation statistics (reader thread),
    /// the denoiser (compute thread) and writing (writer thread).
    pub read_s: f64,
    pub stats_s: f64,
    pub compute_s: f64,
    pub write_s: f64,
    /// The compute thread's time by phase.
    pub profile: Profile,
}

/// Whole-image buffers from the backend's allocator (page-locked on a GPU), handed out to readers and to the
/// compute thread and returned when a file is done: readers decode into them and the device copies from them;
/// the device copies results into them and writers save from them, so the host never copies pixels in between.
/// Reuse also saves the page-locking (slow) and the page faults of a fresh image-sized allocation per file.
struct HostPool {
    alloc: HostAllocator,
    free: Mutex<Vec<HostBuf>>,
}

/// Free buffers kept for reuse (the pipeline's hand-overs bound how many are in use at once).
const POOL_KEEP: usize = 12;

impl HostPool {
    fn new(alloc: HostAllocator) -> Arc<HostPool> {
        Arc::new(HostPool {
            alloc,
            free: Mutex::new(Vec::new()),
        })
    }

    /// A buffer for `len` values: a free one that fits (not more than a quarter larger), else a new one; where
    /// the backend cannot provide one (e.g. no page-locked memory left), ordinary memory (only slower).
    fn take(self: &Arc<HostPool>, len: usize) -> Pooled {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            free.iter()
                .position(|b| b.len() >= len && b.len() - len <= len / 4)
                .map(|i| free.swap_remove(i))
        };
        let buf =
            reused.unwrap_or_else(|| (self.alloc)(len).unwrap_or_else(|_| HostBuf::pageable(len)));
        Pooled {
            buf: Some(buf),
            len,
            pool: self.clone(),
        }
    }
}

/// `len` values of a pool's buffer, returned to the pool on drop.
struct Pooled {
    buf: Option<HostBuf>,
    len: usize,
    pool: Arc<HostPool>,
}

impl Pooled {
    fn host(&self) -> &HostBuf {
        self.buf.as_ref().expect("held until dropped")
    }
    fn host_mut(&mut self) -> &mut HostBuf {
        self.buf.as_mut().expect("held until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < POOL_KEEP {
                free.push(b);
            }
        }
    }
}

impl AsRef<[f32]> for Pooled {
    fn as_ref(&self) -> &[f32] {
        &self.host()[..self.len]
    }
}

impl AsMut<[f32]> for Pooled {
    fn as_mut(&mut self) -> &mut [f32] {
        let len = self.len;
        &mut self.host_mut()[..len]
    }
}

/// A micrograph read, with the normalisation statistics of each section.
struct Input {
    data: Pooled,
    dims: [usize; 3],
    header: cryoden_io::Header,
    stats: Vec<Stats>,
    read_s: f64,
    stats_s: f64,
}

struct Loaded {
    index: usize,
    input: Result<Input, String>,
}

fn load(
    job: &Job,
    method: cryoden_prep::normalize::Method,
    pool: &Arc<HostPool>,
    scratch: &mut Vec<f32>,
) -> Result<Input, String> {
    let t = Instant::now();
    // The file's mapping is released inside `read_into`: what stays is the decoded f32 image.
    let (header, data) =
        cryoden_io::read_into(&job.input, |n| pool.take(n)).map_err(|e| e.to_string())?;
    let (nx, ny, nz) = (header.nx as usize, header.ny as usize, header.nz as usize);
    if nz == 0 || nx * ny == 0 {
        return Err(format!("no image in the file ({nx}×{ny}×{nz})"));
    }
    let read_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let stats = data
        .as_ref()
        .chunks(nx * ny)
        .map(|sec| image_stats_with(sec, method, scratch).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Input {
        data,
        dims: [nx, ny, nz],
        header,
        stats,
        read_s,
        stats_s: t.elapsed().as_secs_f64(),
    })
}

/// A file's result: one section straight from the device into a pool buffer, or a stack gathered section by
/// section.
enum Output {
    Section(Pooled),
    Stack(Vec<f32>),
}

impl AsRef<[f32]> for Output {
    fn as_ref(&self) -> &[f32] {
        match self {
            Output::Section(p) => p.as_ref(),
            Output::Stack(v) => v,
        }
    }
}

impl AsMut<[f32]> for Output {
    fn as_mut(&mut self) -> &mut [f32] {
        match self {
            Output::Section(p) => p.as_mut(),
            Output::Stack(v) => v,
        }
    }
}

impl PixelsMut for Output {
    fn host_buf_mut(&mut self) -> Option<&mut HostBuf> {
        match self {
            Output::Section(p) => Some(p.host_mut()),
            Output::Stack(_) => None,
        }
    }
}

struct ToWrite {
    index: usize,
    data: Output,
    dims: [usize; 3],
    header: cryoden_io::Header,
    seconds: f64,
    profile: Profile,
}

/// One section of a file read, as the denoiser's input (the file's pixels are shared by its sections).
struct Section {
    data: Rc<Pooled>,
    start: usize,
    len: usize,
}

impl AsRef<[f32]> for Section {
    fn as_ref(&self) -> &[f32] {
        &(*self.data).as_ref()[self.start..self.start + self.len]
    }
}

impl Pixels for Section {
    /// A single-section file's pixels are the whole buffer, which the device may read directly.
    fn host_buf(&self) -> Option<&HostBuf> {
        (self.start == 0 && self.len == self.data.len).then(|| self.data.host())
    }
}

/// A file between its first section handed to the denoiser and its last one done.
struct InProgress {
    dims: [usize; 3],
    header: cryoden_io::Header,
    t0: Instant,
    data: Output,
}

/// The file whose sections are being handed to the denoiser: index, pixels, statistics per section, dims, next
/// section.
type Feeding = (usize, Rc<Pooled>, Vec<Stats>, [usize; 3], usize);

/// What the writer reports: file index, (nx, ny, nz, compute seconds, profile) or the error, write seconds.
type Done = (
    usize,
    Result<(usize, usize, usize, f64, Profile, Instant), String>,
    f64,
);

/// The label naming cryoden, its version and the model, for output headers.
pub fn header_label(model: &str) -> String {
    let mut s = format!(
        "cryoden {} denoise, model {model}",
        env!("CARGO_PKG_VERSION")
    );
    s.truncate(80);
    s
}

fn write_output(job: &Job, w: &ToWrite, opts: &RunOptions) -> Result<(), Error> {
    match opts.format {
        Format::Mrc | Format::Mrc16 => {
            let mut wo = WriteOptions::like(&w.header);
            wo.mode = if opts.format == Format::Mrc16 {
                Mode::Float16
            } else {
                Mode::Float32
            };
            wo.labels.push(opts.label.chars().take(80).collect());
            if wo.labels.len() > 10 {
                wo.labels.drain(..wo.labels.len() - 10);
            }
            cryoden_io::write(&job.output, w.data.as_ref(), w.dims, &wo)?;
        }
        Format::Png => {
            // One PNG per file: the first section of a stack.
            let [nx, ny, _] = w.dims;
            cryoden_io::write_png(
                &job.output,
                &w.data.as_ref()[..nx * ny],
                nx,
                ny,
                cryoden_io::Contrast::default(),
            )?;
        }
    }
    Ok(())
}

/// Denoises every job, calling `progress` on this thread as each file finishes (in order). Returns the totals;
/// failures are in the outcomes and counted in [`Summary::failed`].
pub fn run<B: Backend>(
    denoiser: &mut Denoiser<B>,
    jobs: &[Job],
    opts: &RunOptions,
    mut progress: impl FnMut(&Outcome),
) -> Summary {
    let start = Instant::now();
    let mut summary = Summary::default();
    let todo: Vec<usize> = (0..jobs.len())
        .filter(|&i| !(opts.skip_existing && jobs[i].output.exists()))
        .collect();
    // Rendezvous: each reader holds at most one loaded file while the compute thread works on another; the
    // compute thread waits with its output until a writer is free (see `writers`). The readers take
    // files in turn (decoding and the statistics take longer than a GPU needs for the network); the compute thread
    // takes their files in order.
    let n_readers = readers();
    let (read_txs, read_rxs): (Vec<_>, Vec<_>) = (0..n_readers)
        .map(|_| crossbeam_channel::bounded::<Loaded>(0))
        .unzip();
    let (write_tx, write_rx) = crossbeam_channel::bounded::<ToWrite>(0);
    let method = denoiser.normalization().method;
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let mut report = |o: Outcome, summary: &mut Summary| {
        match &o.status {
            Status::Denoised { nx, ny, nz, .. } => {
                summary.denoised += 1;
                summary.pixels += (nx * ny * nz) as u64;
            }
            Status::Skipped => summary.skipped += 1,
            Status::Failed(_) => summary.failed += 1,
        }
        progress(&o);
    };
    let mut queued = vec![false; jobs.len()];
    todo.iter().for_each(|&i| queued[i] = true);
    for (i, j) in jobs.iter().enumerate() {
        if !queued[i] {
            report(
                Outcome {
                    input: j.input.clone(),
                    output: j.output.clone(),
                    status: Status::Skipped,
                },
                &mut summary,
            );
        }
    }
    // One pool for inputs and outputs: a file's input buffer serves a later file's output.
    let pool = HostPool::new(denoiser.backend().host_allocator());
    std::thread::scope(|s| {
        let todo_r = &todo;
        let pool_r = &pool;
        for (k, read_tx) in read_txs.into_iter().enumerate() {
            s.spawn(move || {
                // The statistics' scratch space, reused (freed when this reader has handed on its last file).
                let mut scratch = Vec::new();
                for &i in todo_r.iter().skip(k).step_by(n_readers) {
                    let input = load(&jobs[i], method, pool_r, &mut scratch);
                    if read_tx.send(Loaded { index: i, input }).is_err() {
                        break;
                    }
                }
            });
        }
        let mut taken = 0usize;
        for _ in 0..writers(opts.writers) {
            let (done_w, write_rx) = (done_tx.clone(), write_rx.clone());
            s.spawn(move || {
                for w in write_rx {
                    let t = Instant::now();
                    let r = write_output(&jobs[w.index], &w, opts).map_err(|e| e.to_string());
                    let _ = done_w.send((
                        w.index,
                        r.map(|_| {
                            let [nx, ny, nz] = w.dims;
                            (nx, ny, nz, w.seconds, w.profile, Instant::now())
                        }),
                        t.elapsed().as_secs_f64(),
                    ));
                }
            });
        }
        drop(write_rx);
        let drain =
            |summary: &mut Summary, report: &mut dyn FnMut(Outcome, &mut Summary), block: bool| {
                let next = || {
                    if block {
                        done_rx.recv().ok()
                    } else {
                        done_rx.try_recv().ok()
                    }
                };
                while let Some((i, r, write_s)) = next() {
                    summary.write_s += write_s;
                    let status = match r {
                        Ok((nx, ny, nz, seconds, profile, written)) => {
                            summary.compute_s += seconds;
                            Status::Denoised {
                                nx,
                                ny,
                                nz,
                                seconds,
                                profile,
                                written,
                            }
                        }
                        Err(e) => Status::Failed(e),
                    };
                    report(
                        Outcome {
                            input: jobs[i].input.clone(),
                            output: jobs[i].output.clone(),
                            status,
                        },
                        summary,
                    );
                }
            };
        // The denoiser pulls sections as it needs them (so the next file's first windows are cut while the
        // device finishes the current one) and hands back each finished section in order.
        let files: RefCell<HashMap<usize, InProgress>> = RefCell::new(HashMap::new());
        let mut current: Option<Feeding> = None;
        let source = || loop {
            if let Some((i, data, stats, [nx, ny, nz], z)) = current.as_mut() {
                if *z < *nz {
                    let k = *z;
                    *z += 1;
                    let n = *nx * *ny;
                    return Some(Item {
                        input: Section {
                            data: data.clone(),
                            start: k * n,
                            len: n,
                        },
                        nx: *nx,
                        ny: *ny,
                        stats: Some(stats[k]),
                        // A single section goes straight into a buffer the writer saves from.
                        out: if *nz == 1 {
                            Output::Section(pool.take(n))
                        } else {
                            Output::Stack(vec![0.0f32; n])
                        },
                        tag: (*i, k),
                    });
                }
                current = None;
            }
            drain(&mut summary, &mut report, false);
            let loaded = read_rxs[taken % n_readers].recv().ok()?;
            taken += 1;
            match loaded.input {
                Ok(inp) => {
                    summary.read_s += inp.read_s;
                    summary.stats_s += inp.stats_s;
                    files.borrow_mut().insert(
                        loaded.index,
                        InProgress {
                            dims: inp.dims,
                            header: inp.header,
                            t0: Instant::now(),
                            data: Output::Stack(Vec::new()),
                        },
                    );
                    current = Some((loaded.index, Rc::new(inp.data), inp.stats, inp.dims, 0));
                }
                Err(e) => {
                    let _ = done_tx.send((loaded.index, Err(e), 0.0));
                }
            }
        };
        let mut last = Profile::default();
        let sink = |(i, z): (usize, usize), r: Result<Output, Error>, p: &Profile| {
            let mut files = files.borrow_mut();
            // A file whose earlier section failed is already reported.
            let Some(f) = files.get_mut(&i) else { return };
            match r {
                Err(e) => {
                    files.remove(&i);
                    let _ = done_tx.send((i, Err(e.to_string()), 0.0));
                }
                Ok(out) => {
                    match &mut f.data {
                        Output::Stack(all) if f.dims[2] > 1 => all.extend_from_slice(out.as_ref()),
                        _ => f.data = out,
                    }
                    if z + 1 == f.dims[2] {
                        let f = files.remove(&i).expect("present above");
                        let profile = p.since(&last);
                        last = *p;
                        // Waits until the writer has finished the previous file (bounded memory).
                        let _ = write_tx.send(ToWrite {
                            index: i,
                            data: f.data,
                            dims: f.dims,
                            header: f.header,
                            seconds: f.t0.elapsed().as_secs_f64(),
                            profile,
                        });
                    }
                }
            }
        };
        denoiser.run_stream(source, sink);
        drop(write_tx);
        drop(done_tx);
        drain(&mut summary, &mut report, true);
    });
    summary.seconds = start.elapsed().as_secs_f64();
    summary.profile = denoiser.take_profile();
    summary
}
