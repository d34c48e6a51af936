//! Reading and writing MRC-2014 files: whole files ([`read`], [`write`]), memory-mapped stacks with random access
//! to image i ([`MrcStack`]), a streaming writer for stacks larger than memory ([`StackWriter`]), and
//! [`validate`], which lists every deviation from the standard.

use crate::atomic::AtomicFile;
use crate::codec;
use crate::error::{Deviation, Error, Fault, Result};
use crate::header::{detect_byte_order, pretty_stamp, ByteOrder, Header, Mode, HEADER_LEN};
use crate::stats::Stats;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// How forgiving a read is.
///
/// Both modes refuse what makes the data unreadable or ambiguous: an unknown or complex mode, negative
/// dimensions, an extended header or data block past the end of the file. Beyond that:
/// - **strict** (the default) also refuses a missing map ID, an unrecognised or lying machine stamp, and NaN or
///   infinite values in the data;
/// - **permissive** reads what mrcfile's `permissive=True` reads: it guesses the byte order from the header values,
///   ignores a missing map ID, lets NaN/Inf through, and reports each recovery as a [`Deviation`] warning.
///
/// Header conformance (nversion, labels, exttyp, statistics, ...) never stops a read; [`validate`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub permissive: bool,
}

impl ReadOptions {
    pub fn strict() -> ReadOptions {
        ReadOptions { permissive: false }
    }
    pub fn permissive() -> ReadOptions {
        ReadOptions { permissive: true }
    }
}

/// Largest data block we accept from a header (1 PiB): anything larger is a corrupt header, reported before any
/// allocation or read.
const MAX_DATA_BYTES: u128 = 1 << 50;

/// The bytes of a file: memory-mapped when plain, decompressed into memory when gzip.
enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// Where things are in a file, after all checks.
struct Layout {
    header: Header,
    order: ByteOrder,
    mode: Mode,
    ext_offset: usize,
    data_offset: usize,
    dims: [usize; 3],
    warnings: Vec<Deviation>,
}

/// Check a header against the file length and find the extended header and data. `len` is the length of the
/// (decompressed) file.
fn layout(path: &Path, hb: &[u8; HEADER_LEN], len: u64, opts: ReadOptions) -> Result<Layout> {
    let fail = |f| Err(Error::format(path, f));
    let mut warnings = Vec::new();
    // Map ID: the first three bytes, as mrcfile checks (some writers put "MAP\0").
    if &hb[208..211] != b"MAP" {
        let found = String::from_utf8_lossy(&hb[208..212]).into_owned();
        if opts.permissive {
            warnings.push(Deviation::new("map", format!("{found:?}"), "\"MAP \""));
        } else {
            return fail(Fault::NotMrc { found });
        }
    }
    let (order, guessed) = detect_byte_order(hb);
    if let Some(dev) = guessed {
        if opts.permissive {
            warnings.push(dev);
        } else {
            return fail(Fault::MachineStamp {
                found: format!(
                    "{} (the header reads as {}-endian)",
                    dev.found,
                    order.as_str()
                ),
            });
        }
    }
    let header = Header::parse(hb, order);
    let mode = header.data_mode().map_err(|f| Error::format(path, f))?;
    let (nx, ny, nz) = (header.nx as i64, header.ny as i64, header.nz as i64);
    if nx < 0 || ny < 0 || nz < 0 {
        return fail(Fault::Dimensions {
            nx,
            ny,
            nz,
            why: "dimensions must not be negative".into(),
        });
    }
    let data_bytes = nx as u128 * ny as u128 * nz as u128 * mode.bytes() as u128;
    if data_bytes > MAX_DATA_BYTES {
        return fail(Fault::Dimensions {
            nx,
            ny,
            nz,
            why: format!("they describe {data_bytes} bytes of data (more than 1 PiB)"),
        });
    }
    let nsymbt = if header.nsymbt < 0 {
        if !opts.permissive {
            return fail(Fault::ExtHeaderPastEof {
                nsymbt: header.nsymbt as i64,
                len,
            });
        }
        warnings.push(Deviation::new("nsymbt", header.nsymbt, ">= 0 (read as 0)"));
        0u64
    } else {
        header.nsymbt as u64
    };
    let data_offset = HEADER_LEN as u64 + nsymbt;
    if data_offset > len {
        return fail(Fault::ExtHeaderPastEof {
            nsymbt: nsymbt as i64,
            len,
        });
    }
    let available = len - data_offset;
    if (available as u128) < data_bytes {
        return fail(Fault::Truncated {
            offset: data_offset,
            expected: data_bytes as u64,
            found: available,
        });
    }
    if (available as u128) > data_bytes {
        warnings.push(Deviation::new(
            "file size",
            format!("{len} bytes"),
            format!(
                "{} bytes (header + extended header + data)",
                data_offset as u128 + data_bytes
            ),
        ));
    }
    Ok(Layout {
        header,
        order,
        mode,
        ext_offset: HEADER_LEN,
        data_offset: data_offset as usize,
        dims: [nx as usize, ny as usize, nz as usize],
        warnings,
    })
}

/// Is this a gzip stream (magic 1f 8b)? Decided by content, not by the file name.
fn is_gzip(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0x1f && b[1] == 0x8b
}

/// Decompress a gzip file. The output grows with what the stream actually holds (a header claiming huge
/// dimensions allocates nothing); reading stops one byte past what the header promises.
fn gunzip(path: &Path, compressed: &[u8]) -> Result<Vec<u8>> {
    let gz_err = |e: std::io::Error| Error::format(path, Fault::Gzip(e.to_string()));
    let mut dec = flate2::read::MultiGzDecoder::new(compressed);
    let mut out = Vec::with_capacity(HEADER_LEN);
    (&mut dec)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut out)
        .map_err(gz_err)?;
    if out.len() < HEADER_LEN {
        return Ok(out); // the caller reports the short header
    }
    let hb: &[u8; HEADER_LEN] = out[..HEADER_LEN].try_into().expect("1024 bytes");
    let (order, _) = detect_byte_order(hb);
    let h = Header::parse(hb, order);
    let want = match h.data_mode() {
        Ok(m) => {
            let d =
                h.nx.max(0) as u128 * h.ny.max(0) as u128 * h.nz.max(0) as u128 * m.bytes() as u128;
            (h.nsymbt.max(0) as u128 + d).min(MAX_DATA_BYTES) as u64
        }
        Err(_) => 0,
    };
    dec.take(want + 1).read_to_end(&mut out).map_err(gz_err)?;
    Ok(out)
}

/// Open a file's bytes: mmap, or decompress gzip.
/// `populate`: pre-fault the whole map (for reads of the whole file; random access to a stack larger than memory
/// must not).
fn open_bytes(path: &Path, populate: bool) -> Result<(Backing, bool)> {
    let file = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(path, "cannot stat", e))?
        .len();
    if len == 0 {
        return Err(Error::format(path, Fault::Empty));
    }
    // SAFETY: the map is read-only; like every mmap reader we rely on the file not being truncated by another
    // process while we read it (that would raise SIGBUS).
    let mut mo = memmap2::MmapOptions::new();
    if populate {
        mo.populate();
    }
    let map = unsafe { mo.map(&file) }.map_err(|e| Error::io(path, "cannot memory-map", e))?;
    if is_gzip(&map) {
        let out = gunzip(path, &map)?;
        if out.is_empty() {
            return Err(Error::format(path, Fault::Empty));
        }
        Ok((Backing::Owned(out), true))
    } else {
        Ok((Backing::Mmap(map), false))
    }
}

/// An MRC file opened for random access: the header is parsed and checked, the data stay on disk (memory-mapped;
/// gzip files are decompressed into memory once). Images (sections) are decoded to f32 on request.
pub struct MrcStack {
    path: PathBuf,
    header: Header,
    order: ByteOrder,
    mode: Mode,
    gzip: bool,
    bytes: Backing,
    ext_offset: usize,
    data_offset: usize,
    dims: [usize; 3],
    warnings: Vec<Deviation>,
    opts: ReadOptions,
}

impl std::fmt::Debug for MrcStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MrcStack")
            .field("path", &self.path)
            .field("dims", &self.dims)
            .field("mode", &self.mode)
            .field("order", &self.order)
            .finish()
    }
}

impl MrcStack {
    /// Open strictly.
    pub fn open(path: impl AsRef<Path>) -> Result<MrcStack> {
        MrcStack::open_with(path, ReadOptions::strict())
    }

    pub fn open_with(path: impl AsRef<Path>, opts: ReadOptions) -> Result<MrcStack> {
        let path = path.as_ref();
        let (bytes, gzip) = open_bytes(path, false)?;
        MrcStack::from_backing(path, bytes, gzip, opts)
    }

    /// Parse a file already in memory (plain or gzip); `name` is used in messages only. This is the entry point
    /// of the header fuzzer: any byte string gives a result or a typed error, never a panic or a huge allocation.
    pub fn from_bytes(
        name: impl AsRef<Path>,
        bytes: Vec<u8>,
        opts: ReadOptions,
    ) -> Result<MrcStack> {
        let name = name.as_ref();
        if bytes.is_empty() {
            return Err(Error::format(name, Fault::Empty));
        }
        if is_gzip(&bytes) {
            let out = gunzip(name, &bytes)?;
            if out.is_empty() {
                return Err(Error::format(name, Fault::Empty));
            }
            MrcStack::from_backing(name, Backing::Owned(out), true, opts)
        } else {
            MrcStack::from_backing(name, Backing::Owned(bytes), false, opts)
        }
    }

    fn from_backing(
        path: &Path,
        bytes: Backing,
        gzip: bool,
        opts: ReadOptions,
    ) -> Result<MrcStack> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::format(
                path,
                Fault::ShortHeader {
                    len: bytes.len() as u64,
                },
            ));
        }
        let hb: &[u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().expect("1024 bytes");
        let l = layout(path, hb, bytes.len() as u64, opts)?;
        Ok(MrcStack {
            path: path.to_path_buf(),
            header: l.header,
            order: l.order,
            mode: l.mode,
            gzip,
            bytes,
            ext_offset: l.ext_offset,
            data_offset: l.data_offset,
            dims: l.dims,
            warnings: l.warnings,
            opts,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn byte_order(&self) -> ByteOrder {
        self.order
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Whether the file was gzip-compressed.
    pub fn is_gzip(&self) -> bool {
        self.gzip
    }
    pub fn nx(&self) -> usize {
        self.dims[0]
    }
    pub fn ny(&self) -> usize {
        self.dims[1]
    }
    /// Number of sections: images of a stack, slices of a volume.
    pub fn nz(&self) -> usize {
        self.dims[2]
    }
    /// Voxel size in Å (x, y, z), from the header's cell and sampling.
    pub fn voxel_size(&self) -> [f32; 3] {
        self.header.voxel_size()
    }
    /// The extended header's bytes (nsymbt of them).
    pub fn ext_header(&self) -> &[u8] {
        &self.bytes[self.ext_offset..self.data_offset]
    }
    /// FEI1/FEI2 per-section metadata (dose, pixel size, ...), when present and well-formed.
    pub fn fei_sections(&self) -> Option<Vec<crate::fei::FeiSection>> {
        crate::fei::sections(&self.header, self.order, self.ext_header())
    }
    /// What a permissive read recovered from, and harmless oddities such as trailing bytes.
    pub fn warnings(&self) -> &[Deviation] {
        &self.warnings
    }
    /// The raw data block (file byte order, `mode` encoding).
    pub fn raw_data(&self) -> &[u8] {
        let n = self.dims[0] * self.dims[1] * self.dims[2] * self.mode.bytes();
        &self.bytes[self.data_offset..self.data_offset + n]
    }

    /// Decode sections `z0..z0 + out.len() / (nx * ny)` into `out`, checking finiteness when strict.
    fn decode_sections(&self, z0: usize, out: &mut [f32]) -> Result<()> {
        let plane = self.dims[0] * self.dims[1];
        let nb = self.mode.bytes();
        let start = self.data_offset + z0 * plane * nb;
        let src = &self.bytes[start..start + out.len() * nb];
        codec::decode(self.mode, self.order, src, out);
        if !self.opts.permissive && matches!(self.mode, Mode::Float32 | Mode::Float16) {
            if let Some(i) = codec::first_non_finite(out) {
                let index = (z0 * plane + i) as u64;
                let (nx, ny) = (self.dims[0] as u64, self.dims[1] as u64);
                return Err(Error::format(
                    &self.path,
                    Fault::NonFinite {
                        value: out[i],
                        index,
                        x: index % nx,
                        y: (index / nx) % ny,
                        z: index / (nx * ny),
                    },
                ));
            }
        }
        Ok(())
    }

    /// Decode image (section) `i` into `out` (length nx * ny, x fastest).
    pub fn read_image_into(&self, i: usize, out: &mut [f32]) -> Result<()> {
        let plane = self.dims[0] * self.dims[1];
        if i >= self.dims[2] {
            return Err(Error::usage(
                &self.path,
                format!(
                    "image {i} requested but the file has {} (0-based index)",
                    self.dims[2]
                ),
            ));
        }
        if out.len() != plane {
            return Err(Error::usage(
                &self.path,
                format!(
                    "buffer of {} values for an image of {} x {}",
                    out.len(),
                    self.dims[0],
                    self.dims[1]
                ),
            ));
        }
        self.decode_sections(i, out)
    }

    /// Image (section) `i` as f32, x fastest.
    pub fn read_image(&self, i: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.dims[0] * self.dims[1]];
        self.read_image_into(i, &mut out)?;
        Ok(out)
    }

    /// All data as f32 (sample-major: image 0 first), in file order (no axis reordering).
    pub fn read_all(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.len()];
        self.read_all_into(&mut out)?;
        Ok(out)
    }

    /// Values in the file: nx · ny · nz.
    pub fn len(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`MrcStack::read_all`] into the caller's memory (`out.len()` must be [`MrcStack::len`]), e.g. page-locked
    /// memory that a GPU copies from directly.
    pub fn read_all_into(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.len() {
            return Err(Error::usage(
                &self.path,
                format!(
                    "buffer of {} values for {} x {} x {} data",
                    out.len(),
                    self.dims[0],
                    self.dims[1],
                    self.dims[2]
                ),
            ));
        }
        if !out.is_empty() {
            self.decode_sections(0, out)?;
        }
        Ok(())
    }

    /// Statistics computed from the data (NaN/Inf counted, not included), streaming image by image.
    pub fn data_stats(&self) -> Result<Stats> {
        let plane = self.dims[0] * self.dims[1];
        let mut s = Stats::default();
        if self.dims[2] == 0 {
            // nx * ny may be huge when nz = 0 (no data): allocate nothing.
            return Ok(s);
        }
        let mut buf = vec![0f32; plane];
        let nb = self.mode.bytes();
        for z in 0..self.dims[2] {
            let start = self.data_offset + z * plane * nb;
            codec::decode(
                self.mode,
                self.order,
                &self.bytes[start..start + plane * nb],
                &mut buf,
            );
            s = s.merge(&Stats::of(&buf));
        }
        Ok(s)
    }
}

/// A whole MRC file in memory.
#[derive(Debug, Clone)]
pub struct Mrc {
    pub header: Header,
    pub byte_order: ByteOrder,
    pub ext_header: Vec<u8>,
    /// nx * ny * nz values, x fastest, in file order.
    pub data: Vec<f32>,
    pub warnings: Vec<Deviation>,
}

impl Mrc {
    pub fn nx(&self) -> usize {
        self.header.nx as usize
    }
    pub fn ny(&self) -> usize {
        self.header.ny as usize
    }
    pub fn nz(&self) -> usize {
        self.header.nz as usize
    }
    pub fn voxel_size(&self) -> [f32; 3] {
        self.header.voxel_size()
    }
}

/// Read a whole MRC file (any supported mode, either byte order, gzip or not) strictly.
pub fn read(path: impl AsRef<Path>) -> Result<Mrc> {
    read_with(path, ReadOptions::strict())
}

pub fn read_with(path: impl AsRef<Path>, opts: ReadOptions) -> Result<Mrc> {
    let path = path.as_ref();
    let (bytes, gzip) = open_bytes(path, true)?;
    let s = MrcStack::from_backing(path, bytes, gzip, opts)?;
    let data = s.read_all()?;
    let mut warnings = s.warnings.clone();
    if opts.permissive {
        if let Some(i) = codec::first_non_finite(&data) {
            warnings.push(Deviation::new(
                "data",
                format!("{} at voxel {i}", data[i]),
                "finite values",
            ));
        }
    }
    Ok(Mrc {
        header: s.header.clone(),
        byte_order: s.order,
        ext_header: s.ext_header().to_vec(),
        data,
        warnings,
    })
}

/// [`read`] into memory from `alloc`, which is asked for the `nx · ny · nz` values once the header has been checked
/// (e.g. page-locked memory that a GPU copies from directly); it must return exactly that many. Returns the header
/// and the filled memory.
pub fn read_into<B: AsMut<[f32]>>(
    path: impl AsRef<Path>,
    alloc: impl FnOnce(usize) -> B,
) -> Result<(Header, B)> {
    let path = path.as_ref();
    let (bytes, gzip) = open_bytes(path, true)?;
    let s = MrcStack::from_backing(path, bytes, gzip, ReadOptions::strict())?;
    let mut out = alloc(s.len());
    s.read_all_into(out.as_mut())?;
    Ok((s.header.clone(), out))
}

/// Every deviation of a file from the MRC-2014 standard (mrcfile's `validate` checks, plus file size and
/// non-finite data). Reads the file permissively; an unreadable file is an error, a readable one returns its list
/// (empty when the file conforms).
pub fn validate(path: impl AsRef<Path>) -> Result<Vec<Deviation>> {
    MrcStack::open_with(path, ReadOptions::permissive())?.validate()
}

impl MrcStack {
    /// [`validate`] for an open file (open it permissively to see every deviation rather than an error).
    pub fn validate(&self) -> Result<Vec<Deviation>> {
        validate_open(self)
    }
}

fn validate_open(s: &MrcStack) -> Result<Vec<Deviation>> {
    let h = &s.header;
    let mut d = s.warnings.clone();
    for dev in h.deviations() {
        if !d.iter().any(|w| w.field == dev.field) {
            d.push(dev);
        }
    }
    let st = s.data_stats()?;
    if st.non_finite > 0 {
        d.push(Deviation::new(
            "data",
            format!("{} NaN/Inf values", st.non_finite),
            "finite values",
        ));
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-8 + 0.01 * b.abs();
    if h.rms >= 0.0 && !close(st.std(), h.rms as f64) {
        d.push(Deviation::new(
            "rms",
            h.rms,
            format!("{} (computed from the data)", st.std()),
        ));
    }
    let (min, max) = if st.n > 0 {
        (st.min, st.max)
    } else {
        (0.0, 0.0)
    };
    if h.dmin < h.dmax {
        if h.dmin as f64 != min {
            d.push(Deviation::new(
                "dmin",
                h.dmin,
                format!("{min} (computed from the data)"),
            ));
        }
        if h.dmax as f64 != max {
            d.push(Deviation::new(
                "dmax",
                h.dmax,
                format!("{max} (computed from the data)"),
            ));
        }
    }
    if h.dmean > h.dmin.min(h.dmax) && !close(st.mean, h.dmean as f64) {
        d.push(Deviation::new(
            "dmean",
            h.dmean,
            format!("{} (computed from the data)", st.mean),
        ));
    }
    Ok(d)
}

/// An extended header to write after the main header.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtHeader {
    pub exttyp: [u8; 4],
    pub bytes: Vec<u8>,
}

/// How to write an MRC file.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOptions {
    /// Data mode: Float32 (2) by default; Float16 (12) halves the size; Int8/Int16/Uint16 (0/1/6) for integer
    /// counts (values that are not integers or do not fit are refused, never rounded or clipped).
    pub mode: Mode,
    pub byte_order: ByteOrder,
    /// Voxel size in Å along x, y, z (0 = unknown, as mrcfile writes by default).
    pub voxel_size: [f32; 3],
    /// Space group: 0 = image or image stack (the default), 1 = volume.
    pub ispg: i32,
    pub origin: [f32; 3],
    /// Text labels (at most 10 of 80 bytes are kept).
    pub labels: Vec<String>,
    pub ext_header: Option<ExtHeader>,
}

impl Default for WriteOptions {
    fn default() -> WriteOptions {
        WriteOptions {
            mode: Mode::Float32,
            byte_order: ByteOrder::Little,
            voxel_size: [0.0; 3],
            ispg: 0,
            origin: [0.0; 3],
            labels: vec![format!("cryoden {}", env!("CARGO_PKG_VERSION"))],
            ext_header: None,
        }
    }
}

impl WriteOptions {
    /// Float32 with the given voxel size (Å, the same along x, y, z).
    pub fn with_voxel_size(voxel_size: f32) -> WriteOptions {
        WriteOptions {
            voxel_size: [voxel_size; 3],
            ..WriteOptions::default()
        }
    }
    /// Keep the voxel size, origin, space group and labels of an existing header (e.g. denoising a micrograph).
    pub fn like(h: &Header) -> WriteOptions {
        let mut labels = h.label_strings();
        labels.push(format!("cryoden {}", env!("CARGO_PKG_VERSION")));
        if labels.len() > 10 {
            labels.drain(..labels.len() - 10);
        }
        WriteOptions {
            voxel_size: h.voxel_size(),
            ispg: if h.ispg == 1 { 1 } else { 0 },
            origin: h.origin,
            labels,
            ..WriteOptions::default()
        }
    }
}

/// Write an image (nz = 1), image stack or volume of f32 values (x fastest, then y, then z) atomically.
pub fn write(
    path: impl AsRef<Path>,
    data: &[f32],
    dims: [usize; 3],
    opts: &WriteOptions,
) -> Result<()> {
    let path = path.as_ref();
    let [nx, ny, nz] = dims;
    if nx.checked_mul(ny).and_then(|p| p.checked_mul(nz)) != Some(data.len()) {
        return Err(Error::usage(
            path,
            format!(
                "{} values given for dimensions {nx} x {ny} x {nz}",
                data.len()
            ),
        ));
    }
    let mut w = StackWriter::create(path, nx, ny, opts)?;
    if nz > 0 {
        w.append(data)?;
    }
    w.finish()
}

/// Values encoded per write call in the streaming writer (4 MiB of f32).
const WRITE_CHUNK: usize = 1 << 20;

/// Writes an MRC stack image by image without holding it in memory. The header's nz and statistics are fixed by
/// [`StackWriter::finish`], which renames the file into place; dropping the writer without finishing leaves
/// nothing behind.
pub struct StackWriter {
    file: AtomicFile,
    header: Header,
    opts: WriteOptions,
    plane: usize,
    n_images: usize,
    stats: Stats,
    buf: Vec<u8>,
}

impl StackWriter {
    pub fn create(
        path: impl AsRef<Path>,
        nx: usize,
        ny: usize,
        opts: &WriteOptions,
    ) -> Result<StackWriter> {
        let path = path.as_ref();
        let too_big = |what| {
            Error::usage(
                path,
                format!("{what} does not fit the MRC header's 32-bit fields"),
            )
        };
        let nxi = i32::try_from(nx).map_err(|_| too_big("nx"))?;
        let nyi = i32::try_from(ny).map_err(|_| too_big("ny"))?;
        let ext = opts.ext_header.clone();
        let nsymbt = match &ext {
            Some(e) => i32::try_from(e.bytes.len()).map_err(|_| too_big("the extended header"))?,
            None => 0,
        };
        let mut h = Header {
            nx: nxi,
            ny: nyi,
            nz: 0,
            mode: opts.mode.number(),
            mx: nxi,
            my: nyi,
            mz: 1,
            ispg: opts.ispg,
            nsymbt,
            exttyp: ext.as_ref().map(|e| e.exttyp).unwrap_or([0; 4]),
            origin: opts.origin,
            machst: opts.byte_order.machine_stamp(),
            ..Header::default()
        };
        for l in opts.labels.iter().take(10) {
            h.add_label(l);
        }
        let mut file = AtomicFile::create(path)?;
        let f = file.file();
        // Placeholder header; finish() rewrites it.
        f.write_all(&h.to_bytes(opts.byte_order))
            .and_then(|_| match &ext {
                Some(e) => f.write_all(&e.bytes),
                None => Ok(()),
            })
            .map_err(|e| Error::io(path, "cannot write", e))?;
        Ok(StackWriter {
            file,
            header: h,
            opts: opts.clone(),
            plane: nx * ny,
            n_images: 0,
            stats: Stats::default(),
            buf: Vec::new(),
        })
    }

    /// Append one or more whole images (a multiple of nx * ny values, x fastest).
    pub fn append(&mut self, images: &[f32]) -> Result<()> {
        let dest = self.file.dest().to_path_buf();
        if self.plane == 0 || !images.len().is_multiple_of(self.plane) {
            return Err(Error::usage(
                &dest,
                format!(
                    "append: {} values is not a whole number of {} x {} images",
                    images.len(),
                    self.header.nx,
                    self.header.ny
                ),
            ));
        }
        let mode = self.opts.mode;
        let nb = mode.bytes();
        // float32 in native little-endian order: the bytes are the data, no encoding pass.
        let passthrough = mode == Mode::Float32
            && self.opts.byte_order == ByteOrder::Little
            && cfg!(target_endian = "little");
        for (k, chunk) in images.chunks(WRITE_CHUNK).enumerate() {
            if passthrough {
                let st = Stats::of(chunk);
                if st.non_finite > 0 {
                    // Fall through to encode(), which finds and reports the first bad value.
                } else {
                    self.stats = self.stats.merge(&st);
                    // SAFETY: f32 has no padding and every bit pattern is a valid u8 sequence; the slice covers
                    // exactly the chunk's memory.
                    let bytes = unsafe {
                        std::slice::from_raw_parts(chunk.as_ptr() as *const u8, chunk.len() * 4)
                    };
                    self.file
                        .file()
                        .write_all(bytes)
                        .map_err(|e| Error::io(&dest, "cannot write", e))?;
                    continue;
                }
            }
            self.buf.resize(chunk.len() * nb, 0);
            codec::encode(mode, self.opts.byte_order, chunk, &mut self.buf).map_err(|e| {
                let index = (self.n_images * self.plane + k * WRITE_CHUNK + e.index) as u64;
                let nx = self.header.nx as u64;
                let plane = self.plane as u64;
                Error::usage(
                    &dest,
                    format!(
                        "cannot store {} (voxel x={}, y={}, image {}) in mode {}: {}",
                        e.value,
                        index % nx,
                        (index % plane) / nx,
                        index / plane,
                        mode.number(),
                        e.reason
                    ),
                )
            })?;
            self.stats = self.stats.merge(&Stats::of(chunk));
            self.file
                .file()
                .write_all(&self.buf)
                .map_err(|e| Error::io(&dest, "cannot write", e))?;
        }
        self.n_images += images.len() / self.plane;
        Ok(())
    }

    /// Images written so far.
    pub fn len(&self) -> usize {
        self.n_images
    }
    pub fn is_empty(&self) -> bool {
        self.n_images == 0
    }

    /// Fix nz and the statistics in the header and rename the file into place.
    pub fn finish(mut self) -> Result<()> {
        let dest = self.file.dest().to_path_buf();
        let h = &mut self.header;
        h.nz = i32::try_from(self.n_images)
            .map_err(|_| Error::usage(&dest, "more than 2^31 images do not fit an MRC header"))?;
        h.mz = if h.ispg == 1 { h.nz.max(1) } else { 1 };
        h.set_voxel_size(self.opts.voxel_size);
        if self.stats.n > 0 {
            h.dmin = self.stats.min as f32;
            h.dmax = self.stats.max as f32;
            h.dmean = self.stats.mean as f32;
            h.rms = self.stats.std() as f32;
        }
        let bytes = h.to_bytes(self.opts.byte_order);
        let f = self.file.file();
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&bytes))
            .map_err(|e| Error::io(&dest, "cannot write the header", e))?;
        self.file.commit()
    }
}

/// Human-readable machine stamp of a header (for `info`).
pub fn machine_stamp_text(h: &Header) -> String {
    pretty_stamp(h.machst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37) % 251) as f32 - 125.0).collect()
    }

    #[test]
    fn write_read_every_mode_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let (nx, ny, nz) = (13, 7, 3);
        for mode in [Mode::Int8, Mode::Int16, Mode::Float32, Mode::Float16] {
            for order in [ByteOrder::Little, ByteOrder::Big] {
                let p = dir
                    .path()
                    .join(format!("m{}-{}.mrcs", mode.number(), order.as_str()));
                let data = ramp(nx * ny * nz);
                let opts = WriteOptions {
                    mode,
                    byte_order: order,
                    voxel_size: [1.5, 1.5, 2.0],
                    ..WriteOptions::default()
                };
                write(&p, &data, [nx, ny, nz], &opts).unwrap();
                let m = read(&p).unwrap();
                assert_eq!(m.data, data, "{mode:?} {order:?}");
                assert_eq!(m.byte_order, order);
                assert_eq!(m.voxel_size(), [1.5, 1.5, 2.0]);
                assert_eq!((m.nx(), m.ny(), m.nz()), (nx, ny, nz));
                assert!(
                    validate(&p).unwrap().is_empty(),
                    "{:?}",
                    validate(&p).unwrap()
                );
                let s = MrcStack::open(&p).unwrap();
                assert_eq!(s.read_image(2).unwrap(), data[2 * nx * ny..].to_vec());
            }
        }
    }

    #[test]
    fn stack_writer_streams_and_fixes_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.mrcs");
        let mut w = StackWriter::create(&p, 4, 3, &WriteOptions::with_voxel_size(0.8)).unwrap();
        assert!(!p.exists(), "nothing visible before finish");
        for k in 0..5 {
            w.append(&[k as f32; 12]).unwrap();
        }
        w.finish().unwrap();
        let m = read(&p).unwrap();
        assert_eq!(m.header.nz, 5);
        assert_eq!(
            (m.header.dmin, m.header.dmax, m.header.dmean),
            (0.0, 4.0, 2.0)
        );
        assert!((m.header.rms - 2f32.sqrt()).abs() < 1e-6);
        assert_eq!(m.data[12 * 3], 3.0);
        // Abandoned writer: nothing left.
        let p2 = dir.path().join("t.mrcs");
        let mut w = StackWriter::create(&p2, 4, 3, &WriteOptions::default()).unwrap();
        w.append(&[1.0; 12]).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

/// Reorder data from file order (columns fastest, then rows, then sections, as `mapc`, `mapr`, `maps` say) to
/// x fastest, then y, then z. Returns the data and its (x, y, z) dimensions; files with the standard order 1,2,3
/// come back unchanged. `None` when the axis mapping is not a permutation of 1, 2, 3.
pub fn to_xyz(header: &Header, data: &[f32]) -> Option<(Vec<f32>, [usize; 3])> {
    let axes = [header.mapc, header.mapr, header.maps];
    let mut sorted = axes;
    sorted.sort();
    if sorted != [1, 2, 3] {
        return None;
    }
    let n = [
        header.nx.max(0) as usize,
        header.ny.max(0) as usize,
        header.nz.max(0) as usize,
    ];
    if n[0] * n[1] * n[2] != data.len() {
        return None;
    }
    let ax = axes.map(|a| a as usize - 1); // ax[k]: spatial axis of file axis k
    let mut d = [0usize; 3];
    for k in 0..3 {
        d[ax[k]] = n[k];
    }
    if ax == [0, 1, 2] {
        return Some((data.to_vec(), d));
    }
    // Output stride of each file axis.
    let stride_xyz = [1, d[0], d[0] * d[1]];
    let st = ax.map(|a| stride_xyz[a]);
    let mut out = vec![0f32; data.len()];
    let mut i = 0;
    for s in 0..n[2] {
        for r in 0..n[1] {
            let base = s * st[2] + r * st[1];
            for c in 0..n[0] {
                out[base + c * st[0]] = data[i];
                i += 1;
            }
        }
    }
    Some((out, d))
}

#[cfg(test)]
mod axis_tests {
    use super::*;

    #[test]
    fn reorders_columns_rows_sections_to_xyz() {
        // EMD-3001's order: columns = z, rows = x, sections = y.
        let h = Header {
            nx: 4,
            ny: 3,
            nz: 2,
            mapc: 3,
            mapr: 1,
            maps: 2,
            ..Header::default()
        };
        // File value encodes its (c, r, s) position.
        let data: Vec<f32> = (0..24)
            .map(|i| {
                let (c, r, s) = (i % 4, (i / 4) % 3, i / 12);
                (100 * c + 10 * r + s) as f32
            })
            .collect();
        let (out, d) = to_xyz(&h, &data).unwrap();
        assert_eq!(d, [3, 2, 4]); // x = rows, y = sections, z = columns
        for z in 0..4 {
            for y in 0..2 {
                for x in 0..3 {
                    let (c, r, s) = (z, x, y);
                    assert_eq!(out[x + 3 * (y + 2 * z)], (100 * c + 10 * r + s) as f32);
                }
            }
        }
        let std = Header {
            nx: 4,
            ny: 3,
            nz: 2,
            ..Header::default()
        };
        assert_eq!(to_xyz(&std, &data).unwrap(), (data.clone(), [4, 3, 2]));
        let bad = Header {
            mapc: 1,
            mapr: 1,
            ..std
        };
        assert!(to_xyz(&bad, &data).is_none());
    }
}
