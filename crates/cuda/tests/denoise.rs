//! The denoise pipeline (crates/infer) on the GPU against the CPU backend: a stream of images of several sizes,
//! so batches of one image overlap the next one's, buffers change shape between images, and the page-locked
//! transfers (`Backend::upload_host` / `download_host`) run while the forward pass is in flight.
//! Run on the GPU machine: `denoise_tests --ignored` (docs/CUDA.md).

mod common;

use common::{rel_l2, Rng};
use cryoden_cuda::{CudaBackend, Precision};
use cryoden_infer::denoiser::Item;
use cryoden_infer::{Denoiser, Normalization, Options};
use cryoden_nn::{cpu::Cpu, Arch, Backend, Model};
use cryoden_prep::normalize::Method;

fn denoiser<B: Backend>(be: B, opts: Options) -> Denoiser<B> {
    let model = Model::new(Arch::Unet {
        widths: vec![8, 16, 32],
    })
    .unwrap();
    let params = model.init_params(7);
    let norm = Normalization {
        method: Method::Zscore,
        from_checkpoint: true,
    };
    Denoiser::new(be, model, &params, norm, "test".into(), opts).unwrap()
}

/// Denoises `images` as one stream; returns the outputs in order.
fn stream<B: Backend>(d: &mut Denoiser<B>, images: &[(usize, usize, Vec<f32>)]) -> Vec<Vec<f32>> {
    let mut it = images.iter().enumerate();
    let mut outs: Vec<Option<Vec<f32>>> = vec![None; images.len()];
    d.run_stream(
        || {
            it.next().map(|(i, (nx, ny, img))| Item {
                input: img.as_slice(),
                nx: *nx,
                ny: *ny,
                stats: Some(cryoden_infer::image_stats(img, Method::Zscore).unwrap()),
                out: vec![f32::NAN; nx * ny],
                tag: i,
            })
        },
        |i, r, _| outs[i] = Some(r.expect("image denoised")),
    );
    outs.into_iter()
        .map(|o| o.expect("every image came back"))
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_stream_of_mixed_sizes_on_the_gpu_matches_the_cpu() {
    let mut rng = Rng::new(11);
    // Different sizes (and a repeat), so the network's buffers are reallocated mid-stream and back.
    let sizes = [
        (300, 260),
        (1024, 768),
        (1024, 768),
        (300, 260),
        (517, 1030),
    ];
    let images: Vec<_> = sizes
        .iter()
        .map(|&(nx, ny)| (nx, ny, rng.vec(nx * ny, 1.0)))
        .collect();
    for (tile, batch) in [(256, 3), (2048, 1)] {
        let opts = Options {
            tile,
            context: None,
            batch,
        };
        let want = stream(&mut denoiser(Cpu::new(2).unwrap(), opts), &images);
        for p in [Precision::F32, Precision::Bf16] {
            let be = CudaBackend::new(0, p).unwrap();
            let got = stream(&mut denoiser(be, opts), &images);
            // f32: DESIGN's per-model bound. bf16: the error is measured on what the network changed (the mean
            // removed), where this random-weight net's small output variation shows bf16 rounding more than a
            // trained model's does (first run on the H200: 3.1e-2 here, while a trained model's bf16 output is
            // 7e-5 from the CPU's, docs/PERFORMANCE.md); a transfer that raced the forward pass would leave whole
            // windows wrong, errors of order 1.
            let bound = if p == Precision::F32 { 1e-5 } else { 6e-2 };
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                // The mean is restored exactly on both; compare what the network changed.
                let mean = w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
                let c = |v: &[f32]| {
                    v.iter()
                        .map(|&x| (x as f64 - mean) as f32)
                        .collect::<Vec<_>>()
                };
                let e = rel_l2(&c(g), &c(w));
                println!(
                    "tile {tile} batch {batch} {p}: image {k} {:?} rel L2 {e:.2e} (mean kept: {:.2e})",
                    sizes[k],
                    rel_l2(g, w)
                );
                assert!(e <= bound, "image {k}: {e:e} > {bound:e}");
            }
        }
    }
}
