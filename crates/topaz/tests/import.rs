//! `import`: Topaz files → cryoden checkpoints (detection, refusals, round trip through the checkpoint format).

mod common;

use std::path::PathBuf;

use common::{pretrained_dir, run_python};
use cryoden_nn::checkpoint::{load_weights, read_meta};
use cryoden_nn::Arch;
use cryoden_topaz::{import, write_checkpoint, ArchChoice, Error};

fn pretrained(name: &str) -> PathBuf {
    pretrained_dir().join(name)
}

#[test]
fn imports_the_pretrained_unets_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    for (file, arch, params) in [
        ("unet_L2_v0.2.2.sav", Arch::TopazUnet, 1_105_809),
        ("unet_small_L1_v0.2.2.sav", Arch::TopazUnetSmall, 649_137),
    ] {
        let imported = import(&pretrained(file), ArchChoice::Auto).unwrap();
        assert_eq!(imported.model.arch(), &arch);
        assert_eq!(imported.model.params().num_params(), params);
        let out = tmp.path().join(format!("{file}.safetensors"));
        write_checkpoint(&imported, &out).unwrap();
        let back = load_weights(&out, Some(&arch)).unwrap();
        assert_eq!(
            back.params, imported.params,
            "{file}: weights changed in the round trip"
        );
        let (a, meta) = read_meta(&out).unwrap();
        assert_eq!(a, arch);
        assert_eq!(meta["normalize"], "zscore");
        assert_eq!(meta["imported_from"]["file"], file);
        assert_eq!(meta["imported_from"]["container"], "legacy");
        assert_eq!(meta["imported_from"]["sha256"].as_str().unwrap().len(), 64);
        // Every tensor of the file, bit for bit, in PyTorch layout.
        for (name, shape, v) in back.model.params().export_torch(&back.params).unwrap() {
            let t = imported.source.get(&name).unwrap();
            assert_eq!(t.shape, shape, "{name}");
            assert_eq!(t.to_f32().unwrap(), v, "{name}");
        }
    }
}

#[test]
fn explicit_arch_must_match_the_file() {
    let ok = import(&pretrained("unet_L2_v0.2.2.sav"), "unet".parse().unwrap()).unwrap();
    assert_eq!(ok.model.arch(), &Arch::TopazUnet);
    let err = import(
        &pretrained("unet_L2_v0.2.2.sav"),
        ArchChoice::TopazUnetSmall,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("--arch topaz-unet-small") && msg.contains("holds a topaz-unet"),
        "{msg}"
    );
    assert!("resnet".parse::<ArchChoice>().is_err());
}

#[test]
fn refuses_topaz_networks_cryoden_does_not_have() {
    for (file, expect) in [
        ("fcnn_L1_v0.2.2.sav", "`fcnn`"),
        ("affine_L1_v0.2.2.sav", "`affine`"),
        ("unet-3d-10a-v0.2.4.sav", "3D model"),
        ("unet_L2_v0.2.1.sav", "unet-v0.2.1 uses kernels 7 and 3"),
    ] {
        let err = import(&pretrained(file), ArchChoice::Auto).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{file}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(file) && msg.contains(expect), "{file}: {msg}");
    }
}

/// What `topaz denoise --save-prefix` writes: `torch.save(model)` of the whole module, zip container.
#[test]
fn imports_a_user_trained_whole_module() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model_epoch010.sav");
    run_python(&[
        "-c",
        &format!(
            "import torch\nfrom topaz.denoising.models import UDenoiseNetSmall\ntorch.manual_seed(3)\n\
             torch.save(UDenoiseNetSmall(width=11, top_width=5), '{}')",
            path.display()
        ),
    ]);
    let imported = import(&path, ArchChoice::Auto).unwrap();
    assert_eq!(imported.model.arch(), &Arch::TopazUnetSmall);
    assert_eq!(
        imported.meta["imported_from"]["module_class"],
        "topaz.denoising.models.UDenoiseNetSmall"
    );
    assert_eq!(imported.meta["imported_from"]["container"], "zip");
}
