//! The device memory arena (`Gpu::alloc` carves buffers out of large slabs): buffers are aligned, disjoint and
//! independent; a slab goes back to the driver with its last buffer; a training step of the plan's U-Net gives the
//! same bits from a reserved slab, from shared slabs and with one device allocation per buffer (the layout before the
//! arena); out-of-memory errors say what was asked and what to do. The placement arithmetic itself is unit-tested
//! without a GPU in src/device.rs. Needs a GPU: run with `--ignored`.

use cryoden_cuda::device::{arena_size, ARENA_ALIGN};
use cryoden_cuda::{CudaBackend, DType, Gpu, Precision};
use cryoden_nn::{train_step, AdamParams, Arch, LossKind, Model, TrainState};

const MIB: usize = 1 << 20;

fn gpu() -> Gpu {
    match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => panic!("cannot open cuda:0: {e}"),
    }
}

/// Buffers of odd sizes and both dtypes: 256-byte aligned, pairwise disjoint, several per slab; each holds exactly
/// what was written to it, and rewriting one leaves all others unchanged (exact: small integers are exact in bf16).
#[test]
#[ignore = "needs a CUDA GPU"]
fn buffers_are_aligned_disjoint_and_independent() {
    let mut g = gpu();
    let lens = [1usize, 3, 64, 65, 1000, 4097, 65_537, 1 << 20, 5, 300_001];
    let bufs: Vec<_> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let dt = if i % 2 == 0 { DType::F32 } else { DType::Bf16 };
            g.alloc(n, dt).unwrap()
        })
        .collect();
    for b in &bufs {
        assert_eq!(b.ptr() % ARENA_ALIGN as u64, 0, "{b:?}");
    }
    for (i, a) in bufs.iter().enumerate() {
        for b in &bufs[i + 1..] {
            let (a0, a1) = (a.ptr(), a.ptr() + (a.len * a.dtype.size()) as u64);
            let (b0, b1) = (b.ptr(), b.ptr() + (b.len * b.dtype.size()) as u64);
            assert!(a1 <= b0 || b1 <= a0, "{a:?} and {b:?} overlap");
        }
    }
    let shared = bufs
        .iter()
        .filter(|b| b.slab_id() == bufs[0].slab_id())
        .count();
    assert_eq!(shared, bufs.len(), "all of these fit one default slab");
    let st = g.arena_stats();
    let want: usize = bufs.iter().map(|b| arena_size(b.len, b.dtype)).sum();
    assert_eq!(st.live_bytes, want, "{st}");
    assert_eq!(st.live_buffers, bufs.len(), "{st}");
    assert!(st.reserved_bytes >= st.live_bytes, "{st}");

    let content =
        |i: usize, k: usize, round: usize| ((i * 7 + k * 3 + round * 11) % 200) as f32 - 100.0;
    for (i, b) in bufs.iter().enumerate() {
        let data: Vec<f32> = (0..b.len).map(|k| content(i, k, 0)).collect();
        g.upload_into(&data, b).unwrap();
    }
    for (i, b) in bufs.iter().enumerate() {
        let got = g.download(b).unwrap();
        assert!(
            got.iter().enumerate().all(|(k, &v)| v == content(i, k, 0)),
            "buffer {i} does not hold what was written to it"
        );
    }
    // Rewrite one buffer at a time (upload, then a fill over all of it); every other keeps its contents.
    for j in 0..bufs.len() {
        let data: Vec<f32> = (0..bufs[j].len).map(|k| content(j, k, 1)).collect();
        g.upload_into(&data, &bufs[j]).unwrap();
        g.fill(&bufs[j], f32::NAN).unwrap();
        for (i, b) in bufs.iter().enumerate() {
            let got = g.download(b).unwrap();
            if i == j {
                assert!(got.iter().all(|v| v.is_nan()), "buffer {j} not filled");
            } else if i < j {
                assert!(got.iter().all(|v| v.is_nan()), "buffer {i} changed by {j}");
            } else {
                assert!(
                    got.iter().enumerate().all(|(k, &v)| v == content(i, k, 0)),
                    "buffer {i} changed when buffer {j} was written"
                );
            }
        }
    }
}

/// A slab stays while any of its buffers (or its reservation) lives and goes back to the driver with the last one:
/// the GPU's free memory comes back (to within 64 MiB: the driver's own bookkeeping).
#[test]
#[ignore = "needs a CUDA GPU"]
fn dropping_the_last_buffer_of_a_slab_frees_it() {
    let g = gpu();
    let free = || {
        g.sync().unwrap();
        g.ctx.mem_get_info().unwrap().0
    };
    let s0 = g.arena_stats();
    let free0 = free();

    // Four 256 MiB buffers in one 1 GiB slab, and one 2 GiB buffer with a slab of its own.
    g.set_arena_slab_bytes(1 << 30);
    let mut small: Vec<_> = (0..4)
        .map(|_| g.alloc(64 * MIB, DType::F32).unwrap())
        .collect();
    let big = g.alloc(1024 * MIB, DType::Bf16).unwrap();
    let id = small[0].slab_id();
    assert!(small.iter().all(|b| b.slab_id() == id));
    assert_ne!(big.slab_id(), id);
    let s1 = g.arena_stats();
    assert_eq!(s1.slabs, s0.slabs + 2, "{s1}");
    assert_eq!(s1.reserved_bytes, s0.reserved_bytes + 3 * (1 << 30), "{s1}");
    assert_eq!(s1.largest_slab, 2 << 30, "{s1}");
    assert_eq!(s1.slab_allocs, s0.slab_allocs + 2, "{s1}");
    let free1 = free();
    assert!(
        free0 - free1 >= 3 << 30,
        "3 GiB of slabs took only {} MiB",
        (free0 - free1) / MIB
    );

    // Three of four gone: the slab stays, with one buffer.
    small.truncate(1);
    assert_eq!(g.arena_live_in(id), 1);
    assert_eq!(g.arena_stats().slabs, s0.slabs + 2);
    drop(big);
    drop(small);
    assert_eq!(g.arena_live_in(id), 0);
    let s2 = g.arena_stats();
    assert_eq!(
        (s2.slabs, s2.reserved_bytes),
        (s0.slabs, s0.reserved_bytes),
        "{s2}"
    );
    let free2 = free();
    assert!(
        free2 + 64 * MIB >= free0,
        "free memory {} MiB did not come back to {} MiB",
        free2 / MIB,
        free0 / MIB
    );

    // A reservation holds its slab with no buffer in it, hands it to buffers, and the last of both frees it.
    let r = g.reserve(512 * MIB + 1).unwrap();
    assert_eq!(r.bytes(), 512 * MIB + 256);
    let a = g.alloc(100 * MIB, DType::F32).unwrap();
    assert_eq!(a.ptr(), r.ptr(), "the reservation is used first");
    drop(r);
    assert_eq!(g.arena_stats().slabs, s0.slabs + 1);
    drop(a);
    assert_eq!(g.arena_stats().slabs, s0.slabs);
    assert!(free() + 64 * MIB >= free0);
}

/// Asking for more than the GPU has: a clear error naming the request, the free and total memory and the fix; the
/// arena works on afterwards.
#[test]
#[ignore = "needs a CUDA GPU"]
fn out_of_memory_says_what_and_what_to_do() {
    let g = gpu();
    let (_, total) = g.ctx.mem_get_info().unwrap();
    let err = g.alloc(total / 2, DType::F32).unwrap_err().to_string();
    println!("{err}");
    for want in [
        "out of GPU memory on cuda:0",
        "asked for",
        "MiB free of",
        "lower --batch",
        "--tile",
    ] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    let b = g.alloc(1000, DType::F32).unwrap();
    assert_eq!(b.ptr() % ARENA_ALIGN as u64, 0);
}

fn images(n: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * h * w)
        .map(|i| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            ((i % w) as f32 * 0.3).sin() * 0.5 + r - 0.5
        })
        .collect()
}

/// What a training run gave: losses, final parameters and Adam moments, the arena's statistics while the model's
/// buffers were alive, how many buffers then lived in slab `watch` (when given), and the device allocations and
/// buffers `model.activations` made.
type Trained = (
    Vec<f32>,
    Vec<f32>,
    Vec<f32>,
    cryoden_cuda::device::ArenaStats,
    usize,
    u64,
    usize,
);

/// Six training steps (bf16: two eager, then one captured as a CUDA graph, the rest replayed).
fn train(
    be: &CudaBackend,
    model: &Model,
    init: &[f32],
    batches: &[(Vec<f32>, Vec<f32>)],
    dims: (usize, usize, usize),
    watch: Option<u64>,
) -> Trained {
    let (n, h, w) = dims;
    let mut state = TrainState::new(be, model, init).unwrap();
    let before = be.gpu().arena_stats();
    let mut acts = model.activations(be, n, h, w).unwrap();
    let after = be.gpu().arena_stats();
    // `Activations::alloc` reserves the exact sum of its buffers (Backend::reserve): one slab holds them all.
    let act_slabs = after.slab_allocs - before.slab_allocs;
    let act_bufs = (after.buffer_allocs - before.buffer_allocs) as usize;
    println!("activations: {act_bufs} buffers from {act_slabs} new device allocations");
    let adam = AdamParams {
        lr: 1e-3,
        weight_decay: 1e-4,
        ..AdamParams::default()
    };
    let losses: Vec<f32> = (0..6)
        .map(|s| {
            let (x, t) = &batches[s % batches.len()];
            train_step(be, model, &mut state, &mut acts, x, t, LossKind::Mse, &adam).unwrap()
        })
        .collect();
    let stats = be.gpu().arena_stats();
    let in_watched = watch.map_or(0, |id| be.gpu().arena_live_in(id));
    let params = TrainState::download(be, &state.params).unwrap();
    let m = TrainState::download(be, &state.m).unwrap();
    (losses, params, m, stats, in_watched, act_slabs, act_bufs)
}

/// The plan's U-Net (unet[32,64,128,256]), bf16, deterministic cuDNN algorithms, CUDA graph on: six training steps
/// give bit-identical losses, parameters and moments (1) from the default shared slabs, (2) from one reserved slab
/// sized by `arena_size` sums (measured from run 1: everything the model's buffers took), which then holds every
/// buffer the run makes, and (3) with one device allocation per buffer, the layout before the arena. Buffers sit at
/// different addresses in each run, so this also checks that nothing depends on where a buffer is.
#[test]
#[ignore = "needs a CUDA GPU"]
fn unet_training_is_bit_identical_through_the_arena() {
    let model = Model::new(Arch::from_name("unet", Some(&[32, 64, 128, 256])).unwrap()).unwrap();
    let init = model.init_params(11);
    let (n, h, w) = (2, 64, 96);
    let batches: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
        .map(|b| {
            let x = images(n, h, w, 5 + b);
            let t = x
                .iter()
                .zip(images(n, h, w, 50 + b))
                .map(|(a, c)| a + 0.2 * c)
                .collect();
            (x, t)
        })
        .collect();
    let be = CudaBackend::new(0, Precision::Bf16).unwrap();
    be.set_deterministic(true);
    // Grow the 8 staging slots of the upload ring to their largest (8 MiB each) first: a slot grows when a larger
    // upload lands on it (the parameters, here), which would make the backend's own memory differ between runs.
    {
        let mut g = be.gpu();
        let big = g.alloc(16 << 20, DType::F32).unwrap();
        g.upload_async(&vec![0f32; 16 << 20], big.ptr(), DType::F32, None)
            .unwrap();
        g.sync().unwrap();
    }

    let (c0, r0) = be.step_graph_stats();
    let shared = train(&be, &model, &init, &batches, (n, h, w), None);
    let (c1, r1) = be.step_graph_stats();
    println!("shared slabs: {}", shared.3);
    assert_eq!(
        shared.5, 1,
        "the activations did not come from one reserved slab"
    );
    assert_eq!(c1 - c0, 1, "one capture");
    assert!(r1 - r0 >= 3, "{} replays", r1 - r0);
    // What stays after the model's buffers are gone: cuDNN workspace, scratch, staging, upload ring.
    let kept = be.gpu().arena_stats();
    println!("after run 1: {kept}");
    assert!(kept.live_bytes < shared.3.live_bytes);

    // Run 2: the model's bytes reserved by the caller (the sum of arena_size over its buffers): its buffers other
    // than the activations (which take their own reservation) land in that slab, and only the activations' slab
    // is made while it runs.
    let need = shared.3.live_bytes - kept.live_bytes;
    let model_buffers = shared.3.live_buffers - kept.live_buffers;
    let r = be.gpu().reserve(need).unwrap();
    let before2 = be.gpu().arena_stats();
    let reserved = train(&be, &model, &init, &batches, (n, h, w), Some(r.slab_id()));
    let in_reservation = reserved.4;
    drop(r);
    println!(
        "reserved {:.1} MiB: {} ({in_reservation} of the model's {model_buffers} buffers in the reservation)",
        need as f64 / MIB as f64,
        reserved.3
    );
    assert_eq!(
        reserved.3.slab_allocs,
        before2.slab_allocs + 1,
        "a buffer of run 2 did not fit the reservations"
    );
    assert_eq!(reserved.3.live_bytes, shared.3.live_bytes);
    assert_eq!(in_reservation, model_buffers - reserved.6);

    // Run 3: one device allocation per new buffer.
    be.gpu().set_arena_slab_bytes(0);
    let before3 = be.gpu().arena_stats();
    let single = train(&be, &model, &init, &batches, (n, h, w), None);
    let new_allocs = single.3.slab_allocs - before3.slab_allocs;
    println!(
        "one allocation per buffer: {} ({new_allocs} new device allocations)",
        single.3
    );
    assert!(new_allocs > 10, "{new_allocs}");

    for (name, run) in [("reserved slab", &reserved), ("one per buffer", &single)] {
        assert_eq!(run.0, shared.0, "{name}: losses differ");
        assert!(run.1 == shared.1, "{name}: parameters differ");
        assert!(run.2 == shared.2, "{name}: Adam moments differ");
    }
}
