//! Denoising a list of files with reading, compute and writing overlapped: a reader thread loads the next
//! micrographs while the network works on the current one and a writer thread saves the previous one. Bounded
//! queues (two images each) keep memory fixed however many files there are. A file that cannot be read or
//! written is reported and skipped; the others are still denoised.

use crate::denoiser::Denoiser;
use crate::files::{Format, Job};
use crate::Error;
use cryoden_io::{Mode, WriteOptions};
use cryoden_nn::Backend;
use std::path::PathBuf;
use std::time::Instant;

/// Settings of a batch run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub format: Format,
    /// Leave outputs that already exist (outputs are written atomically, so an existing one is complete).
    pub skip_existing: bool,
    /// The label written into each output MRC header (at most 80 bytes kept).
    pub label: String,
}

/// What happened to one file.
#[derive(Debug)]
pub enum Status {
    Denoised {
        nx: usize,
        ny: usize,
        nz: usize,
        seconds: f64,
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
    pub seconds: f64,
}

struct Loaded {
    index: usize,
    mrc: Result<cryoden_io::Mrc, String>,
}

struct ToWrite {
    index: usize,
    data: Vec<f32>,
    dims: [usize; 3],
    header: cryoden_io::Header,
    seconds: f64,
}

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
            cryoden_io::write(&job.output, &w.data, w.dims, &wo)?;
        }
        Format::Png => {
            // One PNG per file: the first section of a stack.
            let [nx, ny, _] = w.dims;
            cryoden_io::write_png(
                &job.output,
                &w.data[..nx * ny],
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
    let (read_tx, read_rx) = crossbeam_channel::bounded::<Loaded>(2);
    let (write_tx, write_rx) = crossbeam_channel::bounded::<ToWrite>(2);
    let (done_tx, done_rx) =
        crossbeam_channel::unbounded::<(usize, Result<(usize, usize, usize, f64), String>)>();
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
    std::thread::scope(|s| {
        let todo_r = &todo;
        s.spawn(move || {
            for &i in todo_r {
                let mrc = cryoden_io::read(&jobs[i].input).map_err(|e| e.to_string());
                if read_tx.send(Loaded { index: i, mrc }).is_err() {
                    break;
                }
            }
        });
        let done_w = done_tx.clone();
        s.spawn(move || {
            for w in write_rx {
                let r = write_output(&jobs[w.index], &w, opts).map_err(|e| e.to_string());
                let _ = done_w.send((
                    w.index,
                    r.map(|_| (w.dims[0], w.dims[1], w.dims[2], w.seconds)),
                ));
            }
        });
        let drain =
            |summary: &mut Summary, report: &mut dyn FnMut(Outcome, &mut Summary), block: bool| {
                let next = || {
                    if block {
                        done_rx.recv().ok()
                    } else {
                        done_rx.try_recv().ok()
                    }
                };
                while let Some((i, r)) = next() {
                    let status = match r {
                        Ok((nx, ny, nz, seconds)) => Status::Denoised {
                            nx,
                            ny,
                            nz,
                            seconds,
                        },
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
        for loaded in read_rx {
            let i = loaded.index;
            let t0 = Instant::now();
            let result = loaded.mrc.and_then(|m| {
                let (nx, ny, nz) = (m.nx(), m.ny(), m.nz().max(1));
                let mut data = Vec::with_capacity(m.data.len());
                for z in 0..nz {
                    let sec = &m.data[z * nx * ny..(z + 1) * nx * ny];
                    data.extend(denoiser.denoise(sec, nx, ny).map_err(|e| e.to_string())?);
                }
                Ok(ToWrite {
                    index: i,
                    data,
                    dims: [nx, ny, nz],
                    header: m.header,
                    seconds: 0.0,
                })
            });
            match result {
                Ok(mut w) => {
                    w.seconds = t0.elapsed().as_secs_f64();
                    if write_tx.send(w).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = done_tx.send((i, Err(e)));
                }
            }
            drain(&mut summary, &mut report, false);
        }
        drop(write_tx);
        drop(done_tx);
        drain(&mut summary, &mut report, true);
    });
    summary.seconds = start.elapsed().as_secs_f64();
    summary
}
