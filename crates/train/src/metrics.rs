//! `RUN/metrics.jsonl`: one JSON object per line, per training step and per epoch.
//!
//! ```text
//! {"kind":"step","step":12,"epoch":2,"loss":0.41,"val_loss":null,"images_per_s":81.3,"lr":0.0001,"elapsed_s":3.2}
//! {"kind":"epoch","step":16,"epoch":2,"loss":0.40,"val_loss":0.38,"images_per_s":79.9,"lr":0.0001,"elapsed_s":4.1,"best":true}
//! ```
//! `step` counts optimizer steps from 1 over the whole run; `epoch` counts from 1. In a step line, `loss` is
//! that step's training loss and `images_per_s` its throughput (data wait included). In an epoch line, `loss`
//! is the mean training loss of the epoch's steps, `val_loss` the loss over the whole validation set,
//! `images_per_s` the epoch's training throughput (validation excluded), `best` whether this epoch became
//! `best.safetensors`. `elapsed_s` is wall time since the run started, summed over resumed sessions.
//! A non-finite loss is written as `null` (JSON has no NaN) just before training stops.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const METRICS_FILE: &str = "metrics.jsonl";

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Step,
    Epoch,
}

/// One line of metrics.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub kind: Kind,
    pub step: u64,
    pub epoch: u64,
    pub loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub images_per_s: f64,
    pub lr: f64,
    pub elapsed_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<bool>,
}

/// Appends records, one flushed line each (a killed run leaves whole lines behind).
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Starts a fresh log in `dir` (refuses to overwrite: the caller checks the run directory first).
    pub fn create(dir: &Path) -> Result<MetricsLog> {
        let path = dir.join(METRICS_FILE);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::fs(&path, "cannot create the metrics log", e))?;
        Ok(MetricsLog { path, file })
    }

    /// Reopens the log of a run resumed after `step` (and `epoch` complete epochs): lines a killed session wrote
    /// past its last checkpoint are dropped (atomically), since the resumed run repeats those steps.
    pub fn resume(dir: &Path, step: u64, epoch: u64) -> Result<MetricsLog> {
        let path = dir.join(METRICS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::fs(&path, "cannot read the metrics log", e)),
        };
        let mut kept = String::new();
        for line in text.lines() {
            // A line cut by the kill does not parse: it is past the checkpoint, drop it.
            let Ok(r) = serde_json::from_str::<Record>(line) else {
                continue;
            };
            let keep = match r.kind {
                Kind::Step => r.step <= step,
                Kind::Epoch => r.epoch <= epoch,
            };
            if keep {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        crate::run::write_atomic(&path, kept.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::fs(&path, "cannot reopen the metrics log", e))?;
        Ok(MetricsLog { path, file })
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r).expect("metrics records serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::fs(&self.path, "cannot append to the metrics log", e))
    }
}

/// Reads a whole metrics.jsonl (for tests and reports).
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::fs(path, "cannot read the metrics log", e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::run(path, format!("line {}: not a metrics record: {e}", i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: Kind, step: u64, epoch: u64) -> Record {
        Record {
            kind,
            step,
            epoch,
            loss: Some(1.0),
            val_loss: None,
            images_per_s: 1.0,
            lr: 1e-4,
            elapsed_s: 0.0,
            best: None,
        }
    }

    #[test]
    fn resume_drops_lines_past_the_checkpoint_and_cut_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::create(dir.path()).unwrap();
        for s in 1..=4 {
            log.write(&rec(Kind::Step, s, 1)).unwrap();
        }
        log.write(&rec(Kind::Epoch, 4, 1)).unwrap();
        for s in 5..=6 {
            log.write(&rec(Kind::Step, s, 2)).unwrap();
        }
        drop(log);
        let p = dir.path().join(METRICS_FILE);
        // A line cut by a kill.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"kind\":\"st")
            .unwrap();
        let mut log = MetricsLog::resume(dir.path(), 4, 1).unwrap();
        log.write(&rec(Kind::Step, 5, 2)).unwrap();
        let got = read(&p).unwrap();
        let steps: Vec<(Kind, u64)> = got.iter().map(|r| (r.kind, r.step)).collect();
        assert_eq!(
            steps,
            vec![
                (Kind::Step, 1),
                (Kind::Step, 2),
                (Kind::Step, 3),
                (Kind::Step, 4),
                (Kind::Epoch, 4),
                (Kind::Step, 5)
            ]
        );
        // Fresh logs never overwrite.
        assert!(MetricsLog::create(dir.path()).is_err());
    }

    #[test]
    fn nan_loss_is_written_as_null() {
        let r = Record {
            loss: Some(f64::NAN).filter(|v| v.is_finite()),
            ..rec(Kind::Step, 1, 1)
        };
        assert!(serde_json::to_string(&r).unwrap().contains("\"loss\":null"));
    }
}
