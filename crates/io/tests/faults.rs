//! One test per fault: each writes a file with exactly that fault and checks the typed error and that the
//! message names the file (mrcfile's style). None may panic.

use cryoden_io::{
    read, read_into, read_with, validate, write, ByteOrder, Fault, Header, MrcStack, ReadOptions,
    WriteOptions,
};
use std::path::{Path, PathBuf};

/// A valid 8 x 6 x 2 float32 stack, little-endian; returns its path and bytes.
fn valid(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let p = dir.join(name);
    let data: Vec<f32> = (0..96).map(|i| i as f32 * 0.5).collect();
    write(&p, &data, [8, 6, 2], &WriteOptions::with_voxel_size(1.25)).unwrap();
    let b = std::fs::read(&p).unwrap();
    (p, b)
}

fn put_i32(b: &mut [u8], at: usize, v: i32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Read strictly, expect a format fault, check the message names the file.
fn fault_of(p: &Path) -> Fault {
    let err = read(p).expect_err("the faulty file must not read");
    let msg = err.to_string();
    assert!(
        msg.contains(&p.display().to_string()),
        "message does not name the file: {msg}"
    );
    // Reading into the caller's memory fails the same way.
    let into = read_into(p, |n| vec![0f32; n]).expect_err("the faulty file must not read");
    assert_eq!(into.to_string(), msg);
    err.fault()
        .cloned()
        .unwrap_or_else(|| panic!("not a format fault: {msg}"))
}

#[test]
fn reading_into_callers_memory_gives_what_read_gives() {
    let d = tempfile::tempdir().unwrap();
    let (p, _) = valid(d.path(), "stack.mrc");
    let whole = read(&p).unwrap();
    let mut asked = 0;
    let (header, data) = read_into(&p, |n| {
        asked = n;
        vec![f32::NAN; n]
    })
    .unwrap();
    assert_eq!(asked, 96);
    assert_eq!(data, whole.data);
    assert_eq!(header, whole.header);
}

#[test]
fn empty_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("empty.mrc");
    std::fs::write(&p, b"").unwrap();
    assert_eq!(fault_of(&p), Fault::Empty);
}

#[test]
fn shorter_than_header() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("short.mrc");
    std::fs::write(&p, [0u8; 500]).unwrap();
    assert_eq!(fault_of(&p), Fault::ShortHeader { len: 500 });
}

#[test]
fn not_an_mrc_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("notes.mrc");
    std::fs::write(&p, "this is a text file, not a map\n".repeat(100)).unwrap();
    assert!(matches!(fault_of(&p), Fault::NotMrc { .. }));
}

#[test]
fn truncated_data() {
    let d = tempfile::tempdir().unwrap();
    let (p, b) = valid(d.path(), "trunc.mrc");
    std::fs::write(&p, &b[..b.len() - 10]).unwrap();
    assert_eq!(
        fault_of(&p),
        Fault::Truncated {
            offset: 1024,
            expected: 384,
            found: 374
        }
    );
    // Permissive does not invent data either.
    assert!(read_with(&p, ReadOptions::permissive()).is_err());
}

#[test]
fn nsymbt_past_end_of_file() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut b) = valid(d.path(), "ext.mrc");
    put_i32(&mut b, 92, 1 << 20);
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(
        fault_of(&p),
        Fault::ExtHeaderPastEof {
            nsymbt: 1048576,
            ..
        }
    ));
}

#[test]
fn unknown_mode() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut b) = valid(d.path(), "mode7.mrc");
    put_i32(&mut b, 12, 7);
    std::fs::write(&p, &b).unwrap();
    assert_eq!(fault_of(&p), Fault::UnknownMode(7));
    assert!(read_with(&p, ReadOptions::permissive()).is_err());
}

#[test]
fn complex_mode_is_not_supported() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut b) = valid(d.path(), "mode4.mrc");
    put_i32(&mut b, 12, 4);
    std::fs::write(&p, &b).unwrap();
    assert_eq!(fault_of(&p), Fault::ComplexMode(4));
    assert!(
        read(&p).unwrap_err().to_string().contains("not supported"),
        "message says it is unsupported"
    );
}

#[test]
fn negative_dimensions() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut b) = valid(d.path(), "neg.mrc");
    put_i32(&mut b, 4, -6);
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(fault_of(&p), Fault::Dimensions { ny: -6, .. }));
}

#[test]
fn absurd_dimensions_fail_fast_without_allocating() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut b) = valid(d.path(), "huge.mrc");
    for at in [0, 4, 8] {
        put_i32(&mut b, at, 100_000);
    }
    b.truncate(1024);
    std::fs::write(&p, &b).unwrap();
    let t = std::time::Instant::now();
    assert!(matches!(
        fault_of(&p),
        Fault::Dimensions { nx: 100_000, .. }
    ));
    assert!(MrcStack::open_with(&p, ReadOptions::permissive()).is_err());
    // 4e15 bytes claimed: an allocation or a read attempt would take far longer than this (or abort).
    assert!(t.elapsed().as_secs_f64() < 1.0, "took {:?}", t.elapsed());
    // Large but below the 1 PiB cap: reported as truncated, again without allocating.
    let mut b2 = b.clone();
    for at in [0, 4, 8] {
        put_i32(&mut b2, at, 20_000);
    }
    std::fs::write(&p, &b2).unwrap();
    assert!(matches!(
        fault_of(&p),
        Fault::Truncated {
            expected: 32_000_000_000_000,
            ..
        }
    ));
}

#[test]
fn absurd_dimensions_in_gzip_fail_without_allocating() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let (_, mut b) = valid(d.path(), "huge.mrc");
    for at in [0, 4, 8] {
        put_i32(&mut b, at, 20_000);
    }
    let p = d.path().join("huge.mrc.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&b).unwrap();
    std::fs::write(&p, enc.finish().unwrap()).unwrap();
    assert!(matches!(fault_of(&p), Fault::Truncated { .. }));
}

#[test]
fn nan_in_data() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut b) = valid(d.path(), "nan.mrc");
    // Voxel x=3, y=2, z=1 of the 8 x 6 x 2 stack.
    let idx = 48 + 2 * 8 + 3;
    b[1024 + 4 * idx..1024 + 4 * idx + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    match fault_of(&p) {
        Fault::NonFinite {
            index,
            x,
            y,
            z,
            value,
        } => {
            assert_eq!((index, x, y, z), (idx as u64, 3, 2, 1));
            assert!(value.is_nan());
        }
        f => panic!("wrong fault {f:?}"),
    }
    // Image 0 is clean and reads strictly; image 1 does not.
    let s = MrcStack::open(&p).unwrap();
    assert!(s.read_image(0).is_ok());
    assert!(s.read_image(1).is_err());
    // Permissive: the data come through with a warning; validate lists it.
    let m = read_with(&p, ReadOptions::permissive()).unwrap();
    assert!(m.data[idx].is_nan());
    assert!(m.warnings.iter().any(|w| w.field == "data"));
    assert!(validate(&p).unwrap().iter().any(|w| w.field == "data"));
}

#[test]
fn unrecognised_machine_stamp() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut b) = valid(d.path(), "stamp.mrc");
    b[212..216].copy_from_slice(&[0, 0, 0, 0]);
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(fault_of(&p), Fault::MachineStamp { .. }));
    let m = read_with(&p, ReadOptions::permissive()).unwrap();
    assert_eq!(m.byte_order, ByteOrder::Little);
    assert_eq!(m.data[5], 2.5);
    assert!(m.warnings.iter().any(|w| w.field == "machst"));
}

#[test]
fn machine_stamp_that_lies() {
    // A big-endian file stamped little-endian ("seen in the wild"): permissive reads it right from the header
    // values, strict refuses.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("liar.mrc");
    let data: Vec<f32> = (0..96).map(|i| i as f32).collect();
    let opts = WriteOptions {
        byte_order: ByteOrder::Big,
        ..WriteOptions::default()
    };
    write(&p, &data, [8, 6, 2], &opts).unwrap();
    let mut b = std::fs::read(&p).unwrap();
    b[212..216].copy_from_slice(&ByteOrder::Little.machine_stamp());
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(fault_of(&p), Fault::MachineStamp { .. }));
    let m = read_with(&p, ReadOptions::permissive()).unwrap();
    assert_eq!((m.byte_order, m.data.clone()), (ByteOrder::Big, data));
}

#[test]
fn missing_map_id() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut b) = valid(d.path(), "mapid.mrc");
    b[208..212].copy_from_slice(b"\0\0\0\0");
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(fault_of(&p), Fault::NotMrc { .. }));
    let m = read_with(&p, ReadOptions::permissive()).unwrap();
    assert!(m.warnings.iter().any(|w| w.field == "map"));
    assert!(validate(&p).unwrap().iter().any(|w| w.field == "map"));
}

#[test]
fn corrupt_gzip() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.mrc.gz");
    let mut b = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    b.extend_from_slice(&[0xff; 64]);
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(fault_of(&p), Fault::Gzip(_)));
}

#[test]
fn trailing_bytes_are_a_warning_and_a_deviation() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut b) = valid(d.path(), "trail.mrc");
    b.extend_from_slice(&[0; 16]);
    std::fs::write(&p, &b).unwrap();
    let m = read(&p).unwrap();
    assert_eq!(m.data.len(), 96);
    assert!(m.warnings.iter().any(|w| w.field == "file size"));
    assert!(validate(&p).unwrap().iter().any(|w| w.field == "file size"));
}

#[test]
fn validate_reports_each_header_deviation() {
    let d = tempfile::tempdir().unwrap();
    let (p, b) = valid(d.path(), "dev.mrc");
    assert!(validate(&p).unwrap().is_empty());
    let hb: &[u8; 1024] = b[..1024].try_into().unwrap();
    let base = Header::parse(hb, ByteOrder::Little);
    type Edit = Box<dyn Fn(&mut Header)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("nversion", Box::new(|h| h.nversion = 0)),
        ("mapc/mapr/maps", Box::new(|h| h.mapc = 2)),
        ("nlabl", Box::new(|h| h.nlabl = 3)),
        ("dmax", Box::new(|h| h.dmax = 1000.0)),
        ("dmean", Box::new(|h| h.dmean = 20.0)),
        ("rms", Box::new(|h| h.rms = 1.0)),
        ("cella.x", Box::new(|h| h.cella[0] = -1.0)),
    ];
    for (field, f) in &cases {
        let mut h = base.clone();
        f(&mut h);
        let mut bb = b.clone();
        bb[..1024].copy_from_slice(&h.to_bytes(ByteOrder::Little));
        std::fs::write(&p, &bb).unwrap();
        let devs = validate(&p).unwrap();
        assert_eq!(devs.len(), 1, "{field}: {devs:?}");
        assert_eq!(devs[0].field, *field);
    }
    // exttyp unset with an extended header present.
    let mut h = base.clone();
    h.nsymbt = 16;
    let mut bb = h.to_bytes(ByteOrder::Little).to_vec();
    bb.extend_from_slice(&[0; 16]);
    bb.extend_from_slice(&b[1024..]);
    std::fs::write(&p, &bb).unwrap();
    let devs = validate(&p).unwrap();
    assert_eq!(
        devs.iter().map(|d| d.field.as_str()).collect::<Vec<_>>(),
        vec!["exttyp"]
    );
}

#[test]
fn writing_values_a_mode_cannot_hold_is_refused_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        (cryoden_io::Mode::Float32, f32::NAN, "NaN"),
        (cryoden_io::Mode::Float32, f32::INFINITY, "inf"),
        (cryoden_io::Mode::Uint16, -1.0, "-1"),
        (cryoden_io::Mode::Int16, 0.5, "0.5"),
        (cryoden_io::Mode::Float16, 1e6, "1000000"),
    ];
    for (mode, bad, shown) in cases {
        let p = d.path().join("out.mrc");
        let mut data = vec![1.0f32; 24];
        data[12 + 4 + 1] = bad; // x = 1, y = 1 of the 4 x 3 image 1
        let opts = WriteOptions {
            mode,
            ..WriteOptions::default()
        };
        let err = write(&p, &data, [4, 3, 2], &opts).unwrap_err().to_string();
        assert!(
            err.contains("out.mrc") && err.contains(shown) && err.contains("x=1, y=1, image 1"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "nothing left behind for {mode:?}"
        );
    }
}
