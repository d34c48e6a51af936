//! The restricted unpickler against `torch.load` itself: every Topaz pretrained file, state_dicts and whole
//! modules in both containers, and hostile or damaged files (one test per fault).

mod common;

use std::path::{Path, PathBuf};

use common::{pretrained_dir, read_dump, run_python};
use cryoden_topaz::{Container, Error, PickleError};

/// Loads each file with cryoden-topaz and with torch.load (one Python run for all), and requires identical names,
/// order, shapes and bits.
fn assert_match_torch(files: &[PathBuf], dir: &Path) -> Vec<cryoden_topaz::TorchFile> {
    let dumps: Vec<PathBuf> = (0..files.len())
        .map(|i| dir.join(format!("dump{i}.safetensors")))
        .collect();
    let script = common::python_dir().join("dump_torch.py");
    let mut args = vec![script.to_str().unwrap()];
    for (f, d) in files.iter().zip(&dumps) {
        args.push(f.to_str().unwrap());
        args.push(d.to_str().unwrap());
    }
    run_python(&args);
    files
        .iter()
        .zip(&dumps)
        .map(|(file, dump)| compare(file, dump))
        .collect()
}

fn compare(file: &Path, dump: &Path) -> cryoden_topaz::TorchFile {
    let ours = cryoden_topaz::load(file).unwrap_or_else(|e| panic!("{e}"));
    let (theirs, meta) = read_dump(dump);
    assert_eq!(
        ours.tensors.len(),
        theirs.len(),
        "{}: tensor count",
        file.display()
    );
    for ((name, t), (tname, tshape, tvals)) in ours.tensors.iter().zip(&theirs) {
        assert_eq!(name, tname, "{}: order of keys", file.display());
        assert_eq!(&t.shape, tshape, "{}: shape of {name}", file.display());
        let v = t.to_f32().expect("float tensor");
        // Bit-exact: both read the same little-endian f32 bytes.
        let same = v.iter().zip(tvals).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{}: values of {name} differ", file.display());
    }
    let class = meta.get("module_class").cloned().unwrap_or_default();
    assert_eq!(ours.module_class.clone().unwrap_or_default(), class);
    ours
}

#[test]
fn every_pretrained_file_equals_torch_load() {
    let dir = pretrained_dir();
    let tmp = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sav"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        7,
        "topaz-em 0.3.20 ships 7 denoising models in {}",
        dir.display()
    );
    for t in assert_match_torch(&files, tmp.path()) {
        assert_eq!(t.container, Container::Legacy);
        assert!(t.module_class.is_none());
    }
    // The default model: 1,105,809 parameters (FACTS.md §4).
    let unet = cryoden_topaz::load(&dir.join("unet_L2_v0.2.2.sav")).unwrap();
    assert_eq!(
        unet.tensors.iter().map(|(_, t)| t.numel()).sum::<usize>(),
        1_105_809
    );
}

/// Topaz's own classes, saved whole (`topaz denoise --save-prefix` does `torch.save(model, path)`) and as
/// state_dicts, in the zip container (PyTorch ≥ 1.6) and the legacy one.
#[test]
fn whole_modules_and_zip_files_equal_torch_load() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    run_python(&[
        "-c",
        &format!(
            r#"
import torch
from topaz.denoising.models import UDenoiseNet, UDenoiseNetSmall
torch.manual_seed(0)
small = UDenoiseNetSmall(width=11, top_width=5)
big = UDenoiseNet(base_width=7, top_width=3)
torch.save(small, "{d}/small_module_zip.sav")
torch.save(big, "{d}/big_module_legacy.sav", _use_new_zipfile_serialization=False)
torch.save(small.state_dict(), "{d}/small_state_zip.pt")
# A non-contiguous tensor sharing a storage with another, to exercise strides and shared storages.
w = torch.arange(24, dtype=torch.float32).reshape(4, 6)
torch.save({{"w": w, "wt": w.t(), "half": w.half(), "col": w[:, 2]}}, "{d}/strided_zip.pt")
torch.save({{"w": w, "wt": w.t(), "col": w[:, 2]}}, "{d}/strided_legacy.pt", _use_new_zipfile_serialization=False)
# A broadcast view: 10^6 elements from a one-element storage (refused: never in a model, a memory bomb otherwise).
torch.save({{"b": torch.zeros(1).expand(1000000)}}, "{d}/broadcast_zip.pt")
"#
        ),
    ]);
    let names = [
        "small_module_zip.sav",
        "big_module_legacy.sav",
        "small_state_zip.pt",
    ];
    let files: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
    let t = assert_match_torch(&files, tmp.path());
    assert_eq!(t[0].container, Container::Zip);
    assert_eq!(
        t[0].module_class.as_deref(),
        Some("topaz.denoising.models.UDenoiseNetSmall")
    );
    assert_eq!(t[1].container, Container::Legacy);
    assert_eq!(
        t[1].module_class.as_deref(),
        Some("topaz.denoising.models.UDenoiseNet")
    );
    assert_eq!(
        (t[2].container, t[2].module_class.as_deref()),
        (Container::Zip, None)
    );
    let strided = cryoden_topaz::load(&tmp.path().join("strided_zip.pt")).unwrap();
    let wt = strided.get("wt").unwrap();
    assert_eq!(wt.shape, vec![6, 4]);
    assert_eq!(&wt.to_f32().unwrap()[..5], &[0.0, 6.0, 12.0, 18.0, 1.0]);
    assert_eq!(
        strided.get("col").unwrap().to_f32().unwrap(),
        vec![2.0, 8.0, 14.0, 20.0]
    );
    assert_eq!(strided.get("half").unwrap().to_f32().unwrap()[23], 23.0);
    let legacy = cryoden_topaz::load(&tmp.path().join("strided_legacy.pt")).unwrap();
    assert_eq!(legacy.get("wt"), strided.get("wt"));
    assert_eq!(legacy.get("col"), strided.get("col"));
    let err = cryoden_topaz::load(&tmp.path().join("broadcast_zip.pt")).unwrap_err();
    assert!(
        err.to_string()
            .contains("tensor b: 1000000 elements from a storage of 1"),
        "{err}"
    );
}

/// Writes a legacy-container file whose object pickle is `payload` (a pickle made by Python's own pickler from
/// an object whose `__reduce__` names a dangerous callable). Nothing is executed by either side.
fn hostile_legacy_file(dir: &Path, name: &str, reduce: &str) -> PathBuf {
    let path = dir.join(name);
    run_python(&[
        "-c",
        &format!(
            r#"
import pickle, struct
class Evil:
    def __reduce__(self):
        return {reduce}
with open("{p}", "wb") as f:
    pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({{"protocol_version": 1001, "little_endian": True, "type_sizes": {{}}}}, f, protocol=2)
    pickle.dump({{"enc1.0.weight": Evil()}}, f, protocol=2)
    pickle.dump([], f, protocol=2)
"#,
            p = path.display()
        ),
    ]);
    path
}

#[test]
fn refuses_os_system() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("pwned");
    let f = hostile_legacy_file(
        tmp.path(),
        "evil.sav",
        &format!("(__import__('os').system, ('touch {}',))", marker.display()),
    );
    let err = cryoden_topaz::load(&f).unwrap_err();
    match &err {
        Error::Pickle {
            reason: PickleError::ForbiddenGlobal { module, name, .. },
            ..
        } => {
            assert_eq!((module.as_str(), name.as_str()), ("posix", "system"));
        }
        other => panic!("expected a refused global, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("evil.sav") && msg.contains("posix.system") && msg.contains("refused"),
        "{msg}"
    );
    assert!(!marker.exists(), "the payload ran");
}

#[test]
fn refuses_builtins_exec() {
    let tmp = tempfile::tempdir().unwrap();
    let f = hostile_legacy_file(tmp.path(), "exec.sav", "(exec, ('import os',))");
    let err = cryoden_topaz::load(&f).unwrap_err();
    assert!(
        matches!(&err, Error::Pickle { reason: PickleError::ForbiddenGlobal { name, .. }, .. } if name == "exec"),
        "{err}"
    );
}

#[test]
fn refuses_a_class_outside_the_allowlist_even_as_a_module() {
    // subprocess.Popen looks like a class name; only torch.nn.modules.* and topaz.* classes are records.
    let tmp = tempfile::tempdir().unwrap();
    let f = hostile_legacy_file(
        tmp.path(),
        "popen.sav",
        "(__import__('subprocess').Popen, (['true'],))",
    );
    let err = cryoden_topaz::load(&f).unwrap_err();
    assert!(
        // Python's protocol-2 pickler writes subprocess.Popen under its Python 2 name, commands.Popen.
        matches!(&err, Error::Pickle { reason: PickleError::ForbiddenGlobal { name, .. }, .. } if name == "Popen"),
        "{err}"
    );
}

fn unet_small_bytes() -> (PathBuf, Vec<u8>) {
    let p = pretrained_dir().join("unet_small_L1_v0.2.2.sav");
    let b = std::fs::read(&p).unwrap();
    (p, b)
}

#[test]
fn refuses_unknown_opcode() {
    let (_, mut bytes) = unet_small_bytes();
    // Byte 139 is the GLOBAL that opens the state_dict pickle; INST ('i') would instantiate a class.
    assert_eq!(bytes[139], b'c');
    bytes[139] = b'i';
    let err = cryoden_topaz::load_bytes(&bytes, Path::new("inst.sav")).unwrap_err();
    match &err {
        Error::Pickle {
            reason: PickleError::UnsupportedOpcode { name, offset, .. },
            ..
        } => {
            assert_eq!((*name, *offset), ("INST", 139));
        }
        other => panic!("expected an unsupported opcode, got {other}"),
    }
    assert!(err.to_string().contains("INST (0x69) at byte 139"), "{err}");
}

#[test]
fn refuses_truncated_files_at_every_cut() {
    let (_, bytes) = unet_small_bytes();
    // Cuts inside each pickle (header, object, keys) and inside the storage data; never a panic, always an error.
    let cuts = (0..3400)
        .step_by(37)
        .chain([3398, 3406, 3410, 100_000, bytes.len() - 1]);
    for cut in cuts {
        let err = cryoden_topaz::load_bytes(&bytes[..cut], Path::new("cut.sav")).err();
        let err = err.unwrap_or_else(|| panic!("a file cut at byte {cut} was accepted"));
        let msg = err.to_string();
        assert!(msg.starts_with("cut.sav"), "cut at {cut}: {msg}");
    }
    let err = cryoden_topaz::load_bytes(&bytes[..2000], Path::new("cut.sav")).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Pickle {
                reason: PickleError::Truncated { .. },
                ..
            }
        ),
        "{err}"
    );
    let err =
        cryoden_topaz::load_bytes(&bytes[..bytes.len() - 1], Path::new("cut.sav")).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn refuses_storage_size_mismatch() {
    let (_, mut bytes) = unet_small_bytes();
    // The first storage's element count follows the key list at 3398; torch would read past its block.
    let count = u64::from_le_bytes(bytes[3398..3406].try_into().unwrap());
    bytes[3398..3406].copy_from_slice(&(count + 1).to_le_bytes());
    let err = cryoden_topaz::load_bytes(&bytes, Path::new("size.sav")).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "holds {} elements but is declared with {count}",
            count + 1
        )),
        "{err}"
    );
}

#[test]
fn refuses_non_torch_files() {
    let err = cryoden_topaz::load_bytes(b"MRC not a model", Path::new("x.mrc")).unwrap_err();
    assert!(matches!(err, Error::NotTorchFile { .. }), "{err}");
    // A pickle that is not PyTorch's magic number.
    let err = cryoden_topaz::load_bytes(b"\x80\x02K\x01.", Path::new("one.pkl")).unwrap_err();
    assert!(err.to_string().contains("magic number"), "{err}");
    let err = cryoden_topaz::load(Path::new("/nonexistent/model.sav")).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("/nonexistent/model.sav"),
        "{err}"
    );
}
