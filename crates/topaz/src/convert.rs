//! Topaz model → cryoden checkpoint: recognise the network from its tensors, load them into cryoden's
//! `topaz-unet` / `topaz-unet-small` by Topaz's own state_dict names, and record Topaz's normalisation.
//!
//! Topaz (`topaz denoise`, topaz/denoise.py `denoise_image` + `Denoise._denoise`) standardises each micrograph
//! with its own mean and standard deviation, runs the network, and maps the result back (`y·std + mean`). The
//! checkpoint's metadata says so (`"normalize": "zscore"` plus the details in `"normalization"`), so
//! `cryoden denoise` applies the same map around the network.

use std::path::Path;
use std::str::FromStr;

use cryoden_nn::{checkpoint, Arch, Model};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::torch_file::{self, TorchFile};

/// Which cryoden network a Topaz file is loaded into (`--arch` of `cryoden import-topaz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchChoice {
    /// Recognise the network from the tensor names and shapes.
    Auto,
    /// Topaz's `UDenoiseNet(nf=48, base_width=11, top_width=5)` (pretrained `unet`).
    TopazUnet,
    /// Topaz's `UDenoiseNetSmall(nf=48, width=11, top_width=5)` (pretrained `unet-small`).
    TopazUnetSmall,
}

impl FromStr for ArchChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ArchChoice::Auto),
            // Topaz's names (`topaz denoise --arch unet`) and cryoden's.
            "unet" | "topaz-unet" => Ok(ArchChoice::TopazUnet),
            "unet-small" | "topaz-unet-small" => Ok(ArchChoice::TopazUnetSmall),
            other => Err(format!(
                "unknown architecture {other:?}: choose auto, unet (= topaz-unet) or unet-small (= topaz-unet-small)"
            )),
        }
    }
}

/// A Topaz model read and loaded into a cryoden network, ready to be written as a checkpoint.
#[derive(Debug)]
pub struct Imported {
    pub model: Model,
    /// Flat parameters in the model's internal layout.
    pub params: Vec<f32>,
    /// The checkpoint's `meta` JSON (normalisation and provenance).
    pub meta: serde_json::Value,
    /// What was read from the file.
    pub source: TorchFile,
}

/// Reads a Topaz `.sav` (pretrained state_dict or user-trained whole module) and loads it into cryoden's network.
pub fn import(path: &Path, choice: ArchChoice) -> Result<Imported, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let source = torch_file::load_bytes(&bytes, path)?;
    let detected = detect(&source).map_err(|msg| Error::Unsupported {
        path: path.to_path_buf(),
        msg,
    })?;
    let wanted = match choice {
        ArchChoice::Auto => detected.clone(),
        ArchChoice::TopazUnet => Arch::TopazUnet,
        ArchChoice::TopazUnetSmall => Arch::TopazUnetSmall,
    };
    if wanted != detected {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            msg: format!(
                "--arch {} was asked for, but the file holds a {} (by its tensor names and shapes); use --arch auto",
                wanted.name(),
                detected.name()
            ),
        });
    }
    let model = Model::new(wanted)?;
    let mut named = Vec::with_capacity(source.tensors.len());
    for (name, t) in &source.tensors {
        let v = t.to_f32().ok_or_else(|| Error::Unsupported {
            path: path.to_path_buf(),
            msg: format!(
                "tensor {name} is {} (integer), not a network weight",
                t.dtype.storage_name()
            ),
        })?;
        named.push((name.as_str(), t.shape.as_slice(), v));
    }
    let params = checkpoint::params_from_torch(
        path,
        model.params(),
        named.iter().map(|(n, s, v)| (*n, *s, v.as_slice())),
    )?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta = serde_json::json!({
        "normalize": "zscore",
        "normalization": {
            "method": "zscore",
            "scope": "each whole micrograph, before the network",
            "center": "mean",
            "scale": "standard deviation (Topaz: numpy std, then torch's unbiased std of the standardised image)",
            "inverse": "output * std + mean, as topaz denoise without --normalize",
        },
        "imported_from": {
            "tool": "topaz-denoise",
            "file": file_name,
            "sha256": hex(&Sha256::digest(&bytes)),
            "container": match source.container {
                torch_file::Container::Legacy => "legacy",
                torch_file::Container::Zip => "zip",
            },
            "module_class": source.module_class,
        },
        "topaz_equivalent": format!(
            "topaz denoise -m {} --patch-size -1",
            if model.arch() == &Arch::TopazUnet { "unet" } else { "unet-small" }
        ),
    });
    Ok(Imported {
        model,
        params,
        meta,
        source,
    })
}

/// Writes the imported model as a cryoden weights file (atomically: a temporary name, then rename).
pub fn write_checkpoint(imported: &Imported, out: &Path) -> Result<(), Error> {
    checkpoint::save_weights(out, &imported.model, &imported.params, &imported.meta)?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Recognises the network from its tensors; unsupported Topaz networks are named.
pub fn detect(file: &TorchFile) -> Result<Arch, String> {
    let shape = |name: &str| file.get(name).map(|t| t.shape.clone());
    let has = |name: &str| file.get(name).is_some();
    if has("filter.weight") {
        return Err("this is Topaz's `affine` model (one 31×31 linear filter), which cryoden does not have; \
                    supported: Topaz's unet and unet-small"
            .into());
    }
    if has("net.0.weight") {
        return Err("this is Topaz's `fcnn` model (DenoiseNet2), which cryoden does not have; supported: Topaz's \
                    unet and unet-small"
            .into());
    }
    let Some(first) = shape("enc1.0.weight") else {
        let names: Vec<&str> = file
            .tensors
            .iter()
            .take(4)
            .map(|(n, _)| n.as_str())
            .collect();
        return Err(format!(
            "not a Topaz denoising U-Net: no enc1.0.weight (first tensors: {}); supported: Topaz's unet and unet-small",
            names.join(", ")
        ));
    };
    if first.len() == 5 {
        return Err("this is a Topaz 3D model (UDenoiseNet3D, for tomograms); cryoden denoises 2D micrographs only".into());
    }
    let (arch, topaz) = if has("enc6.0.weight") {
        (Arch::TopazUnet, "UDenoiseNet")
    } else if has("enc4.0.weight") && !has("enc5.0.weight") {
        (Arch::TopazUnetSmall, "UDenoiseNetSmall")
    } else {
        return Err(
            "a Topaz U-Net with an unknown number of levels (expected enc1..enc6 or enc1..enc4)"
                .into(),
        );
    };
    // cryoden's Topaz networks have Topaz's pretrained hyper-parameters: nf 48, first kernel 11, top kernel 5.
    let top = shape("dec1.0.weight").unwrap_or_default();
    if first.len() != 4 || first[0] != 48 || first[2] != 11 || top.len() != 4 || top[2] != 5 {
        return Err(format!(
            "a Topaz {topaz} with nf={}, first kernel {}, top kernel {} (enc1.0.weight {first:?}, dec1.0.weight \
             {top:?}); cryoden's {} is nf=48 with kernels 11 and 5 (Topaz's unet and unet-small as shipped since \
             v0.2.2; the older unet-v0.2.1 uses kernels 7 and 3 and is not supported)",
            first.first().copied().unwrap_or(0),
            first.get(2).copied().unwrap_or(0),
            top.get(2).copied().unwrap_or(0),
            arch.name()
        ));
    }
    Ok(arch)
}
