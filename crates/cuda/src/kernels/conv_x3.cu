// f32 3x3 convolutions (stride 1, zero padding 1, NHWC) on the tensor cores as three TF32 products ("3xTF32"),
// through mma.sync m16n8k8 (TF32 in, f32 accumulate). Appended to conv_mma.cu by mma.rs (it uses that file's
// helpers: cp16, ldsm4, TileAt, tile_at, load_halo_t, load_tile_t), compiled for sm_80 and newer.
//
// Why: in f32 mode (TF32 off, for parity) cuDNN runs only FMA kernels, at 19-39 TFLOP/s of the H200's ~67, and the
// training step is all convolutions (docs/PERFORMANCE.md). Each value is split into two TF32 numbers, v = big +
// small (big = tf32(v), small = tf32(v - big): 22 of f32's 24 bits), and a * b ~ big*big + small*big + big*small
// (the dropped small*small is ~2^-22 relative): three tensor-core products cost less than one FMA product.
//
// Accumulation: each 8-deep k step's three products go into a zeroed temporary, and the temporary is added to the
// running sum by an ordinary f32 add (round to nearest). The tensor cores' own f32 sums are truncated, not
// rounded: chained through one accumulator (split.rs's three cuDNN TF32 passes), every step shrinks the running
// sum a little toward zero, an error that follows the partial sums rather than the result and so survives where a
// gradient is summed again (a bias gradient of the plan's U-Net came out 2.6e-3 off). Truncating only each step's
// own small sum leaves an error proportional to that step's contribution, which sums to an error proportional to
// the result, like the FMA path's.

__device__ __forceinline__ void split_tf32(unsigned v, unsigned& big, unsigned& small) {
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(big) : "f"(__uint_as_float(v)));
    const float rest = __uint_as_float(v) - __uint_as_float(big);  // exact
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(small) : "f"(rest));
}
// c += a (16x8, row) * b (8x8, col), TF32 inputs. Not volatile: the compiler may interleave independent sums.
__device__ __forceinline__ void mma1688(float* c, const unsigned* a, const unsigned* b) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// A TF32 fragment pair: the big and small halves of the same f32 values.
template <int R>
struct Split {
    unsigned big[R], small[R];
    __device__ __forceinline__ void from(const unsigned* raw) {
#pragma unroll
        for (int i = 0; i < R; i++) split_tf32(raw[i], big[i], small[i]);
    }
};
// acc[j] += a * b[j] for NB independent B fragments, in 3xTF32 with a fresh temporary per product (see above); the
// three passes run over all NB sums in turn so the MMAs of one pass do not wait on each other.
template <int NB>
__device__ __forceinline__ void mma_x3(float (*acc)[4], const Split<4>& a, const Split<2>* b) {
    float t[NB][4];
#pragma unroll
    for (int j = 0; j < NB; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) t[j][e] = 0.f;
#pragma unroll
    for (int j = 0; j < NB; j++) mma1688(t[j], a.small, b[j].big);
#pragma unroll
    for (int j = 0; j < NB; j++) mma1688(t[j], a.big, b[j].small);
#pragma unroll
    for (int j = 0; j < NB; j++) mma1688(t[j], a.big, b[j].big);
#pragma unroll
    for (int j = 0; j < NB; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[j][e] += t[j][e];
}

// Forward: y[p, co] = act(bias[co] + sum_{tap, ci} x[p + tap, ci] * w[co, tap, ci]) (+ y[p, co] when accumulate);
// w: KRSC [CO, 3, 3, CI] f32, CO any multiple of 32 (a run-time argument). Also the backward-data pass, as the
// forward of the flipped weights (conv3_flip_weights_f32).
// Block b owns output channels (b % (CO / 32)) * 32 .. + 32, keeps their weights (32 x 9 CI) in shared memory and
// loops over TH x 16 tiles of output pixels (the grid is a multiple of CO / 32); warps split a tile's rows, WM each.
// Per (kx, 8 input channels): the B fragments of the three ky, split once; then each of the warp's WM + 2 halo rows
// gives one A fragment, split once, which serves output rows h - ky for every ky (conv3_fwd's PIPE 2).
// Shared memory: weights 32 x (9 CI + 4), then NBUF halo buffers of (TH + 2) x 18 x (CI + 4) floats; rows padded by
// 16 bytes so the 8 row addresses of an ldmatrix phase fall into distinct bank groups.
template <int CI, int TH, int WM, int NBUF>
__device__ __forceinline__ void conv3_fwd_x3(const float* __restrict__ x, int x_cs, const float* __restrict__ w,
                                             const float* __restrict__ bias, float* y, int y_cs, int CO, int N,
                                             int H, int W, float slope, int accumulate) {
    constexpr int XS = CI + 4, WS = 9 * CI + 4, HALO = (TH + 2) * (TW + 2) * XS;
    constexpr int NT = 4, THREADS = TH / WM * 32;
    extern __shared__ __align__(16) unsigned char smem[];
    float* wsm = (float*)smem;
    float* xbuf = wsm + 32 * WS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int groups = CO / 32, cg = blockIdx.x % groups, stride = gridDim.x / groups;
    const int tiles_x = (W + TW - 1) / TW, tiles_y = (H + TH - 1) / TH;
    const int ntiles = N * tiles_y * tiles_x;

    for (int i = threadIdx.x; i < 32 * 9 * CI / 4; i += THREADS) {
        int co = i / (9 * CI / 4), k = (i - co * (9 * CI / 4)) * 4;
        cp16(smem_u32(wsm + co * WS + k), w + (i64)(cg * 32 + co) * 9 * CI + k, true);
    }
    int t = blockIdx.x / groups, buf = 0;
    if (t < ntiles) load_halo_t<float, CI, 4, TH, THREADS>(x, x_cs, 0, H, W, tile_at(t, TH, tiles_y, tiles_x), xbuf);
    cp_commit();
    // ldmatrix row addresses (b16 matrices of 8 rows x 4 floats): A rows are pixels (matrices: pixels 0-7 / 8-15,
    // channels k..k+3 / k+4..k+7), B rows are output channels (matrices: co 0-7 / 8-15, same k halves).
    const int a_pix = (lane & 7) + ((lane >> 3) & 1) * 8, a_k = (lane >> 4) * 4;
    const int b_co = (lane & 7) + (lane >> 4) * 8, b_k = ((lane >> 3) & 1) * 4;
    const unsigned ws_base = smem_u32(wsm) + (b_co * WS + b_k) * 4;
    for (; t < ntiles; t += stride) {
        const int tn = t + stride;
        if (NBUF == 2) {
            if (tn < ntiles)
                load_halo_t<float, CI, 4, TH, THREADS>(x, x_cs, 0, H, W, tile_at(tn, TH, tiles_y, tiles_x),
                                                  xbuf + (buf ^ 1) * HALO);
            cp_commit();
            cp_wait1();
        } else {
            cp_wait0();
        }
        __syncthreads();
        const float* xs = xbuf + (NBUF == 2 ? buf * HALO : 0);
        const unsigned xs_base = smem_u32(xs) + ((warp * WM * (TW + 2) + a_pix) * XS + a_k) * 4;
        float acc[WM][NT][4];
#pragma unroll
        for (int m = 0; m < WM; m++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[m][n][e] = 0.f;
#pragma unroll
        for (int kx = 0; kx < 3; kx++) {
#pragma unroll 1
            for (int kc = 0; kc < CI / 8; kc++) {
                Split<2> b[3][NT];
#pragma unroll
                for (int ky = 0; ky < 3; ky++)
#pragma unroll
                    for (int np = 0; np < NT / 2; np++) {
                        unsigned r[4];
                        ldsm4(ws_base + (np * 16 * WS + (ky * 3 + kx) * CI + kc * 8) * 4, r);
                        b[ky][2 * np].from(r);
                        b[ky][2 * np + 1].from(r + 2);
                    }
#pragma unroll
                for (int h = 0; h < WM + 2; h++) {
                    unsigned r[4];
                    ldsm4(xs_base + ((h * (TW + 2) + kx) * XS + kc * 8) * 4, r);
                    Split<4> a;
                    a.from(r);
#pragma unroll
                    for (int ky = 0; ky < 3; ky++) {
                        const int row = h - ky;
                        if (row >= 0 && row < WM) mma_x3<NT>(acc[row], a, b[ky]);
                    }
                }
            }
        }
        if (NBUF == 1) {
            // One halo buffer: once every warp is done reading it, fetch the next tile during the epilogue.
            __syncthreads();
            if (tn < ntiles)
                load_halo_t<float, CI, 4, TH, THREADS>(x, x_cs, 0, H, W, tile_at(tn, TH, tiles_y, tiles_x), xbuf);
            cp_commit();
        }
        // Epilogue: C fragment rows are pixels g, g + 8 of the tile row, columns channels 2 tq, 2 tq + 1 of each
        // n tile; + bias, activation, + the old value when accumulating.
        const TileAt at = tile_at(t, TH, tiles_y, tiles_x);
#pragma unroll
        for (int m = 0; m < WM; m++) {
            const int yy = at.y0 + warp * WM + m;
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int xx = at.x0 + g + half * 8;
                if (yy < H && xx < W) {
                    float* out = y + ((i64)(at.n * H + yy) * W + xx) * y_cs + cg * 32;
#pragma unroll
                    for (int n = 0; n < NT; n++) {
                        const int co = n * 8 + 2 * tq;
                        float v0 = acc[m][n][half * 2], v1 = acc[m][n][half * 2 + 1];
                        if (bias) {
                            v0 += bias[cg * 32 + co];
                            v1 += bias[cg * 32 + co + 1];
                        }
                        v0 = v0 > 0.f ? v0 : v0 * slope;
                        v1 = v1 > 0.f ? v1 : v1 * slope;
                        float2* o = (float2*)(out + co);
                        if (accumulate) {
                            const float2 old = *o;
                            v0 += old.x;
                            v1 += old.y;
                        }
                        *o = make_float2(v0, v1);
                    }
                }
            }
        }
        __syncthreads();
        buf ^= 1;
    }
    cp_wait0();  // a block that got no tile still has its weight copies in flight
}

// Weight gradient: partial[part, co, tap, ci] = sum over the part's pixels p of dy[p, co] * x[p + tap, ci], f32,
// CI a multiple of CIW and CO of 32 (run-time arguments); the host adds the parts up in a fixed order.
// Block b owns the group (b % G) of 32 output channels x CIW input channels (G = CO / 32 * CI / CIW) and loops over
// TH x 16 tiles; part = b / G. Nine warps, one per tap: warp `tap` computes the 32 x CIW products of its tap as
// MMAs over K = pixels (8 per step): A = dy^T (co x pixels), B = the shifted x (pixels x ci), both read from shared
// memory with scalar loads (ldmatrix cannot transpose 32-bit values); pixel strides of 8 mod 32 floats keep those
// conflict-free.
template <int CIW, int TH, int NBUF>
__device__ __forceinline__ void conv3_wgrad_x3(const float* __restrict__ x, int x_cs, const float* __restrict__ dy,
                                               int dy_cs, float* __restrict__ partial, int CI, int CO, int N, int H,
                                               int W) {
    constexpr int NT = CIW / 8, XS = CIW + 8, DS = 32 + 8, THREADS = 9 * 32;
    constexpr int HALO = (TH + 2) * (TW + 2) * XS, BUF = HALO + TH * TW * DS;
    extern __shared__ __align__(16) unsigned char smem[];
    float* base = (float*)smem;
    const int lane = threadIdx.x & 31, tap = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int cig_n = CI / CIW, groups = CO / 32 * cig_n, grp = blockIdx.x % groups;
    const int co0 = grp / cig_n * 32, ci0 = grp % cig_n * CIW;
    const int stride = gridDim.x / groups;
    const int tiles_x = (W + TW - 1) / TW, tiles_y = (H + TH - 1) / TH;
    const int ntiles = N * tiles_y * tiles_x;
    const int ky = tap / 3, kx = tap % 3;
    float acc[2][NT][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[m][n][e] = 0.f;
    int t = blockIdx.x / groups, buf = 0;
    if (t < ntiles) {
        const TileAt a = tile_at(t, TH, tiles_y, tiles_x);
        load_halo_t<float, CIW, 8, TH, THREADS>(x, x_cs, ci0, H, W, a, base);
        load_tile_t<float, 32, 8, TH, THREADS>(dy, dy_cs, co0, H, W, a, base + HALO);
    }
    cp_commit();
    for (; t < ntiles; t += stride) {
        const int tn = t + stride;
        if (NBUF == 2) {
            if (tn < ntiles) {
                const TileAt a = tile_at(tn, TH, tiles_y, tiles_x);
                float* nb = base + (buf ^ 1) * BUF;
                load_halo_t<float, CIW, 8, TH, THREADS>(x, x_cs, ci0, H, W, a, nb);
                load_tile_t<float, 32, 8, TH, THREADS>(dy, dy_cs, co0, H, W, a, nb + HALO);
            }
            cp_commit();
            cp_wait1();
        } else {
            cp_wait0();
        }
        __syncthreads();
        const float* xs = base + (NBUF == 2 ? buf * BUF : 0);
        const float* ds = xs + HALO;
#pragma unroll 1
        for (int r = 0; r < TH; r++) {
#pragma unroll
            for (int ks = 0; ks < 2; ks++) {
                // Pixels p0 .. p0 + 7 of tile row r: A[co][p] = dy[p][co], B[p][ci] = x[p + tap][ci].
                const float* dr = ds + (r * TW + ks * 8) * DS;
                const float* xr = xs + ((r + ky) * (TW + 2) + kx + ks * 8) * XS;
                Split<4> a[2];
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    unsigned raw[4] = {__float_as_uint(dr[tq * DS + m * 16 + g]),
                                       __float_as_uint(dr[tq * DS + m * 16 + g + 8]),
                                       __float_as_uint(dr[(tq + 4) * DS + m * 16 + g]),
                                       __float_as_uint(dr[(tq + 4) * DS + m * 16 + g + 8])};
                    a[m].from(raw);
                }
                Split<2> b[NT];
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    unsigned raw[2] = {__float_as_uint(xr[tq * XS + n * 8 + g]),
                                       __float_as_uint(xr[(tq + 4) * XS + n * 8 + g])};
                    b[n].from(raw);
                }
#pragma unroll
                for (int m = 0; m < 2; m++) mma_x3<NT>(acc[m], a[m], b);
            }
        }
        if (NBUF == 1) {
            __syncthreads();
            if (tn < ntiles) {
                const TileAt a = tile_at(tn, TH, tiles_y, tiles_x);
                load_halo_t<float, CIW, 8, TH, THREADS>(x, x_cs, ci0, H, W, a, base);
                load_tile_t<float, 32, 8, TH, THREADS>(dy, dy_cs, co0, H, W, a, base + HALO);
            }
            cp_commit();
        } else {
            __syncthreads();
        }
        buf ^= 1;
    }
    cp_wait0();
    // C fragment: rows co = m * 16 + g (+ 8), columns ci = n * 8 + 2 tq (+ 1).
    float* out = partial + (i64)(blockIdx.x / groups) * CO * 9 * CI;
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int co = co0 + m * 16 + g + half * 8, ci = ci0 + n * 8 + 2 * tq;
                *(float2*)(out + ((i64)co * 9 + tap) * CI + ci) =
                    make_float2(acc[m][n][half * 2], acc[m][n][half * 2 + 1]);
            }
}

// wt[ci, 8 - tap, co] = w[co, tap, ci], f32 (see conv3_flip_weights_bf16).
extern "C" __global__ void conv3_flip_weights_f32(const float* __restrict__ w, float* __restrict__ wt, int ci_n,
                                                  int co_n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= co_n * 9 * ci_n) return;
    int ci = i % ci_n, tap = (i / ci_n) % 9, co = i / (9 * ci_n);
    wt[((i64)ci * 9 + 8 - tap) * co_n + co] = w[i];
}

#define CONV3_FWD_X3(NAME, CI, TH, WM, NBUF)                                                                       \
    extern "C" __global__ void __launch_bounds__(TH / WM * 32, 1)                                                  \
        NAME(const float* x, int x_cs, const float* w, const float* bias, float* y, int y_cs, int co, int N, int H,  \
             int W, float slope, int accumulate) {                                                                 \
        conv3_fwd_x3<CI, TH, WM, NBUF>(x, x_cs, w, bias, y, y_cs, co, N, H, W, slope, accumulate);                 \
    }
#define CONV3_WGRAD_X3(NAME, CIW, TH, NBUF)                                                                        \
    extern "C" __global__ void __launch_bounds__(9 * 32, 1)                                                        \
        NAME(const float* x, int x_cs, const float* dy, int dy_cs, float* partial, int ci, int co, int N, int H,    \
             int W) {                                                                                              \
        conv3_wgrad_x3<CIW, TH, NBUF>(x, x_cs, dy, dy_cs, partial, ci, co, N, H, W);                               \
    }
