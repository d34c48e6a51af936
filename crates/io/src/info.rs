//! What `cryoden info` reports about a file: header fields and statistics computed from the data.

use crate::error::{Deviation, Result};
use crate::fei::FeiSection;
use crate::frames::{is_tiff_path, FrameStack};
use crate::mrc::{validate, MrcStack, ReadOptions};
use crate::stats::Stats;
use crate::tiff::TiffStack;
use std::path::Path;

/// Header statistics as stored in the file (MRC only).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeaderStats {
    pub dmin: f32,
    pub dmax: f32,
    pub dmean: f32,
    pub rms: f32,
}

/// One file's description. Serialised as the JSON object `cryoden info --json` prints.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FileInfo {
    pub path: String,
    /// "mrc" or "tiff".
    pub format: &'static str,
    pub gzip: bool,
    pub nx: usize,
    pub ny: usize,
    /// Sections (images of a stack, slices of a volume, frames of a TIFF).
    pub nz: usize,
    /// MRC mode number (null for TIFF).
    pub mode: Option<i32>,
    /// Sample type in words ("uint16", "float32", ...).
    pub dtype: &'static str,
    /// Voxel size in Å (x, y, z); 0 where unknown.
    pub voxel_size: [f32; 3],
    pub exttyp: String,
    pub nsymbt: i64,
    /// "little" or "big" (TIFF: the TIFF byte order is handled by the decoder; reported as null).
    pub byte_order: Option<&'static str>,
    pub machine_stamp: Option<String>,
    pub ispg: Option<i32>,
    /// mapc, mapr, maps: which axis (1 = x, 2 = y, 3 = z) runs along columns, rows, sections.
    pub axis_order: Option<[i32; 3]>,
    pub origin: Option<[f32; 3]>,
    pub nversion: Option<i32>,
    pub labels: Vec<String>,
    pub header_stats: Option<HeaderStats>,
    /// Computed from the data (finite values only).
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation (numpy's `std()`).
    pub std: f64,
    /// NaN or infinite values found in the data.
    pub non_finite: u64,
    /// FEI1/FEI2 metadata of the first section, when present.
    pub fei: Option<FeiSection>,
    /// Recoveries of a permissive read.
    pub warnings: Vec<Deviation>,
    /// Deviations from MRC-2014 (see [`crate::mrc::validate`]).
    pub deviations: Vec<Deviation>,
}

fn dtype_name(mode: crate::header::Mode) -> &'static str {
    use crate::header::Mode::*;
    match mode {
        Int8 => "int8",
        Int16 => "int16",
        Float32 => "float32",
        Uint16 => "uint16",
        Float16 => "float16",
    }
}

/// Describe a file: MRC (plain or gzip) or TIFF (by extension).
pub fn describe(path: impl AsRef<Path>, opts: ReadOptions) -> Result<FileInfo> {
    let path = path.as_ref();
    if is_tiff_path(path) {
        return describe_tiff(path);
    }
    let s = MrcStack::open_with(path, opts)?;
    let st = s.data_stats()?;
    let h = s.header();
    Ok(FileInfo {
        path: path.display().to_string(),
        format: "mrc",
        gzip: s.is_gzip(),
        nx: s.nx(),
        ny: s.ny(),
        nz: s.nz(),
        mode: Some(h.mode),
        dtype: dtype_name(s.mode()),
        voxel_size: s.voxel_size(),
        exttyp: h.exttyp_str(),
        nsymbt: h.nsymbt as i64,
        byte_order: Some(s.byte_order().as_str()),
        machine_stamp: Some(crate::header::pretty_stamp(h.machst)),
        ispg: Some(h.ispg),
        axis_order: Some([h.mapc, h.mapr, h.maps]),
        origin: Some(h.origin),
        nversion: Some(h.nversion),
        labels: h.label_strings(),
        header_stats: Some(HeaderStats {
            dmin: h.dmin,
            dmax: h.dmax,
            dmean: h.dmean,
            rms: h.rms,
        }),
        min: if st.n > 0 { st.min } else { 0.0 },
        max: if st.n > 0 { st.max } else { 0.0 },
        mean: st.mean,
        std: st.std(),
        non_finite: st.non_finite,
        fei: s.fei_sections().and_then(|v| v.into_iter().next()),
        warnings: s.warnings().to_vec(),
        deviations: validate(path)?,
    })
}

fn describe_tiff(path: &Path) -> Result<FileInfo> {
    let t = TiffStack::open(path)?;
    let (nx, ny) = t.frame_dims();
    let mut st = Stats::default();
    let mut buf = vec![0f32; nx * ny];
    for i in 0..t.n_frames() {
        t.read_frame_into(i, &mut buf)?;
        st = st.merge(&Stats::of(&buf));
    }
    Ok(FileInfo {
        path: path.display().to_string(),
        format: "tiff",
        gzip: false,
        nx,
        ny,
        nz: t.n_frames(),
        mode: None,
        dtype: match t.sample() {
            crate::tiff::TiffSample::U8 => "uint8",
            crate::tiff::TiffSample::U16 => "uint16",
            crate::tiff::TiffSample::F32 => "float32",
        },
        voxel_size: [0.0; 3],
        exttyp: String::new(),
        nsymbt: 0,
        byte_order: None,
        machine_stamp: None,
        ispg: None,
        axis_order: None,
        origin: None,
        nversion: None,
        labels: Vec::new(),
        header_stats: None,
        min: if st.n > 0 { st.min } else { 0.0 },
        max: if st.n > 0 { st.max } else { 0.0 },
        mean: st.mean,
        std: st.std(),
        non_finite: st.non_finite,
        fei: None,
        warnings: Vec::new(),
        deviations: Vec::new(),
    })
}

impl FileInfo {
    /// The human-readable block `cryoden info` prints.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.path);
        let fmt = if self.gzip {
            format!("{} (gzip)", self.format)
        } else {
            self.format.to_string()
        };
        let mode = match self.mode {
            Some(m) => format!("mode {m} ({})", self.dtype),
            None => self.dtype.to_string(),
        };
        let _ = writeln!(s, "  format        {fmt}, {mode}");
        let _ = writeln!(s, "  dimensions    {} x {} x {}", self.nx, self.ny, self.nz);
        let v = self.voxel_size;
        let _ = writeln!(s, "  voxel size    {} x {} x {} Å", v[0], v[1], v[2]);
        if let Some(bo) = self.byte_order {
            let _ = writeln!(
                s,
                "  byte order    {bo} (machine stamp {})",
                self.machine_stamp.as_deref().unwrap_or("")
            );
        }
        if let (Some(ispg), Some(ax)) = (self.ispg, self.axis_order) {
            let _ = writeln!(
                s,
                "  space group   {ispg}   axis order {},{},{}",
                ax[0], ax[1], ax[2]
            );
        }
        if self.format == "mrc" {
            let ext = if self.exttyp.is_empty() {
                "-"
            } else {
                &self.exttyp
            };
            let _ = writeln!(s, "  ext. header   {ext}, {} bytes", self.nsymbt);
        }
        if let Some(f) = &self.fei {
            let _ = writeln!(
                s,
                "  FEI metadata  dose {:.3} e/Å², pixel {:.4} Å, {:.0} kV, defocus {:.3} µm",
                f.dose_e_per_a2,
                f.pixel_size_a[0],
                f.ht_volts / 1000.0,
                f.defocus_um
            );
        }
        if let Some(h) = &self.header_stats {
            let _ = writeln!(
                s,
                "  header stats  min {}  max {}  mean {}  rms {}",
                h.dmin, h.dmax, h.dmean, h.rms
            );
        }
        let _ = writeln!(
            s,
            "  data stats    min {}  max {}  mean {:.6}  std {:.6}",
            // min and max are data values: print them as the f32 they are.
            self.min as f32,
            self.max as f32,
            self.mean,
            self.std
        );
        if self.non_finite > 0 {
            let _ = writeln!(s, "  NaN/Inf       {} values", self.non_finite);
        }
        for l in &self.labels {
            let _ = writeln!(s, "  label         {l}");
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning       {w}");
        }
        for d in &self.deviations {
            if !self.warnings.contains(d) {
                let _ = writeln!(s, "  deviation     {d}");
            }
        }
        s
    }
}
