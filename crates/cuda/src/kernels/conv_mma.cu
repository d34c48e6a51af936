// cryoden's own 3x3 convolutions (stride 1, zero padding 1) for bf16 NHWC tensors on the tensor cores, through
// mma.sync m16n8k16 (bf16 in, f32 accumulate). Compiled by NVRTC for sm_80 and newer (mma.rs appends the
// instantiations, one per configuration in its table, so the launch sizes and the kernels come from one place).
//
// Why: cuDNN runs the plan's U-Net's wide shallow layers (8 x 1024^2 x 32-64 channels) at 120-360 TFLOP/s of ~790.
// Such a layer moves 128-192 bytes per pixel for 18-37 kFLOP, so a kernel that reads each input once, keeps the
// weights in shared memory and writes each output once is bound by memory at ~0.25 ms (cuDNN: 0.8-1.25 ms).
//
// Implicit GEMM. A block owns a TH x 16 tile of output pixels (and all output channels) at a time: the input tile
// with its one-pixel halo and the whole weight tensor sit in shared memory, and each tile row of 16 pixels is one
// m16 MMA tile, so the A fragment of tap (ky, kx) is 16 consecutive halo pixels of row r + ky starting at kx.
// Blocks are persistent (as many as fit at once), loop over tiles, and fetch the next tile with cp.async while
// they compute the current one. Out-of-image pixels are zero-filled by cp.async (that is the padding).
//
// Shared-memory rows are padded by 8 elements (16 bytes), so the 8 row addresses of each ldmatrix phase fall into
// distinct 16-byte bank groups (row strides 80, 144, 592 and 1168 bytes: all odd multiples of 16 modulo 128).
//
// Tensor arguments are (pointer, cs) as in elementwise.cu: cs is the channel stride of the underlying buffer, so a
// channel slice of a concatenation buffer is read or written in place. Pointers and cs: multiples of 8 elements.

typedef unsigned short bf16;
typedef long long i64;

#define TW 16
#define PAD 8

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}
// 16-byte global -> shared copy, asynchronous; writes zeros (and reads nothing) when !valid.
__device__ __forceinline__ void cp16(unsigned dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_wait1() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
__device__ __forceinline__ void cp_wait0() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldsm4(unsigned a, unsigned* r) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldsm4t(unsigned a, unsigned* r) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
// c += a (16x16, row) * b (16x8, col).
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two floats to a bf16 pair, round to nearest even (lo in the low half: the lower channel).
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// The forward kernels' epilogue for two adjacent output channels co, co + 1 of one pixel (`out`: its first channel):
// + bias, activation (slope 1: identity), + the old value when accumulating, rounded to bf16.
__device__ __forceinline__ void store_pair(bf16* out, int co, float v0, float v1, const float* bias, float slope,
                                           int accumulate) {
    if (bias) {
        v0 += bias[co];
        v1 += bias[co + 1];
    }
    v0 = v0 > 0.f ? v0 : v0 * slope;
    v1 = v1 > 0.f ? v1 : v1 * slope;
    unsigned* o = (unsigned*)(out + co);
    if (accumulate) {
        unsigned old = *o;
        v0 += __uint_as_float(old << 16);
        v1 += __uint_as_float(old & 0xffff0000u);
    }
    *o = pack_bf16x2(v0, v1);
}

// The backward of the bias + activation that produced the conv's input, fused into the backward-data pass's
// epilogue, on one 16-byte piece: 8 bf16 values d (the pass's output, as stored) scaled by that activation's
// derivative at its output `mk` (slope `mslope`), rounded, and added to this lane's bias-gradient sums. Values and
// rounding as the two passes in turn (elementwise.cu's act_bwd_vec).
__device__ __forceinline__ uint4 act_bwd8(uint4 v, uint4 mk, float mslope, float* bsum) {
    unsigned w[4] = {v.x, v.y, v.z, v.w}, m[4] = {mk.x, mk.y, mk.z, mk.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float d0 = __uint_as_float(w[k] << 16), d1 = __uint_as_float(w[k] & 0xffff0000u);
        d0 = __uint_as_float(m[k] << 16) > 0.f ? d0 : d0 * mslope;
        d1 = __uint_as_float(m[k] & 0xffff0000u) > 0.f ? d1 : d1 * mslope;
        bsum[2 * k] += d0;
        bsum[2 * k + 1] += d1;
        w[k] = pack_bf16x2(d0, d1);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// Epilogue through shared memory, for kernels whose warp owns 16 output pixels x NC contiguous output channels
// (`stage`: that warp's [16][NC + 8] bf16 area): each lane puts its accumulator pairs (bias + activation applied,
// rounded to bf16) in place, then the warp writes whole 16-byte pieces, so a pixel's channels go out in NC / 8 stores
// instead of NC / 2 scattered 4-byte ones. `dst(p)`: where pixel p's first channel goes (null: outside the image).
// `piece(p, part, v)` may change a 16-byte piece before it is stored (the fused activation backward).
struct NoPiece {
    __device__ __forceinline__ void operator()(int, int, uint4&) const {}
};
template <int NC, typename Dst, typename Piece = NoPiece>
__device__ __forceinline__ void warp_store_16px(bf16* stage, const float (*acc)[4], const float* bias, int bias0,
                                                float slope, Dst dst, Piece piece = Piece()) {
    constexpr int SS = NC + 8;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int n = 0; n < NC / 8; n++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int c = n * 8 + 2 * t;
            float v0 = acc[n][half * 2], v1 = acc[n][half * 2 + 1];
            if (bias) {
                v0 += bias[bias0 + c];
                v1 += bias[bias0 + c + 1];
            }
            v0 = v0 > 0.f ? v0 : v0 * slope;
            v1 = v1 > 0.f ? v1 : v1 * slope;
            *(unsigned*)(stage + (g + half * 8) * SS + c) = pack_bf16x2(v0, v1);
        }
    }
    __syncwarp();
    // Lane l writes piece l % (NC / 8) of pixels l / (NC / 8), + 32 / (NC / 8), ... (32 is a multiple of NC / 8).
#pragma unroll
    for (int k = 0; k < NC / 16; k++) {
        const int i = lane + 32 * k, p = i / (NC / 8), part = i % (NC / 8);
        bf16* out = dst(p);
        if (out) {
            uint4 v = *(const uint4*)(stage + p * SS + part * 8);
            piece(p, part, v);
            *(uint4*)(out + part * 8) = v;
        }
    }
    __syncwarp();
}

struct TileAt {
    int n, y0, x0;
};
// Tile t of TH x tw output pixels (tw: TW for the mma.sync kernels, WG_TW for the wgmma one), images in turn.
__device__ __forceinline__ TileAt tile_at(int t, int TH, int tiles_y, int tiles_x, int tw = TW) {
    TileAt a;
    int per_image = tiles_y * tiles_x;
    a.n = t / per_image;
    int r = t - a.n * per_image;
    int ty = r / tiles_x;
    a.y0 = ty * TH;
    a.x0 = (r - ty * tiles_x) * tw;
    return a;
}

// The input tile with its halo, (TH + 2) x (TW + 2) pixels, channels c0 .. c0 + C, into xs (pixel stride C + P;
// zeros outside the image: that is the padding), in 16-byte pieces (x, x_cs and c0 whole pieces). Element type T:
// bf16 here, f32 in conv_x3.cu.
template <typename T, int C, int P, int TH, int THREADS>
__device__ __forceinline__ void load_halo_t(const T* x, int x_cs, int c0, int H, int W, TileAt a, T* xs) {
    constexpr int E = 16 / sizeof(T), CH = C / E, HW = TW + 2, N = (TH + 2) * HW * CH;
    for (int i = threadIdx.x; i < N; i += THREADS) {
        int p = i / CH, c = (i - p * CH) * E;
        int r = p / HW, col = p - r * HW;
        int yy = a.y0 + r - 1, xx = a.x0 + col - 1;
        bool ok = yy >= 0 && yy < H && xx >= 0 && xx < W;
        const T* src = ok ? x + ((i64)(a.n * H + yy) * W + xx) * x_cs + c0 + c : x;
        cp16(smem_u32(xs + p * (C + P) + c), src, ok);
    }
}
template <int C, int TH, int THREADS>
__device__ __forceinline__ void load_halo(const bf16* x, int x_cs, int H, int W, TileAt a, bf16* xs) {
    load_halo_t<bf16, C, PAD, TH, THREADS>(x, x_cs, 0, H, W, a, xs);
}

// The tile itself, TH x TW pixels, channels c0 .. c0 + C, into ds (pixel stride C + P; zeros outside the image).
template <typename T, int C, int P, int TH, int THREADS>
__device__ __forceinline__ void load_tile_t(const T* d, int d_cs, int c0, int H, int W, TileAt a, T* ds) {
    constexpr int E = 16 / sizeof(T), CH = C / E, N = TH * TW * CH;
    for (int i = threadIdx.x; i < N; i += THREADS) {
        int p = i / CH, c = (i - p * CH) * E;
        int r = p / TW, col = p - r * TW;
        int yy = a.y0 + r, xx = a.x0 + col;
        bool ok = yy < H && xx < W;
        const T* src = ok ? d + ((i64)(a.n * H + yy) * W + xx) * d_cs + c0 + c : d;
        cp16(smem_u32(ds + p * (C + P) + c), src, ok);
    }
}
template <int C, int TH, int THREADS>
__device__ __forceinline__ void load_tile(const bf16* d, int d_cs, int H, int W, TileAt a, bf16* ds) {
    load_tile_t<bf16, C, PAD, TH, THREADS>(d, d_cs, 0, H, W, a, ds);
}

// The A (halo pixels) and B (weights) fragments of one 16-deep k step ks = tap * (CI / 16) + kc of the forward
// kernel, from this lane's ldmatrix base addresses (shared-state space, bytes).
template <int CI, int WM, int NT, int XS, int WS>
__device__ __forceinline__ void fwd_frags(unsigned xs_base, unsigned ws_base, int ks, unsigned (&a)[WM][4],
                                          unsigned (&b)[NT][2]) {
    const int tap = ks / (CI / 16), kc = ks % (CI / 16);
    const int ky = tap / 3, kx = tap % 3;
#pragma unroll
    for (int np = 0; np < NT / 2; np++) {
        unsigned r[4];
        ldsm4(ws_base + (np * 16 * WS + tap * CI + kc * 16) * 2, r);
        b[2 * np][0] = r[0];
        b[2 * np][1] = r[1];
        b[2 * np + 1][0] = r[2];
        b[2 * np + 1][1] = r[3];
    }
#pragma unroll
    for (int m = 0; m < WM; m++) ldsm4(xs_base + (((m + ky) * (TW + 2) + kx) * XS + kc * 16) * 2, a[m]);
}

// Forward: y[p, co] = act(bias[co] + sum_{ky, kx, ci} x[p + (ky - 1, kx - 1), ci] * w[co, ky, kx, ci])
// (+ y[p, co] when accumulate). w: KRSC [CO, 3, 3, CI] bf16; bias: CO floats or null; act(v) = v > 0 ? v : slope * v
// (slope 1: identity). Also the backward-data pass, as the forward of the flipped weights (conv3_flip_weights).
// Warps split the tile's rows (WM rows each) and each computes all CO channels of its rows. TU: how far the tap
// loop is unrolled (9: the compiler hoists fragment loads across taps, at ~230 registers; 1: ~70-150).
// Shared memory: weights CO x (9 CI + PAD), then NBUF halo buffers of (TH + 2) x 18 x (CI + PAD), then each warp's
// epilogue staging rows, 16 x (CO + PAD).
// ACT = 1 (the backward-data pass fused with the backward of the previous layer's bias + activation, see
// act_bwd8): `act_y` (channel stride act_cs) is that activation's output, the tensor the conv read, and each block
// writes its bias-gradient sums to partial[blockIdx.x, CO] (fixed order; the host adds the blocks up). No accumulate.
template <int CI, int CO, int TH, int WM, int TU, int PIPE, int NBUF, int ACT>
__device__ __forceinline__ void conv3_fwd(const bf16* __restrict__ x, int x_cs, const bf16* __restrict__ w,
                                          const float* __restrict__ bias, bf16* y, int y_cs, int N, int H, int W,
                                          float slope, int accumulate, const bf16* __restrict__ act_y, int act_cs,
                                          float mslope, float* __restrict__ partial) {
    constexpr int XS = CI + PAD, WS = 9 * CI + PAD, HALO = (TH + 2) * (TW + 2) * XS;
    constexpr int NT = CO / 8, THREADS = TH / WM * 32;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* wsm = (bf16*)smem;
    bf16* xbuf = wsm + CO * WS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q = lane >> 3, rr = lane & 7;
    const int tiles_x = (W + TW - 1) / TW, tiles_y = (H + TH - 1) / TH;
    const int ntiles = N * tiles_y * tiles_x;

    for (int i = threadIdx.x; i < CO * 9 * CI / 8; i += THREADS) {
        int co = i / (9 * CI / 8), k = (i - co * (9 * CI / 8)) * 8;
        cp16(smem_u32(wsm + co * WS + k), w + (i64)co * 9 * CI + k, true);
    }
    int t = blockIdx.x, buf = 0;
    if (t < ntiles) load_halo<CI, TH, THREADS>(x, x_cs, H, W, tile_at(t, TH, tiles_y, tiles_x), xbuf);
    cp_commit();
    // ACT: this lane's bias-gradient sums, channels (lane % NT) * 8 .. + 8 (see the epilogue).
    float bsum[ACT ? 8 : 1];
#pragma unroll
    for (int k = 0; k < (ACT ? 8 : 1); k++) bsum[k] = 0.f;
    bf16* stg = xbuf + NBUF * HALO + warp * 16 * (CO + PAD);
    // This lane's ldmatrix row offsets: B (weights, [co][k]) and A (halo pixels, [pixel][ci]).
    const int b_row = (q >> 1) * 8 + rr, b_k = (q & 1) * 8;
    const int a_pix = lane & 15, a_k = (lane >> 4) * 8;
    for (; t < ntiles; t += gridDim.x) {
        const int tn = t + gridDim.x;
        if (NBUF == 2) {
            if (tn < ntiles)
                load_halo<CI, TH, THREADS>(x, x_cs, H, W, tile_at(tn, TH, tiles_y, tiles_x), xbuf + (buf ^ 1) * HALO);
            cp_commit();
            cp_wait1();
        } else {
            cp_wait0();
        }
        __syncthreads();
        const bf16* xs = xbuf + (NBUF == 2 ? buf * HALO : 0);
        float acc[WM][NT][4];
#pragma unroll
        for (int m = 0; m < WM; m++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[m][n][e] = 0.f;
        if (PIPE == 2) {
            // Version 3: halo row h's A fragment (for one kx and 16 channels) serves output row h - ky for every
            // ky, so a warp with WM rows loads WM + 2 A fragments per (kx, 16 channels) instead of 3 WM, and the B
            // fragments of the three ky once: (WM + 2 + 3 NT / 2) ldmatrix per 3 WM NT MMAs (WM = 4, NT = 4: 0.25
            // per MMA against version 1's 0.375).
            const unsigned xs_base = smem_u32(xs) + ((warp * WM * (TW + 2) + a_pix) * XS + a_k) * 2;
            const unsigned ws_base = smem_u32(wsm) + (b_row * WS + b_k) * 2;
#pragma unroll
            for (int kx = 0; kx < 3; kx++) {
#pragma unroll
                for (int kc = 0; kc < CI / 16; kc++) {
                    unsigned b[3][NT][2];
#pragma unroll
                    for (int ky = 0; ky < 3; ky++)
#pragma unroll
                        for (int np = 0; np < NT / 2; np++) {
                            unsigned r[4];
                            ldsm4(ws_base + (np * 16 * WS + (ky * 3 + kx) * CI + kc * 16) * 2, r);
                            b[ky][2 * np][0] = r[0];
                            b[ky][2 * np][1] = r[1];
                            b[ky][2 * np + 1][0] = r[2];
                            b[ky][2 * np + 1][1] = r[3];
                        }
#pragma unroll
                    for (int h = 0; h < WM + 2; h++) {
                        unsigned a[4];
                        ldsm4(xs_base + ((h * (TW + 2) + kx) * XS + kc * 16) * 2, a);
#pragma unroll
                        for (int ky = 0; ky < 3; ky++) {
                            const int row = h - ky;
                            if (row >= 0 && row < WM) {
#pragma unroll
                                for (int n = 0; n < NT; n++) mma16816(acc[row][n], a, b[ky][n][0], b[ky][n][1]);
                            }
                        }
                    }
                }
            }
        } else if (PIPE == 1) {
            // Version 2: the k loop flattened and unrolled, the fragments of step ks + 1 loaded while the MMAs of
            // step ks run (two register sets), so the ldmatrix latency hides behind the tensor cores.
            constexpr int KS = 9 * CI / 16;
            const unsigned xs_base = smem_u32(xs) + ((warp * WM * (TW + 2) + a_pix) * XS + a_k) * 2;
            const unsigned ws_base = smem_u32(wsm) + (b_row * WS + b_k) * 2;
            unsigned a[2][WM][4], b[2][NT][2];
            fwd_frags<CI, WM, NT, XS, WS>(xs_base, ws_base, 0, a[0], b[0]);
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                if (ks + 1 < KS) fwd_frags<CI, WM, NT, XS, WS>(xs_base, ws_base, ks + 1, a[(ks + 1) & 1], b[(ks + 1) & 1]);
#pragma unroll
                for (int m = 0; m < WM; m++)
#pragma unroll
                    for (int n = 0; n < NT; n++) mma16816(acc[m][n], a[ks & 1][m], b[ks & 1][n][0], b[ks & 1][n][1]);
            }
        } else {
            // Version 1: per tap and 16 channels, load the B fragments, then per row its A fragment and MMAs.
    #pragma unroll TU
            for (int tap = 0; tap < 9; tap++) {
                const int ky = tap / 3, kx = tap % 3;
    #pragma unroll
                for (int kc = 0; kc < CI / 16; kc++) {
                    unsigned b[NT][2];
    #pragma unroll
                    for (int np = 0; np < NT / 2; np++) {
                        unsigned r[4];
                        ldsm4(smem_u32(wsm + (np * 16 + b_row) * WS + tap * CI + kc * 16 + b_k), r);
                        b[2 * np][0] = r[0];
                        b[2 * np][1] = r[1];
                        b[2 * np + 1][0] = r[2];
                        b[2 * np + 1][1] = r[3];
                    }
    #pragma unroll
                    for (int m = 0; m < WM; m++) {
                        const int row = warp * WM + m;
                        unsigned a[4];
                        ldsm4(smem_u32(xs + ((row + ky) * (TW + 2) + a_pix + kx) * XS + kc * 16 + a_k), a);
    #pragma unroll
                        for (int n = 0; n < NT; n++) mma16816(acc[m][n], a, b[n][0], b[n][1]);
                    }
                }
            }
        }
        if (NBUF == 1) {
            // One halo buffer: once every warp is done reading it, fetch the next tile during the epilogue.
            __syncthreads();
            if (tn < ntiles) load_halo<CI, TH, THREADS>(x, x_cs, H, W, tile_at(tn, TH, tiles_y, tiles_x), xbuf);
            cp_commit();
        }
        const TileAt at = tile_at(t, TH, tiles_y, tiles_x);
        if (!ACT && accumulate) {
            // y += ...: each value rounded once, after the addition (4-byte pieces).
#pragma unroll
            for (int m = 0; m < WM; m++) {
                const int yy = at.y0 + warp * WM + m;
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    const int xx = at.x0 + (lane >> 2) + half * 8;
                    if (yy < H && xx < W) {
                        bf16* out = y + ((i64)(at.n * H + yy) * W + xx) * y_cs;
#pragma unroll
                        for (int n = 0; n < NT; n++)
                            store_pair(out, n * 8 + (lane & 3) * 2, acc[m][n][half * 2], acc[m][n][half * 2 + 1],
                                       bias, slope, 1);
                    }
                }
            }
        } else {
            // Through the warp's staging rows (warp_store_16px): each pixel's CO channels in NT 16-byte stores
            // instead of 4 NT scattered 4-byte ones; with ACT, each piece through the activation backward first.
#pragma unroll
            for (int m = 0; m < WM; m++) {
                const int yy = at.y0 + warp * WM + m;
                auto dst = [&](int p) -> bf16* {
                    const int xx = at.x0 + p;
                    return (yy < H && xx < W) ? y + ((i64)(at.n * H + yy) * W + xx) * y_cs : nullptr;
                };
                if constexpr (ACT != 0) {
                    warp_store_16px<CO>(stg, acc[m], bias, 0, slope, dst, [&](int p, int part, uint4& v) {
                        const i64 pix = (i64)(at.n * H + yy) * W + at.x0 + p;
                        v = act_bwd8(v, *(const uint4*)(act_y + pix * act_cs + part * 8), mslope, bsum);
                    });
                } else {
                    warp_store_16px<CO>(stg, acc[m], bias, 0, slope, dst);
                }
            }
        }
        __syncthreads();
        buf ^= 1;
    }
    cp_wait0();  // a block that got no tile still has its weight copies in flight
    if (ACT) {
        // Bias-gradient sums: over the lanes holding the same channels (lane % NT), then over the warps in shared
        // memory (free now), in a fixed order.
#pragma unroll
        for (int k = 0; k < (ACT ? 8 : 1); k++)
#pragma unroll
            for (int off = NT; off < 32; off <<= 1) bsum[k] += __shfl_xor_sync(0xffffffffu, bsum[k], off);
        __syncthreads();
        float* red = (float*)smem;
        if (lane < NT) {
#pragma unroll
            for (int k = 0; k < (ACT ? 8 : 1); k++) red[warp * CO + lane * 8 + k] = bsum[k];
        }
        __syncthreads();
        for (int c = threadIdx.x; c < CO; c += THREADS) {
            float t = 0.f;
            for (int k = 0; k < THREADS / 32; k++) t += red[k * CO + c];
            partial[(i64)blockIdx.x * CO + c] = t;
        }
    }
}

#ifdef CRYODEN_SM90A
// ---- Hopper version of the forward kernel: warpgroup MMA (wgmma, sm_90a) with both operands read from shared
// memory through matrix descriptors, issued asynchronously (no ldmatrix, no per-warp fragment traffic). ----
// A block is one warpgroup (4 warps) and owns a TH x 64 tile: each tile row of 64 pixels is one m64 A operand, so
// tap (ky, kx)'s A is 64 consecutive halo pixels. Layouts without swizzling, in 8 x 8 "core matrices" of 128
// contiguous bytes: the halo as CI / 8 planes of (TH + 2) x 66 pixels x 8 channels (8 consecutive pixels of a plane
// are one core matrix; the next 8 channels are one plane further), the weights as [k / 8][co / 8][8 co][8 k].
#define WG_TW 64

__device__ __forceinline__ unsigned long long wg_desc(unsigned saddr, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((saddr & 0x3FFFF) >> 4) | ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16) |
           ((unsigned long long)((sbo >> 4) & 0x3FFF) << 32);
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// d (64 x 32 f32, 16 per thread) = A (64 x 16) * B (16 x 32) (+ d unless `first`). Starting a sum with scale-d = 0
// instead of zeroing d keeps ordinary instructions off the accumulators, which would make ptxas serialise the
// asynchronous MMAs.
template <int FIRST>
__device__ __forceinline__ void wgmma_n32(float* d, unsigned long long a, unsigned long long b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b), "n"(FIRST ? 0 : 1));
}
// d (64 x 64 f32, 32 per thread) = A (64 x 16) * B (16 x 64) (+ d unless `first`).
template <int FIRST>
__device__ __forceinline__ void wgmma_n64(float* d, unsigned long long a, unsigned long long b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,"
        "%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b), "n"(FIRST ? 0 : 1));
}

template <int C, int TH>
__device__ __forceinline__ void wg_load_halo(const bf16* x, int x_cs, int H, int W, TileAt a, bf16* xs) {
    constexpr int CH = C / 8, HW = WG_TW + 2, HP = (TH + 2) * HW, N = HP * CH;
    for (int i = threadIdx.x; i < N; i += 128) {
        int p = i / CH, c = i - p * CH;
        int r = p / HW, col = p - r * HW;
        int yy = a.y0 + r - 1, xx = a.x0 + col - 1;
        bool ok = yy >= 0 && yy < H && xx >= 0 && xx < W;
        const bf16* src = ok ? x + ((i64)(a.n * H + yy) * W + xx) * x_cs + c * 8 : x;
        cp16(smem_u32(xs + (c * HP + p) * 8), src, ok);
    }
}

template <int CI, int CO, int TH, int NBUF>
__device__ __forceinline__ void conv3_fwd_wg(const bf16* __restrict__ x, int x_cs, const bf16* __restrict__ w,
                                             const float* __restrict__ bias, bf16* y, int y_cs, int N, int H, int W,
                                             float slope, int accumulate) {
    constexpr int HP = (TH + 2) * (WG_TW + 2), HALO = HP * CI, NACC = CO / 2;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16* wsm = (bf16*)smem;
    bf16* xbuf = wsm + 9 * CI * CO;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int tiles_x = (W + WG_TW - 1) / WG_TW, tiles_y = (H + TH - 1) / TH;
    const int ntiles = N * tiles_y * tiles_x;
    auto tile = [&](int t) { return tile_at(t, TH, tiles_y, tiles_x, WG_TW); };
    // Weights into core-matrix order: element (co, k) at ((k / 8) * (CO / 8) + co / 8) * 64 + (co % 8) * 8 + k % 8.
    for (int i = threadIdx.x; i < CO * 9 * CI / 8; i += 128) {
        int co = i / (9 * CI / 8), kk = i - co * (9 * CI / 8);
        cp16(smem_u32(wsm + (kk * (CO / 8) + co / 8) * 64 + (co % 8) * 8), w + (i64)co * 9 * CI + kk * 8, true);
    }
    int t = blockIdx.x, buf = 0;
    if (t < ntiles) wg_load_halo<CI, TH>(x, x_cs, H, W, tile(t), xbuf);
    cp_commit();
    const unsigned w_base = smem_u32(wsm);
    for (; t < ntiles; t += gridDim.x) {
        const int tn = t + gridDim.x;
        if (NBUF == 2) {
            if (tn < ntiles) wg_load_halo<CI, TH>(x, x_cs, H, W, tile(tn), xbuf + (buf ^ 1) * HALO);
            cp_commit();
            cp_wait1();
        } else {
            cp_wait0();
        }
        fence_async_smem();
        __syncthreads();
        const unsigned x_base = smem_u32(xbuf + (NBUF == 2 ? buf * HALO : 0));
        float acc[TH][NACC];
        wg_fence();
#pragma unroll
        for (int r = 0; r < TH; r++)
#pragma unroll
            for (int tap = 0; tap < 9; tap++)
#pragma unroll
                for (int kc = 0; kc < CI / 16; kc++) {
                    const int ky = tap / 3, kx = tap % 3;
                    const unsigned long long da = wg_desc(
                        x_base + (((2 * kc) * HP + (r + ky) * (WG_TW + 2) + kx) * 8) * 2, HP * 16, 128);
                    const unsigned long long db =
                        wg_desc(w_base + ((tap * CI + kc * 16) / 8) * (CO / 8) * 128, (CO / 8) * 128, 128);
                    const bool first = tap == 0 && kc == 0;
                    if (CO == 32) {
                        if (first)
                            wgmma_n32<1>(acc[r], da, db);
                        else
                            wgmma_n32<0>(acc[r], da, db);
                    } else {
                        if (first)
                            wgmma_n64<1>(acc[r], da, db);
                        else
                            wgmma_n64<0>(acc[r], da, db);
                    }
                }
        wg_commit();
        wg_wait0();
        if (NBUF == 1) {
            __syncthreads();
            if (tn < ntiles) wg_load_halo<CI, TH>(x, x_cs, H, W, tile(tn), xbuf);
            cp_commit();
        }
        const TileAt at = tile(t);
#pragma unroll
        for (int r = 0; r < TH; r++) {
            const int yy = at.y0 + r;
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int xx = at.x0 + warp * 16 + (lane >> 2) + half * 8;
                if (yy < H && xx < W) {
                    bf16* out = y + ((i64)(at.n * H + yy) * W + xx) * y_cs;
#pragma unroll
                    for (int j = 0; j < CO / 8; j++)
                        store_pair(out, j * 8 + (lane & 3) * 2, acc[r][4 * j + half * 2], acc[r][4 * j + half * 2 + 1],
                                   bias, slope, accumulate);
                }
            }
        }
        if (NBUF == 2) __syncthreads();
        buf ^= 1;
    }
    cp_wait0();  // a block that got no tile still has its weight copies in flight
}

#define CONV3_FWD_WG(NAME, CI, CO, TH, NBUF)                                                                       \
    extern "C" __global__ void __launch_bounds__(128, 1)                                                          \
        NAME(const bf16* x, int x_cs, const bf16* w, const float* bias, bf16* y, int y_cs, int N, int H, int W,    \
             float slope, int accumulate) {                                                                       \
        conv3_fwd_wg<CI, CO, TH, NBUF>(x, x_cs, w, bias, y, y_cs, N, H, W, slope, accumulate);                     \
    }
#endif

// Weight gradient: partial[blockIdx.x, co, tap, ci] = sum over this block's tiles of dy[p, co] * x[p + tap, ci]
// (f32; the host adds the blocks up in a fixed order, sum_parts). Each warp computes TPW taps of one kernel row
// (TPW = 3: taps 3 ky .. 3 ky + 2, sharing the dy fragments; TPW = 1: one tap), or with COL the three taps of one
// kernel column (sharing the x fragments too, see below), for 32 output channels and CIW input
// channels: an M = 32 (co) x N = CIW (ci) product per tap over K = pixels, 16 pixels (one tile row) per MMA step.
// Warp w: tap group w % (9 / TPW), then the ci part, then the co half. dy^T and x are read with transposing
// ldmatrix. Shared memory: two buffers, each a halo tile (TH + 2) x 18 x (CI + PAD) and a dy tile TH x 16 x
// (CO + PAD).
template <int CI, int CO, int TH, int TPW, int CIW, int COL>
__device__ __forceinline__ void conv3_wgrad(const bf16* __restrict__ x, int x_cs, const bf16* __restrict__ dy,
                                            int dy_cs, float* __restrict__ partial, int N, int H, int W) {
    constexpr int XS = CI + PAD, DS = CO + PAD, HALO = (TH + 2) * (TW + 2) * XS, BUF = HALO + TH * TW * DS;
    constexpr int NT = CIW / 8, GROUPS = 9 / TPW, THREADS = GROUPS * (CI / CIW) * (CO / 32) * 32;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* base = (bf16*)smem;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q = lane >> 3, rr = lane & 7;
    const int group = warp % GROUPS, cip = (warp / GROUPS) % (CI / CIW), coh = warp / (GROUPS * (CI / CIW));
    // Tap of accumulator set j: row taps (ky = group, kx = j) or, with COL, column taps (ky = j, kx = group).
    const int tap0 = group * TPW;
    const int tiles_x = (W + TW - 1) / TW, tiles_y = (H + TH - 1) / TH;
    const int ntiles = N * tiles_y * tiles_x;
    float acc[TPW][2][NT][4];
#pragma unroll
    for (int j = 0; j < TPW; j++)
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[j][m][n][e] = 0.f;

    int t = blockIdx.x, buf = 0;
    if (t < ntiles) {
        const TileAt a = tile_at(t, TH, tiles_y, tiles_x);
        load_halo<CI, TH, THREADS>(x, x_cs, H, W, a, base);
        load_tile<CO, TH, THREADS>(dy, dy_cs, H, W, a, base + HALO);
    }
    cp_commit();
    // ldmatrix.trans row offsets: A = dy^T (rows of ds are pixels, columns co), B = x (rows pixels, columns ci).
    const int a_pix = rr + (q >> 1) * 8, a_co = coh * 32 + (q & 1) * 8;
    const int b_pix = rr + (q & 1) * 8, b_ci = cip * CIW + (q >> 1) * 8;
    for (; t < ntiles; t += gridDim.x) {
        const int tn = t + gridDim.x;
        if (tn < ntiles) {
            const TileAt a = tile_at(tn, TH, tiles_y, tiles_x);
            bf16* nb = base + (buf ^ 1) * BUF;
            load_halo<CI, TH, THREADS>(x, x_cs, H, W, a, nb);
            load_tile<CO, TH, THREADS>(dy, dy_cs, H, W, a, nb + HALO);
        }
        cp_commit();
        cp_wait1();
        __syncthreads();
        const bf16* xs = base + buf * BUF;
        const bf16* ds = xs + HALO;
        if (COL) {
            // Column taps (one kx, ky = 0..2): halo row h's x fragments serve output rows h - ky for every ky, so per
            // halo row the warp loads its B fragments once and one new dy row (the last three stay in registers).
            unsigned a[3][2][4];
#pragma unroll
            for (int h = 0; h < TH + 2; h++) {
                if (h < TH) {
#pragma unroll
                    for (int m = 0; m < 2; m++)
                        ldsm4t(smem_u32(ds + (h * TW + a_pix) * DS + a_co + m * 16), a[h % 3][m]);
                }
#pragma unroll
                for (int np = 0; np < NT / 2; np++) {
                    unsigned b[4];
                    ldsm4t(smem_u32(xs + (h * (TW + 2) + group + b_pix) * XS + np * 16 + b_ci), b);
#pragma unroll
                    for (int ky = 0; ky < 3; ky++) {
                        const int r = h - ky;
                        if (r >= 0 && r < TH) {
#pragma unroll
                            for (int m = 0; m < 2; m++) {
                                mma16816(acc[ky][m][2 * np], a[r % 3][m], b[0], b[1]);
                                mma16816(acc[ky][m][2 * np + 1], a[r % 3][m], b[2], b[3]);
                            }
                        }
                    }
                }
            }
        } else {
#pragma unroll 2
            for (int r = 0; r < TH; r++) {
                unsigned a[2][4];
#pragma unroll
                for (int m = 0; m < 2; m++) ldsm4t(smem_u32(ds + (r * TW + a_pix) * DS + a_co + m * 16), a[m]);
#pragma unroll
                for (int j = 0; j < TPW; j++) {
                    const int tap = tap0 + j, ky = tap / 3, kx = tap % 3;
#pragma unroll
                    for (int np = 0; np < NT / 2; np++) {
                        unsigned b[4];
                        ldsm4t(smem_u32(xs + ((r + ky) * (TW + 2) + kx + b_pix) * XS + np * 16 + b_ci), b);
#pragma unroll
                        for (int m = 0; m < 2; m++) {
                            mma16816(acc[j][m][2 * np], a[m], b[0], b[1]);
                            mma16816(acc[j][m][2 * np + 1], a[m], b[2], b[3]);
                        }
                    }
                }
            }
        }
        __syncthreads();
        buf ^= 1;
    }
    float* out = partial + (i64)blockIdx.x * (CO * 9 * CI);
#pragma unroll
    for (int j = 0; j < TPW; j++)
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    const int co = coh * 32 + m * 16 + (lane >> 2) + half * 8;
                    const int ci = cip * CIW + n * 8 + (lane & 3) * 2;
                    const int tap = COL ? j * 3 + group : tap0 + j;
                    *(float2*)(out + (co * 9 + tap) * CI + ci) =
                        make_float2(acc[j][m][n][half * 2], acc[j][m][n][half * 2 + 1]);
                }
}

// 3x3 convolution with ONE input channel (the U-Net's first layer), zero padding 1, bias + activation fused:
// y[p, co] = act(bias[co] + sum_tap x[p + tap] * w[co, tap]); w: [CO, 3, 3] bf16. As an MMA with K = 16 (the 9 taps,
// then zeros): each tile row of 16 pixels is one m16 A operand built from a shared-memory halo tile of x, and the
// weights are the B fragments, loaded once into registers. Why: elementwise.cu's direct kernel spends ~170
// instructions per pixel and 8 channels on scalar loads, bounds checks and FMAs (0.59 ms at 8 x 1024^2 x 32 against a
// 0.14 ms memory floor); here a warp issues ~8 loads, 4 packs and CO / 8 MMAs per 16 pixels. One TH x 16 tile per
// block (4 warps, TH / 4 rows each); x's channel stride x_cs.
template <int CO, int TH>
__device__ __forceinline__ void conv_in3_mma(const bf16* __restrict__ x, int x_cs, const bf16* __restrict__ w,
                                             const float* __restrict__ bias, bf16* y, int y_cs, int N, int H, int W,
                                             float slope) {
    constexpr int NT = CO / 8, HW = TW + 2;
    __shared__ bf16 xs[(TH + 2) * HW];
    __shared__ __align__(16) bf16 stage_all[4][16 * (CO + 8)];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int tiles_x = (W + TW - 1) / TW, tiles_y = (H + TH - 1) / TH;
    const TileAt at = tile_at(blockIdx.x, TH, tiles_y, tiles_x);
    for (int i = threadIdx.x; i < (TH + 2) * HW; i += 128) {
        int r = i / HW, c = i - r * HW;
        int yy = at.y0 + r - 1, xx = at.x0 + c - 1;
        xs[i] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? x[((i64)(at.n * H + yy) * W + xx) * x_cs] : (bf16)0;
    }
    // This thread's taps in the A and B fragments: k = 2t, 2t + 1 (register 0 / 1) and 2t + 8, 2t + 9 (register
    // 2 / 3); only k < 9 exist. Their offsets in the halo tile, and the B fragments (w[n, k] for n = tile * 8 + g).
    int off[4];
    bool has[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int k = 2 * t + (e & 1) + (e >> 1) * 8;
        has[e] = k < 9;
        off[e] = has[e] ? (k / 3) * HW + k % 3 : 0;
    }
    unsigned b[NT][2];
#pragma unroll
    for (int n = 0; n < NT; n++) {
        const bf16* wn = w + (n * 8 + g) * 9;
        bf16 k0 = wn[2 * t], k1 = wn[2 * t + 1];
        bf16 k8 = has[2] ? wn[2 * t + 8] : (bf16)0;
        b[n][0] = (unsigned)k0 | ((unsigned)k1 << 16);
        b[n][1] = (unsigned)k8;  // k = 2t + 9 is never < 9
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < TH / 4; m++) {
        const int row = warp * (TH / 4) + m;
        const bf16* r0 = xs + row * HW;
        unsigned a[4];
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const bf16* px = r0 + g + half * 8;
            a[half] = (unsigned)px[off[0]] | ((unsigned)px[off[1]] << 16);
            a[2 + half] = has[2] ? (unsigned)px[off[2]] : 0u;
        }
        float acc[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) acc[n][e] = 0.f;
            mma16816(acc[n], a, b[n][0], b[n][1]);
        }
        const int yy = at.y0 + row;
        warp_store_16px<CO>(stage_all[warp], acc, bias, 0, slope, [&](int p) -> bf16* {
            const int xx = at.x0 + p;
            return (yy < H && xx < W) ? y + ((i64)(at.n * H + yy) * W + xx) * y_cs : nullptr;
        });
    }
}

// Weight gradient of conv_in3_mma: partial[blockIdx.x, co * 9 + tap] = sum over this block's pixels p of
// dy[p, co] * x[p + tap] (f32; the host adds the blocks up in a fixed order, as for conv_in3_bwd_filter). As MMAs over
// K = pixels, 16 (one tile row) per step: A = dy^T (CO x 16 pixels, transposing ldmatrix from the dy tile), B = the
// 16 pixels' 9 taps (then zeros) from the x halo tile; CO / 16 x 2 accumulator tiles per warp. Persistent blocks of
// 4 warps (TH / 4 rows each) over TH x 16 tiles. Why: elementwise.cu's kernel (0.52 ms at 8 x 1024^2 x 32) is bound
// by its per-pixel scalar loads and FMAs, like the forward.
template <int CO, int TH>
__device__ __forceinline__ void conv_in3_mma_wgrad(const bf16* __restrict__ x, int x_cs, const bf16* __restrict__ dy,
                                                   int dy_cs, float* __restrict__ partial, int N, int H, int W) {
    constexpr int MT = CO / 16, HW = TW + 2, DS = CO + PAD;
    __shared__ bf16 xs[(TH + 2) * HW];
    __shared__ __align__(16) bf16 ds[TH * TW * DS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int tiles_x = (W + TW - 1) / TW, tiles_y = (H + TH - 1) / TH;
    const int ntiles = N * tiles_y * tiles_x;
    // This lane's taps in the B fragment: n = g (tile 0: taps 0..7; tile 1: tap 8 for g == 0), at pixels k = 2t,
    // 2t + 1 (register 0) and 2t + 8, 2t + 9 (register 1) of the row.
    const int off0 = (g / 3) * HW + g % 3;
    const bool has8 = g == 0;
    float acc[MT][2][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[m][n][e] = 0.f;
    const int a_pix = (lane & 7) + ((lane >> 4) << 3), a_co = ((lane >> 3) & 1) * 8;
    for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        const TileAt at = tile_at(tile, TH, tiles_y, tiles_x);
        for (int i = threadIdx.x; i < (TH + 2) * HW; i += 128) {
            int r = i / HW, c = i - r * HW;
            int yy = at.y0 + r - 1, xx = at.x0 + c - 1;
            xs[i] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? x[((i64)(at.n * H + yy) * W + xx) * x_cs]
                                                             : (bf16)0;
        }
        load_tile<CO, TH, 128>(dy, dy_cs, H, W, at, ds);
        cp_commit();
        cp_wait0();
        __syncthreads();
#pragma unroll
        for (int m = 0; m < TH / 4; m++) {
            const int row = warp * (TH / 4) + m;
            const bf16* xr = xs + row * HW;
            unsigned b[2][2];
            b[0][0] = (unsigned)xr[off0 + 2 * t] | ((unsigned)xr[off0 + 2 * t + 1] << 16);
            b[0][1] = (unsigned)xr[off0 + 2 * t + 8] | ((unsigned)xr[off0 + 2 * t + 9] << 16);
            b[1][0] = has8 ? (unsigned)xr[2 * HW + 2 + 2 * t] | ((unsigned)xr[2 * HW + 2 + 2 * t + 1] << 16) : 0u;
            b[1][1] = has8 ? (unsigned)xr[2 * HW + 2 + 2 * t + 8] | ((unsigned)xr[2 * HW + 2 + 2 * t + 9] << 16) : 0u;
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                // A = dy^T: rows co (16 per tile), columns the row's 16 pixels.
                unsigned a[4];
                ldsm4t(smem_u32(ds + (row * TW + a_pix) * DS + mt * 16 + a_co), a);
                mma16816(acc[mt][0], a, b[0][0], b[0][1]);
                mma16816(acc[mt][1], a, b[1][0], b[1][1]);
            }
        }
        __syncthreads();
    }
    cp_wait0();
    // Sums over the warps in shared memory (free now), in a fixed order: C fragment (row co = g (+ 8), column
    // tap = 2t, 2t + 1 of tile n).
    float* red = (float*)ds;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int co = mt * 16 + g + (e >> 1) * 8, tap = n * 8 + 2 * t + (e & 1);
                if (tap < 9) red[(warp * CO + co) * 9 + tap] = acc[mt][n][e];
            }
    __syncthreads();
    for (int o = threadIdx.x; o < CO * 9; o += 128) {
        partial[(i64)blockIdx.x * CO * 9 + o] = red[o] + red[CO * 9 + o] + red[2 * CO * 9 + o] + red[3 * CO * 9 + o];
    }
}

// 2x2 stride-2 transposed convolution, forward, with bias + activation fused, written straight into y's channel
// window (a slice of the decoder's concatenation buffer):
//   y[n, 2i + a, 2j + b, o] = act(bias[o] + sum_c x[n, i, j, c] * w[c, a, b, o]),   w: [CI, 2, 2, CO] bf16.
// A GEMM of K = CI over N = 4 CO outputs per input pixel. Why: the GEMM + shuffle path (cuDNN's 1x1 backward-data
// into a staging tensor, then a pass that scatters the 2x2 sub-pixels into y) moves the output three times; this
// moves it once. A block keeps the weights in shared memory (k-major, read as B with transposing ldmatrix) and
// loops over tiles of 64 consecutive input pixels: warp (wm, wn) computes pixels wm * 16 .. + 16 against outputs
// wn * NW .. + NW (NW = 4 CO / WN). Persistent blocks, one x buffer.
template <int CI, int CO, int WN>
__device__ __forceinline__ void convt2_fwd(const bf16* __restrict__ x, int x_cs, const bf16* __restrict__ w,
                                           const float* __restrict__ bias, bf16* y, int y_cs, int N, int H, int W,
                                           float slope) {
    constexpr int NO = 4 * CO, NW = NO / WN, NT = NW / 8, TM = 64, THREADS = 4 * WN * 32;
    constexpr int WS = NO + PAD, XS = CI + PAD;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* wsm = (bf16*)smem;
    bf16* xs = wsm + CI * WS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp & 3, wn = warp >> 2;
    bf16* stage = xs + TM * XS + warp * 16 * (CO + 8);
    const int npix = N * H * W, ntiles = (npix + TM - 1) / TM;
    for (int i = threadIdx.x; i < CI * NO / 8; i += THREADS) {
        int k = i / (NO / 8), n = (i - k * (NO / 8)) * 8;
        cp16(smem_u32(wsm + k * WS + n), w + (i64)k * NO + n, true);
    }
    const int a_pix = lane & 15, a_k = (lane >> 4) * 8;
    const int b_k = lane & 15, b_n = (lane >> 4) * 8;
    for (int t = blockIdx.x; t < ntiles; t += gridDim.x) {
        for (int i = threadIdx.x; i < TM * CI / 8; i += THREADS) {
            int p = i / (CI / 8), c = (i - p * (CI / 8)) * 8;
            int q = t * TM + p;
            bool ok = q < npix;
            cp16(smem_u32(xs + p * XS + c), ok ? x + (i64)q * x_cs + c : x, ok);
        }
        cp_commit();
        cp_wait0();
        __syncthreads();
        float acc[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[n][e] = 0.f;
#pragma unroll
        for (int kc = 0; kc < CI / 16; kc++) {
            unsigned a[4];
            ldsm4(smem_u32(xs + (wm * 16 + a_pix) * XS + kc * 16 + a_k), a);
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                unsigned r[4];
                ldsm4t(smem_u32(wsm + (kc * 16 + b_k) * WS + wn * NW + np * 16 + b_n), r);
                mma16816(acc[2 * np], a, r[0], r[1]);
                mma16816(acc[2 * np + 1], a, r[2], r[3]);
            }
        }
        // Each (a, b) sub-pixel's CO channels are one 16-pixel x CO block of the warp's outputs (NW is a multiple
        // of CO), written through shared memory in 16-byte pieces.
#pragma unroll
        for (int sub = 0; sub < NW / CO; sub++) {
            const int col = wn * NW + sub * CO;
            const int a = col / (2 * CO), b = (col / CO) & 1;
            warp_store_16px<CO>(stage, acc + sub * (CO / 8), bias, 0, slope, [&](int p) -> bf16* {
                const int q = t * TM + wm * 16 + p;
                if (q >= npix) return nullptr;
                const int j = q % W, r0 = q / W, i = r0 % H, n = r0 / H;
                return y + ((i64)(n * 2 * H + 2 * i + a) * (2 * W) + 2 * j + b) * y_cs;
            });
        }
        __syncthreads();
    }
    cp_wait0();  // a block that got no tile still has its weight copies in flight
}

// wt[ci, 8 - tap, co] = w[co, tap, ci]: the backward-data pass of a 3x3 conv CO -> CI (padding 1) is the forward
// conv CI' = CO -> CO' = CI with the taps flipped and the channel axes swapped.
extern "C" __global__ void conv3_flip_weights_bf16(const bf16* __restrict__ w, bf16* __restrict__ wt, int ci_n,
                                                   int co_n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= co_n * 9 * ci_n) return;
    int ci = i % ci_n, tap = (i / ci_n) % 9, co = i / (9 * ci_n);
    wt[((i64)ci * 9 + 8 - tap) * co_n + co] = w[i];
}

// Kernel variants (llm.c's habit): the tile rows TH, rows per warp WM, the minimum resident blocks MINB (which caps
// the registers per thread), the tap-loop unrolling TU, the k-loop version PIPE and the halo buffers NBUF (2: the
// next tile loads during this one's MMAs; 1: during its epilogue, leaving room for more resident blocks) differ per
// variant; `cudabench ops` times them all, and mma.rs's AUTO table names the one each shape runs by default.
// the fastest.
#define CONV3_FWD(NAME, CI, CO, TH, WM, MINB, TU, PIPE, NBUF)                                                                      \
    extern "C" __global__ void __launch_bounds__(TH / WM * 32, MINB)                                              \
        NAME(const bf16* x, int x_cs, const bf16* w, const float* bias, bf16* y, int y_cs, int N, int H, int W,    \
             float slope, int accumulate) {                                                                       \
        conv3_fwd<CI, CO, TH, WM, TU, PIPE, NBUF, 0>(x, x_cs, w, bias, y, y_cs, N, H, W, slope, accumulate, nullptr, 0,  \
                                                     0.f, nullptr);                                               \
    }
// The same variant fused with the previous layer's activation backward (ACT = 1; backward-data only).
#define CONV3_FWD_ACT(NAME, CI, CO, TH, WM, MINB, TU, PIPE, NBUF)                                                  \
    extern "C" __global__ void __launch_bounds__(TH / WM * 32, MINB)                                              \
        NAME(const bf16* x, int x_cs, const bf16* w, const float* bias, bf16* y, int y_cs, int N, int H, int W,    \
             float slope, const bf16* act_y, int act_cs, float mslope, float* partial) {                          \
        conv3_fwd<CI, CO, TH, WM, TU, PIPE, NBUF, 1>(x, x_cs, w, bias, y, y_cs, N, H, W, slope, 0, act_y, act_cs,  \
                                                     mslope, partial);                                            \
    }
#define CONV3_WGRAD(NAME, CI, CO, TH, MINB, TPW, CIW, COL)                                                            \
    extern "C" __global__ void __launch_bounds__(9 / TPW * (CI / CIW) * (CO / 32) * 32, MINB)                   \
        NAME(const bf16* x, int x_cs, const bf16* dy, int dy_cs, float* partial, int N, int H, int W) {         \
        conv3_wgrad<CI, CO, TH, TPW, CIW, COL>(x, x_cs, dy, dy_cs, partial, N, H, W);                                 \
    }

#define CONVT2_FWD(NAME, CI, CO, WN)                                                                               \
    extern "C" __global__ void __launch_bounds__(4 * WN * 32)                                                     \
        NAME(const bf16* x, int x_cs, const bf16* w, const float* bias, bf16* y, int y_cs, int N, int H, int W,    \
             float slope) {                                                                                       \
        convt2_fwd<CI, CO, WN>(x, x_cs, w, bias, y, y_cs, N, H, W, slope);                                         \
    }

#define CONV_IN3_MMA(NAME, CO, TH)                                                                                 \
    extern "C" __global__ void __launch_bounds__(128)                                                             \
        NAME(const bf16* x, int x_cs, const bf16* w, const float* bias, bf16* y, int y_cs, int N, int H, int W,    \
             float slope) {                                                                                       \
        conv_in3_mma<CO, TH>(x, x_cs, w, bias, y, y_cs, N, H, W, slope);                                           \
    }

#define CONV_IN3_MMA_WGRAD(NAME, CO, TH)                                                                           \
    extern "C" __global__ void __launch_bounds__(128)                                                             \
        NAME(const bf16* x, int x_cs, const bf16* dy, int dy_cs, float* partial, int N, int H, int W) {           \
        conv_in3_mma_wgrad<CO, TH>(x, x_cs, dy, dy_cs, partial, N, H, W);                                          \
    }

// Instantiations follow (appended by mma.rs from its configuration table).
