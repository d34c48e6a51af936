// cryoden CUDA kernels: everything around the cuDNN convolutions. Compiled at run time by NVRTC (nvrtc.rs),
// instantiated for float and bf16 storage; arithmetic is always in float.
//
// Layout: NHWC, channels fastest. A tensor argument is (pointer, cs): the pointer is already offset to the tensor's
// first channel, and `cs` is the number of elements per pixel of the underlying buffer. A tensor that owns its
// buffer has cs == C; a channel slice of a concatenation buffer has cs == C_total. That is how skip connections and
// upsampled maps are written straight into the decoder's input buffer (no concat copy).
//
// Activation: f(x) = x > 0 ? x : slope * x. slope = 0: ReLU; slope = 0.1: LeakyReLU(0.1); slope = 1: identity.
// Its derivative is taken from the OUTPUT y (y > 0 iff x > 0 for slope >= 0), so pre-activations are never stored.
// At x == 0 the derivative is `slope`, as in PyTorch (threshold_backward / leaky_relu_backward).

typedef unsigned short bf16;
typedef long long i64;

__device__ __forceinline__ float ldf(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float ldf(const bf16* p, i64 i) { return __uint_as_float(((unsigned)p[i]) << 16); }
__device__ __forceinline__ void stf(float* p, i64 i, float v) { p[i] = v; }
// Round to nearest even; NaN stays NaN (quiet bit set).
__device__ __forceinline__ void stf(bf16* p, i64 i, float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (bf16)((u >> 16) | 0x40u); return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (bf16)(u >> 16);
}

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// y[p, c] = act(x[p, c] + bias[c]) (+ y[p, c] if accumulate); bias may be null. Also serves as copy / cast /
// place-into-concat / add (slope 1, no bias). x: [npix, C] (x_cs), y: [npix, C] (y_cs).
template <typename Ti, typename To>
__device__ void bias_act_fwd(const Ti* x, int x_cs, const float* bias, To* y, int y_cs, i64 npix, int C, float slope,
                             int accumulate) {
    GRID_STRIDE(i, npix * C) {
        i64 p = i / C;
        int c = (int)(i - p * C);
        float v = ldf(x, p * x_cs + c);
        if (bias) v += bias[c];
        v = v > 0.f ? v : v * slope;
        if (accumulate) v += ldf(y, p * y_cs + c);
        stf(y, p * y_cs + c, v);
    }
}

// The per-image normalisation of an inference batch, done during its transfer (ImageNorm in cryoden-nn): y = (x −
// center) / spread, or with `restore` y = x · spread + center, in double with each operation rounded on its own (no
// fused multiply-add, as on the host), then rounded once to float: bit for bit the values the host would make.
template <typename Ti, typename To>
__device__ void image_norm(const Ti* x, To* y, i64 n, double center, double spread, int restore) {
    GRID_STRIDE(i, n) {
        double v = (double)ldf(x, i);
        double r = restore ? __dadd_rn(__dmul_rn(v, spread), center) : __ddiv_rn(__dsub_rn(v, center), spread);
        stf(y, i, __double2float_rn(r));
    }
}

// f32 -> (big, small) for the f32 convolutions run as three TF32 passes (split.rs): big = x rounded to TF32
// (nearest, ties away from zero, as cvt.rna.tf32.f32 but on any architecture; the low 13 mantissa bits zero, so
// any TF32 conversion leaves it exact), small = x - big (exact in f32). Inf and NaN pass through unchanged.
// Four values per thread where the pointers are 16-byte aligned.
__device__ __forceinline__ float tf32_big(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    return __uint_as_float(u);
}
extern "C" __global__ void tf32_split_f32(const float* x, float* big, float* small, i64 n) {
    const i64 n4 = ((((size_t)x | (size_t)big | (size_t)small) & 15) == 0) ? n / 4 : 0;
    GRID_STRIDE(i, n4) {
        float4 v = ((const float4*)x)[i], b;
        b.x = tf32_big(v.x); b.y = tf32_big(v.y); b.z = tf32_big(v.z); b.w = tf32_big(v.w);
        ((float4*)big)[i] = b;
        ((float4*)small)[i] = make_float4(v.x - b.x, v.y - b.y, v.z - b.z, v.w - b.w);
    }
    GRID_STRIDE(j, n - 4 * n4) {
        const i64 i = 4 * n4 + j;
        const float v = x[i], b = tf32_big(v);
        big[i] = b;
        small[i] = v - b;
    }
}

// Version 2 of bias_act_fwd: 2-D blocks (threadIdx.x over channels, threadIdx.y over pixels), no index division.
// Version 1 spends most of its time in the 64-bit i / C (bf16 ran no faster than f32); see PERFORMANCE.md.
template <typename Ti, typename To>
__device__ void bias_act_fwd2(const Ti* x, int x_cs, const float* bias, To* y, int y_cs, i64 npix, int C, float slope,
                              int accumulate) {
    for (i64 p = (i64)blockIdx.x * blockDim.y + threadIdx.y; p < npix; p += (i64)gridDim.x * blockDim.y) {
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float v = ldf(x, p * x_cs + c);
            if (bias) v += bias[c];
            v = v > 0.f ? v : v * slope;
            if (accumulate) v += ldf(y, p * y_cs + c);
            stf(y, p * y_cs + c, v);
        }
    }
}

// out[blockIdx.x] = sum of x[i]^2 over this block's elements (float per thread, blockDim.x == 256); finish with
// reduce_sum_f32.
__device__ void sum_squares(const float* x, i64 n, float* partial) {
    __shared__ float s[256];
    float acc = 0.f;
    GRID_STRIDE(i, n) acc += x[i] * x[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int k = 128; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}
extern "C" __global__ void sum_squares_f32(const float* x, i64 n, float* partial) { sum_squares(x, n, partial); }

extern "C" __global__ void scale_f32(float* x, i64 n, float s) {
    GRID_STRIDE(i, n) x[i] *= s;
}

// dx = dy * act'(y); optionally (partial != null) per-channel partial sums of dx for the bias gradient:
// partial[blockIdx.y, c] over this block's pixels. Blocks (bx, by) with bx * by == 256: threadIdx.x over channels
// (bx = 32, or the next power of two of C when C < 32, so the one-channel output layer uses every lane),
// threadIdx.y over pixels; grid (ceil(C / bx), parts).
template <typename T>
__device__ void act_bwd(const T* dy, int dy_cs, const T* y, int y_cs, T* dx, int dx_cs, i64 npix, int C, float slope,
                        float* partial) {
    __shared__ float s[256];
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    float acc = 0.f;
    if (c < C) {
        for (i64 p = (i64)blockIdx.y * blockDim.y + threadIdx.y; p < npix; p += (i64)gridDim.y * blockDim.y) {
            float g = ldf(dy, p * dy_cs + c);
            if (y) g = ldf(y, p * y_cs + c) > 0.f ? g : g * slope;
            stf(dx, p * dx_cs + c, g);
            acc += g;
        }
    }
    if (!partial) return;
    s[threadIdx.y * blockDim.x + threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t = 0.f;
        for (int k = 0; k < (int)blockDim.y; k++) t += s[k * blockDim.x + threadIdx.x];
        partial[(i64)blockIdx.y * C + c] = t;
    }
}

// bf16 pairs: two adjacent channels in one 4-byte access (little endian: channel c in the low half).
__device__ __forceinline__ unsigned short f2bf(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
__device__ __forceinline__ float2 ld2(const bf16* p, i64 i) {
    unsigned u = *(const unsigned*)(p + i);
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
__device__ __forceinline__ void st2(bf16* p, i64 i, float2 v) {
    *(unsigned*)(p + i) = (unsigned)f2bf(v.x) | ((unsigned)f2bf(v.y) << 16);
}

// Version 2 of act_bwd for bf16 with an even channel count, even channel strides and 4-byte aligned pointers: each
// thread handles a channel pair (version 1 moved one 2-byte element per access and reached 1.4 TB/s). C2 = C / 2;
// partial is [parts, C] as in version 1.
extern "C" __global__ void act_bwd_pairs_bf16(const bf16* dy, int dy_cs, const bf16* y, int y_cs, bf16* dx, int dx_cs,
                                              i64 npix, int C2, float slope, float* partial) {
    __shared__ float s0[256], s1[256];
    int cp = blockIdx.x * blockDim.x + threadIdx.x;
    float a0 = 0.f, a1 = 0.f;
    if (cp < C2) {
        int c = 2 * cp;
        for (i64 p = (i64)blockIdx.y * blockDim.y + threadIdx.y; p < npix; p += (i64)gridDim.y * blockDim.y) {
            float2 g = ld2(dy, p * dy_cs + c);
            if (y) {
                float2 yy = ld2(y, p * y_cs + c);
                g.x = yy.x > 0.f ? g.x : g.x * slope;
                g.y = yy.y > 0.f ? g.y : g.y * slope;
            }
            st2(dx, p * dx_cs + c, g);
            a0 += g.x;
            a1 += g.y;
        }
    }
    if (!partial) return;
    int t = threadIdx.y * blockDim.x + threadIdx.x;
    s0[t] = a0;
    s1[t] = a1;
    __syncthreads();
    if (threadIdx.y == 0 && cp < C2) {
        float t0 = 0.f, t1 = 0.f;
        for (int k = 0; k < (int)blockDim.y; k++) {
            t0 += s0[k * blockDim.x + threadIdx.x];
            t1 += s1[k * blockDim.x + threadIdx.x];
        }
        partial[(i64)blockIdx.y * 2 * C2 + 2 * cp] = t0;
        partial[(i64)blockIdx.y * 2 * C2 + 2 * cp + 1] = t1;
    }
}

// bias_act (version 3) for bf16 -> bf16 with an even channel count, even channel strides and 4-byte aligned
// pointers: a channel pair per 4-byte access, 2-D blocks as version 2. C2 = C / 2.
extern "C" __global__ void bias_act_pairs_bf16(const bf16* x, int x_cs, const float* bias, bf16* y, int y_cs,
                                               i64 npix, int C2, float slope, int accumulate) {
    for (i64 p = (i64)blockIdx.x * blockDim.y + threadIdx.y; p < npix; p += (i64)gridDim.x * blockDim.y) {
        for (int cp = threadIdx.x; cp < C2; cp += blockDim.x) {
            int c = 2 * cp;
            float2 v = ld2(x, p * x_cs + c);
            if (bias) {
                v.x += bias[c];
                v.y += bias[c + 1];
            }
            v.x = v.x > 0.f ? v.x : v.x * slope;
            v.y = v.y > 0.f ? v.y : v.y * slope;
            if (accumulate) {
                float2 o = ld2(y, p * y_cs + c);
                v.x += o.x;
                v.y += o.y;
            }
            st2(y, p * y_cs + c, v);
        }
    }
}

// ---- 16-byte accesses: 8 bf16 or 4 float channels per load/store (bias_act v4, act_bwd v3, max-pool v3) ----
// Used when the channel count, every channel stride and every pointer are multiples of VN elements / 16 bytes (the
// host checks). Versions 2-3 moved 2-4 bytes per access and stopped at 1.4-2.5 TB/s of the H200's ~4.3.
template <typename T> struct VN;
template <> struct VN<float> { enum { N = 4 }; };
template <> struct VN<bf16> { enum { N = 8 }; };

__device__ __forceinline__ void ldv(const float* p, i64 i, float* v) {
    float4 u = *(const float4*)(p + i);
    v[0] = u.x; v[1] = u.y; v[2] = u.z; v[3] = u.w;
}
__device__ __forceinline__ void stv(float* p, i64 i, const float* v) {
    *(float4*)(p + i) = make_float4(v[0], v[1], v[2], v[3]);
}
// One 16-byte piece (VN channels) as loaded, and its values: lets a kernel issue several loads before it needs any.
__device__ __forceinline__ void unpack(uint4 u, const float*, float* v) {
    v[0] = __uint_as_float(u.x); v[1] = __uint_as_float(u.y); v[2] = __uint_as_float(u.z); v[3] = __uint_as_float(u.w);
}
__device__ __forceinline__ void unpack(uint4 u, const bf16*, float* v) {
    unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        v[2 * k] = __uint_as_float(w[k] << 16);
        v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}
__device__ __forceinline__ void ldv(const bf16* p, i64 i, float* v) { unpack(*(const uint4*)(p + i), p, v); }
__device__ __forceinline__ void stv(bf16* p, i64 i, const float* v) {
    unsigned w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) w[k] = (unsigned)f2bf(v[2 * k]) | ((unsigned)f2bf(v[2 * k + 1]) << 16);
    *(uint4*)(p + i) = make_uint4(w[0], w[1], w[2], w[3]);
}

// bias_act version 4: y = act(x + bias) (+ y), VN channels per thread. CV = C / VN groups; 2-D blocks as version 2
// (threadIdx.x over groups, threadIdx.y over pixels).
template <typename T>
__device__ void bias_act_vec(const T* x, int x_cs, const float* bias, T* y, int y_cs, i64 npix, int CV, float slope,
                             int accumulate) {
    const int N = VN<T>::N;
    for (i64 p = (i64)blockIdx.x * blockDim.y + threadIdx.y; p < npix; p += (i64)gridDim.x * blockDim.y) {
        for (int g = threadIdx.x; g < CV; g += blockDim.x) {
            int c = g * N;
            float v[N];
            ldv(x, p * x_cs + c, v);
            float o[N];
            if (accumulate) ldv(y, p * y_cs + c, o);
#pragma unroll
            for (int k = 0; k < N; k++) {
                float t = v[k];
                if (bias) t += bias[c + k];
                t = t > 0.f ? t : t * slope;
                if (accumulate) t += o[k];
                v[k] = t;
            }
            stv(y, p * y_cs + c, v);
        }
    }
}

// Per-block partial channel sums for the bias gradient: acc holds this thread's sums for channels g * N .. g * N + N
// of its pixels; the block (bx, by) adds them over threadIdx.y (tree, fixed order) into partial[blockIdx.y, c].
// Every thread of the block must call it.
template <int N>
__device__ __forceinline__ void block_partials(float (&acc)[N], float* partial, int CV, int g) {
    __shared__ float s[256 * 8];
    int bx = blockDim.x, t = threadIdx.y * bx + threadIdx.x;
#pragma unroll
    for (int k = 0; k < N; k++) s[k * 256 + t] = acc[k];
    __syncthreads();
    for (int off = blockDim.y / 2; off > 0; off >>= 1) {
        if ((int)threadIdx.y < off) {
#pragma unroll
            for (int k = 0; k < N; k++) s[k * 256 + t] += s[k * 256 + t + off * bx];
        }
        __syncthreads();
    }
    if (threadIdx.y == 0 && g < CV) {
#pragma unroll
        for (int k = 0; k < N; k++) partial[(i64)blockIdx.y * CV * N + g * N + k] = s[k * 256 + threadIdx.x];
    }
}

// The value a storage type keeps of v (bf16: rounded to nearest even), as a float.
__device__ __forceinline__ float kept(float v, const float*) { return v; }
__device__ __forceinline__ float kept(float v, const bf16*) { return __uint_as_float(((unsigned)f2bf(v)) << 16); }

// act_bwd version 3: dx = dy * act'(y) with VN channels per thread, and per-block partial bias sums
// partial[blockIdx.y, c] (tree reduction over threadIdx.y, fixed order). Blocks (bx, by), bx * by == 256, both
// powers of two; grid (ceil(CV / bx), parts). With no y (identity) and dx == dy nothing changes, so nothing is
// written (the bias gradient of the transposed conv only reads its output gradient).
template <typename T>
__device__ void act_bwd_vec(const T* dy, int dy_cs, const T* y, int y_cs, T* dx, int dx_cs, i64 npix, int CV,
                            float slope, float* partial) {
    const int N = VN<T>::N;
    const bool store = y || dx != dy || dx_cs != dy_cs;
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    float acc[N];
#pragma unroll
    for (int k = 0; k < N; k++) acc[k] = 0.f;
    if (g < CV) {
        int c = g * N;
        for (i64 p = (i64)blockIdx.y * blockDim.y + threadIdx.y; p < npix; p += (i64)gridDim.y * blockDim.y) {
            float d[N];
            ldv(dy, p * dy_cs + c, d);
            if (y) {
                float yy[N];
                ldv(y, p * y_cs + c, yy);
#pragma unroll
                for (int k = 0; k < N; k++) d[k] = yy[k] > 0.f ? d[k] : d[k] * slope;
            }
            if (store) stv(dx, p * dx_cs + c, d);
#pragma unroll
            for (int k = 0; k < N; k++) acc[k] += d[k];
        }
    }
    if (partial) block_partials<N>(acc, partial, CV, g);
}

// 2x2 max-pool forward, version 2: VN channels per thread; threadIdx.x over channel groups, the rest over output
// pixels q = (n * Ho + r) * Wo + j (32-bit: the host checks N * Ho * Wo < 2^31).
template <typename T>
__device__ void maxpool2_fwd_vec(const T* x, int x_cs, T* y, int y_cs, int N, int H, int W, int CV) {
    const int V = VN<T>::N;
    int Ho = H / 2, Wo = W / 2;
    int nq = N * Ho * Wo;
    for (int q = blockIdx.x * blockDim.y + threadIdx.y; q < nq; q += gridDim.x * blockDim.y) {
        int j = q % Wo, t = q / Wo;
        int r = t % Ho, n = t / Ho;
        for (int g = threadIdx.x; g < CV; g += blockDim.x) {
            int c = g * V;
            i64 base = (((i64)n * H + 2 * r) * W + 2 * j) * x_cs + c;
            float a[V], b[V];
            ldv(x, base, a);
            ldv(x, base + x_cs, b);
#pragma unroll
            for (int k = 0; k < V; k++) a[k] = fmaxf(a[k], b[k]);
            ldv(x, base + (i64)W * x_cs, b);
#pragma unroll
            for (int k = 0; k < V; k++) a[k] = fmaxf(a[k], b[k]);
            ldv(x, base + (i64)W * x_cs + x_cs, b);
#pragma unroll
            for (int k = 0; k < V; k++) a[k] = fmaxf(a[k], b[k]);
            stv(y, (i64)q * y_cs + c, a);
        }
    }
}

// Max-pool gradient, version 3: version 2 (one thread per window) with VN channels per thread, 2-D blocks as the
// forward. Same first-maximum rule and floor handling.
template <typename T>
__device__ void maxpool2_bwd_vec(const T* x, int x_cs, const T* dy, int dy_cs, T* dx, int dx_cs, int N, int H, int W,
                                 int CV, int accumulate) {
    const int V = VN<T>::N;
    int Ho = H / 2, Wo = W / 2;
    int nq = N * Ho * Wo;
    for (int q = blockIdx.x * blockDim.y + threadIdx.y; q < nq; q += gridDim.x * blockDim.y) {
        int j = q % Wo, t = q / Wo;
        int r = t % Ho, n = t / Ho;
        int rows = (r == Ho - 1 && (H & 1)) ? 3 : 2;
        int cols = (j == Wo - 1 && (W & 1)) ? 3 : 2;
        for (int gi = threadIdx.x; gi < CV; gi += blockDim.x) {
            int c = gi * V;
            i64 base = (((i64)n * H + 2 * r) * W + 2 * j) * x_cs + c;
            float v0[V], v1[V], v2[V], v3[V], g[V];
            ldv(x, base, v0);
            ldv(x, base + x_cs, v1);
            ldv(x, base + (i64)W * x_cs, v2);
            ldv(x, base + (i64)W * x_cs + x_cs, v3);
            ldv(dy, (i64)q * dy_cs + c, g);
            int arg[V];
#pragma unroll
            for (int k = 0; k < V; k++) {
                float m = v0[k];
                arg[k] = 0;
                if (v1[k] > m) { m = v1[k]; arg[k] = 1; }
                if (v2[k] > m) { m = v2[k]; arg[k] = 2; }
                if (v3[k] > m) { arg[k] = 3; }
            }
            for (int a = 0; a < rows; a++) {
                for (int b = 0; b < cols; b++) {
                    i64 o = (((i64)n * H + 2 * r + a) * W + 2 * j + b) * dx_cs + c;
                    float out[V];
                    if (accumulate) ldv(dx, o, out);
#pragma unroll
                    for (int k = 0; k < V; k++) {
                        float v = (a < 2 && b < 2 && a * 2 + b == arg[k]) ? g[k] : 0.f;
                        out[k] = accumulate ? out[k] + v : v;
                    }
                    stv(dx, o, out);
                }
            }
        }
    }
}

// Max-pool gradient version 3 fused with the backward of the bias + activation that produced x (the pool's input,
// i.e. that conv's output): dx = act'(x) * (routed dy (+ dx)), and per-block partial bias sums of dx as act_bwd_vec.
// Saves act_bwd's whole pass over dx (it reads x anyway). Rounding as the two kernels in turn: the routed sum is
// rounded to the storage type before the activation's derivative scales it. Grid (ceil(CV / bx), parts): each
// thread keeps one channel group; blocks (bx, by) as act_bwd_vec.
template <typename T>
__device__ void maxpool2_bwd_act_vec(const T* x, int x_cs, const T* dy, int dy_cs, T* dx, int dx_cs, int N, int H,
                                     int W, int CV, int accumulate, float slope, float* partial) {
    const int V = VN<T>::N;
    int Ho = H / 2, Wo = W / 2;
    int nq = N * Ho * Wo;
    int gi = blockIdx.x * blockDim.x + threadIdx.x;
    float acc[V];
#pragma unroll
    for (int k = 0; k < V; k++) acc[k] = 0.f;
    if (gi < CV) {
        int c = gi * V;
        for (int q = blockIdx.y * blockDim.y + threadIdx.y; q < nq; q += gridDim.y * blockDim.y) {
            int j = q % Wo, t = q / Wo;
            int r = t % Ho, n = t / Ho;
            int rows = (r == Ho - 1 && (H & 1)) ? 3 : 2;
            int cols = (j == Wo - 1 && (W & 1)) ? 3 : 2;
            i64 base = (((i64)n * H + 2 * r) * W + 2 * j) * x_cs + c;
            // The window's argmax (2 bits per channel) and which of its 4 pixels are positive (4 bits per channel),
            // so the 4 x V input values need not stay in registers (version 1 kept them: 115 registers, 2.2 TB/s).
            unsigned arg = 0, pos = 0;
            {
                float v[4][V];
                ldv(x, base, v[0]);
                ldv(x, base + x_cs, v[1]);
                ldv(x, base + (i64)W * x_cs, v[2]);
                ldv(x, base + (i64)W * x_cs + x_cs, v[3]);
#pragma unroll
                for (int k = 0; k < V; k++) {
                    float m = v[0][k];
                    unsigned a = 0;
                    if (v[1][k] > m) { m = v[1][k]; a = 1; }
                    if (v[2][k] > m) { m = v[2][k]; a = 2; }
                    if (v[3][k] > m) { a = 3; }
                    arg |= a << (2 * k);
                    pos |= ((v[0][k] > 0.f) | (v[1][k] > 0.f) << 1 | (v[2][k] > 0.f) << 2 | (v[3][k] > 0.f) << 3) << (4 * k);
                }
            }
            float g[V];
            ldv(dy, (i64)q * dy_cs + c, g);
            if (rows == 2 && cols == 2) {
                // The whole window (every window but those on an odd last row or column): its four old dx pieces
                // loaded before any is written, so their latencies overlap (version 3 loaded, waited and stored
                // one pixel after the other: four round trips to memory per window instead of one).
                i64 o[4];
                uint4 old[4];
#pragma unroll
                for (int w = 0; w < 4; w++) o[w] = (((i64)n * H + 2 * r + (w >> 1)) * W + 2 * j + (w & 1)) * dx_cs + c;
                if (accumulate) {
#pragma unroll
                    for (int w = 0; w < 4; w++) old[w] = *(const uint4*)(dx + o[w]);
                }
#pragma unroll
                for (int w = 0; w < 4; w++) {
                    float out[V];
                    if (accumulate) unpack(old[w], dx, out);
#pragma unroll
                    for (int k = 0; k < V; k++) {
                        float u = ((arg >> (2 * k)) & 3u) == (unsigned)w ? g[k] : 0.f;
                        u = kept(accumulate ? out[k] + u : u, dx);
                        u = ((pos >> (4 * k + w)) & 1u) != 0 ? u : u * slope;
                        out[k] = u;
                        acc[k] += u;
                    }
                    stv(dx, o[w], out);
                }
                continue;
            }
            // Unrolled so that the window position is a constant; the third row and column exist only at an odd
            // height or width (pixels dropped by the floor: no gradient from the pool).
#pragma unroll
            for (int a = 0; a < 3; a++) {
#pragma unroll
                for (int b = 0; b < 3; b++) {
                    if (a >= rows || b >= cols) continue;
                    const bool in_window = a < 2 && b < 2;
                    const unsigned wpos = (a & 1) * 2 + (b & 1);
                    i64 o = (((i64)n * H + 2 * r + a) * W + 2 * j + b) * dx_cs + c;
                    float out[V], xe[V];
                    if (!in_window) ldv(x, (((i64)n * H + 2 * r + a) * W + 2 * j + b) * x_cs + c, xe);
                    if (accumulate) ldv(dx, o, out);
#pragma unroll
                    for (int k = 0; k < V; k++) {
                        float u = (in_window && ((arg >> (2 * k)) & 3u) == wpos) ? g[k] : 0.f;
                        u = kept(accumulate ? out[k] + u : u, dx);
                        bool positive = in_window ? ((pos >> (4 * k + wpos)) & 1u) != 0 : xe[k] > 0.f;
                        u = positive ? u : u * slope;
                        out[k] = u;
                        acc[k] += u;
                    }
                    stv(dx, o, out);
                }
            }
        }
    }
    block_partials<V>(acc, partial, CV, gi);
}

// conv1x1_to1_bwd_data_vec fused with the backward of the bias + activation that produced the conv's input y (the
// U-Net's last 3x3 conv): dx[p, c] = act'(y[p, c]) * dy[p] * w[c] (rounded to the storage type first), with
// per-block partial bias sums as act_bwd_vec. Grid (ceil(CV / bx), parts). dx packed (stride C).
template <typename T>
__device__ void conv1x1_to1_bwd_data_act_vec(const T* dy, const T* w, T* dx, i64 npix, int CV, const T* y, int y_cs,
                                             float slope, float* partial) {
    const int V = VN<T>::N;
    int C = CV * V;
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    float acc[V];
#pragma unroll
    for (int k = 0; k < V; k++) acc[k] = 0.f;
    if (g < CV) {
        int c = g * V;
        float wk[V];
#pragma unroll
        for (int k = 0; k < V; k++) wk[k] = ldf(w, c + k);
        for (i64 p = (i64)blockIdx.y * blockDim.y + threadIdx.y; p < npix; p += (i64)gridDim.y * blockDim.y) {
            float d = ldf(dy, p);
            float yy[V], o[V];
            ldv(y, p * y_cs + c, yy);
#pragma unroll
            for (int k = 0; k < V; k++) {
                float u = kept(d * wk[k], dx);
                u = yy[k] > 0.f ? u : u * slope;
                o[k] = u;
                acc[k] += u;
            }
            stv(dx, p * C + c, o);
        }
    }
    block_partials<V>(acc, partial, CV, g);
}

// ---- Direct kernels for the U-Net's one-channel layers (cuDNN runs them at 1-4 TFLOP/s: ~1 ms each at 8x1024^2) ----

// 3x3 convolution with ONE input channel (the first layer), zero padding 1, fused bias + activation:
// y[p, co] = act(bias[co] + sum_{a,b} x[p + (a-1, b-1)] * wt[co, a, b]). wt: [C, 3, 3] (KRSC with one input channel),
// in the storage type. VN output channels per thread (16-byte stores); blockDim.x == CV = C / VN exactly (a power of
// two <= 32), so each thread keeps its 9 x VN weights in registers; threadIdx.y over pixels. N * H * W < 2^31.
// Version 1 read the weights from shared memory for every pixel (0.56 ms at 8 x 1024^2 x 32 bf16).
template <typename T>
__device__ void conv_in3_fwd(const T* x, int x_cs, const T* wt, const float* bias, T* y, int y_cs, int N, int H,
                             int W, int CV, float slope) {
    const int V = VN<T>::N;
    int c = threadIdx.x * V;
    float wr[9][V], br[V];
#pragma unroll
    for (int k = 0; k < V; k++) {
        br[k] = bias ? bias[c + k] : 0.f;
#pragma unroll
        for (int t = 0; t < 9; t++) wr[t][k] = ldf(wt, (i64)(c + k) * 9 + t);
    }
    int np = N * H * W;
    for (int p = blockIdx.x * blockDim.y + threadIdx.y; p < np; p += gridDim.x * blockDim.y) {
        int w0 = p % W, h0 = (p / W) % H;
        float acc[V];
#pragma unroll
        for (int k = 0; k < V; k++) acc[k] = br[k];
#pragma unroll
        for (int a = 0; a < 3; a++) {
#pragma unroll
            for (int b = 0; b < 3; b++) {
                int hh = h0 + a - 1, ww = w0 + b - 1;
                float xv = (hh >= 0 && hh < H && ww >= 0 && ww < W)
                               ? ldf(x, (i64)(p + (a - 1) * W + (b - 1)) * x_cs) : 0.f;
#pragma unroll
                for (int k = 0; k < V; k++) acc[k] += xv * wr[a * 3 + b][k];
            }
        }
#pragma unroll
        for (int k = 0; k < V; k++) acc[k] = acc[k] > 0.f ? acc[k] : acc[k] * slope;
        stv(y, (i64)p * y_cs + c, acc);
    }
}

// Weight gradient of conv_in3_fwd: partial[blockIdx.x, co * 9 + tap] = sum over this block's pixels of
// x[p + tap offset] * dy[p, co] (f32; finish with sum_parts over the blocks). blockDim.x == CV exactly (a power of
// two <= 32), 256 threads; each thread keeps 9 x VN sums, reduced in a fixed order (warp shuffles, then warps).
template <typename T>
__device__ void conv_in3_bwd_filter(const T* x, int x_cs, const T* dy, int dy_cs, int N, int H, int W, int CV,
                                    float* partial) {
    const int V = VN<T>::N;
    __shared__ float red[8 * 9 * 64];
    int C = CV * V;
    float acc[9][V];
#pragma unroll
    for (int t = 0; t < 9; t++)
#pragma unroll
        for (int k = 0; k < V; k++) acc[t][k] = 0.f;
    int c = threadIdx.x * V;
    int np = N * H * W;
    for (int p = blockIdx.x * blockDim.y + threadIdx.y; p < np; p += gridDim.x * blockDim.y) {
        int w0 = p % W, h0 = (p / W) % H;
        float d[V];
        ldv(dy, (i64)p * dy_cs + c, d);
#pragma unroll
        for (int a = 0; a < 3; a++) {
#pragma unroll
            for (int b = 0; b < 3; b++) {
                int hh = h0 + a - 1, ww = w0 + b - 1;
                float xv = (hh >= 0 && hh < H && ww >= 0 && ww < W)
                               ? ldf(x, (i64)(p + (a - 1) * W + (b - 1)) * x_cs) : 0.f;
#pragma unroll
                for (int k = 0; k < V; k++) acc[a * 3 + b][k] += xv * d[k];
            }
        }
    }
    // Lanes with the same threadIdx.x hold the same channels: fold them (offsets 16 .. CV).
    for (int off = 16; off >= (int)blockDim.x; off >>= 1) {
#pragma unroll
        for (int t = 0; t < 9; t++)
#pragma unroll
            for (int k = 0; k < V; k++) acc[t][k] += __shfl_down_sync(0xffffffffu, acc[t][k], off);
    }
    int tid = threadIdx.y * blockDim.x + threadIdx.x, warp = tid / 32, lane = tid % 32;
    if (lane < (int)blockDim.x) {
#pragma unroll
        for (int t = 0; t < 9; t++)
#pragma unroll
            for (int k = 0; k < V; k++) red[warp * 9 * C + t * C + c + k] = acc[t][k];
    }
    __syncthreads();
    int warps = (blockDim.x * blockDim.y) / 32;
    for (int o = tid; o < 9 * C; o += blockDim.x * blockDim.y) {
        int co = o / 9, t = o - co * 9;
        float s = 0.f;
        for (int wi = 0; wi < warps; wi++) s += red[wi * 9 * C + t * C + co];
        partial[(i64)blockIdx.x * 9 * C + o] = s;
    }
}

// 1x1 convolution to ONE output channel (the U-Net's output layer), fused bias + activation:
// y[p] = act(bias + sum_c x[p, c] * w[c]); one pixel per thread, 16-byte loads of x (cuDNN: 0.35 ms + a bias pass at
// 8 x 1024^2 x 32 bf16). C = CV * VN <= 256.
template <typename T>
__device__ void conv1x1_to1_fwd_vec(const T* x, int x_cs, const T* w, const float* bias, T* y, int y_cs, i64 npix,
                                    int CV, float slope) {
    const int V = VN<T>::N;
    __shared__ float sw[256];
    for (int i = threadIdx.x; i < CV * V; i += blockDim.x) sw[i] = ldf(w, i);
    __syncthreads();
    float b = bias ? bias[0] : 0.f;
    GRID_STRIDE(p, npix) {
        float acc = 0.f;
        for (int g = 0; g < CV; g++) {
            float v[V];
            ldv(x, p * x_cs + g * V, v);
#pragma unroll
            for (int k = 0; k < V; k++) acc += v[k] * sw[g * V + k];
        }
        acc += b;
        stf(y, p * y_cs, acc > 0.f ? acc : acc * slope);
    }
}

// Weight gradient of conv1x1_to1_fwd_vec: partial[blockIdx.x, c] = sum over this block's pixels of x[p, c] * dy[p].
// blockDim.x == CV exactly (a power of two <= 32), 256 threads; fixed-order reduction as conv_in3_bwd_filter.
template <typename T>
__device__ void conv1x1_to1_bwd_filter_vec(const T* x, int x_cs, const T* dy, i64 npix, int CV, float* partial) {
    const int V = VN<T>::N;
    __shared__ float red[8 * 256];
    float acc[V];
#pragma unroll
    for (int k = 0; k < V; k++) acc[k] = 0.f;
    int c = threadIdx.x * V, C = CV * V;
    for (i64 p = (i64)blockIdx.x * blockDim.y + threadIdx.y; p < npix; p += (i64)gridDim.x * blockDim.y) {
        float v[V];
        ldv(x, p * x_cs + c, v);
        float d = ldf(dy, p);
#pragma unroll
        for (int k = 0; k < V; k++) acc[k] += v[k] * d;
    }
    for (int off = 16; off >= (int)blockDim.x; off >>= 1) {
#pragma unroll
        for (int k = 0; k < V; k++) acc[k] += __shfl_down_sync(0xffffffffu, acc[k], off);
    }
    int tid = threadIdx.y * blockDim.x + threadIdx.x, warp = tid / 32, lane = tid % 32;
    if (lane < (int)blockDim.x) {
#pragma unroll
        for (int k = 0; k < V; k++) red[warp * C + c + k] = acc[k];
    }
    __syncthreads();
    int warps = (blockDim.x * blockDim.y) / 32;
    for (int o = tid; o < C; o += blockDim.x * blockDim.y) {
        float t = 0.f;
        for (int wi = 0; wi < warps; wi++) t += red[wi * C + o];
        partial[(i64)blockIdx.x * C + o] = t;
    }
}

// The transposed conv's 2x2 pixel shuffle with the bias and activation fused, 16-byte accesses (version 2 of the
// transposed-conv forward: GEMM + this, instead of cuDNN's stride-2 backward-data + a bias pass). src [N, H, W, 4C]
// packed, channel (a*2 + b)*C + c -> dst [N, 2H, 2W, C] (channel stride dst_cs) at (2i + a, 2j + b, c), then
// y = act(v + bias[c]). threadIdx.x over channel groups (CV = C / VN), threadIdx.y over output pixels; N*4HW < 2^31.
template <typename T>
__device__ void pixel_shuffle2_bias_act_vec(const T* src, T* dst, int dst_cs, const float* bias, int N, int H, int W,
                                            int CV, float slope) {
    const int V = VN<T>::N;
    int C = CV * V, W2 = 2 * W, H2 = 2 * H;
    int nq = N * H2 * W2;
    for (int q = blockIdx.x * blockDim.y + threadIdx.y; q < nq; q += gridDim.x * blockDim.y) {
        int ox = q % W2, t = q / W2;
        int oy = t % H2, n = t / H2;
        i64 s0 = (((i64)n * H + (oy >> 1)) * W + (ox >> 1)) * 4 * C + ((oy & 1) * 2 + (ox & 1)) * C;
        for (int g = threadIdx.x; g < CV; g += blockDim.x) {
            int c = g * V;
            float v[V];
            ldv(src, s0 + c, v);
#pragma unroll
            for (int k = 0; k < V; k++) {
                float u = v[k] + (bias ? bias[c + k] : 0.f);
                v[k] = u > 0.f ? u : u * slope;
            }
            stv(dst, (i64)q * dst_cs + c, v);
        }
    }
}

// conv1x1_to1_bwd_data with VN channels per thread (16-byte stores), 2-D blocks: dx[p, c] = dy[p] * w[c] (+ dx).
template <typename T>
__device__ void conv1x1_to1_bwd_data_vec(const T* dy, const T* w, T* dx, i64 npix, int CV, int accumulate) {
    const int V = VN<T>::N;
    int C = CV * V;
    for (i64 p = (i64)blockIdx.x * blockDim.y + threadIdx.y; p < npix; p += (i64)gridDim.x * blockDim.y) {
        float d = ldf(dy, p);
        for (int g = threadIdx.x; g < CV; g += blockDim.x) {
            int c = g * V;
            float o[V];
            if (accumulate) ldv(dx, p * C + c, o);
#pragma unroll
            for (int k = 0; k < V; k++) {
                float v = d * ldf(w, c + k);
                o[k] = accumulate ? o[k] + v : v;
            }
            stv(dx, p * C + c, o);
        }
    }
}

// out[c] (+)= sum over parts of partial[part, c]. One thread per channel; deterministic order.
template <typename T>
__device__ void sum_parts(const float* partial, int parts, int C, T* out, int accumulate) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float t = 0.f;
    for (int k = 0; k < parts; k++) t += partial[(i64)k * C + c];
    if (accumulate) t += ldf(out, c);
    stf(out, c, t);
}

// 2x2 max-pool, stride 2, floor: y[n, i, j, c] = max over x[n, 2i+a, 2j+b, c].
template <typename T>
__device__ void maxpool2_fwd(const T* x, int x_cs, T* y, int y_cs, int N, int H, int W, int C) {
    int Ho = H / 2, Wo = W / 2;
    GRID_STRIDE(i, (i64)N * Ho * Wo * C) {
        int c = (int)(i % C);
        i64 q = i / C;
        int j = (int)(q % Wo);
        q /= Wo;
        int r = (int)(q % Ho);
        i64 n = q / Ho;
        i64 base = ((n * H + 2 * r) * W + 2 * j) * x_cs + c;
        float m = ldf(x, base);
        m = fmaxf(m, ldf(x, base + x_cs));
        m = fmaxf(m, ldf(x, base + (i64)W * x_cs));
        m = fmaxf(m, ldf(x, base + (i64)W * x_cs + x_cs));
        stf(y, ((n * Ho + r) * Wo + j) * y_cs + c, m);
    }
}

// Gradient of the 2x2 max-pool: each input element gets dy of its window if it is the window's FIRST maximum
// (row-major, strict >, as PyTorch), else 0; rows/columns cut off by the floor get 0. accumulate: dx += that.
template <typename T>
__device__ void maxpool2_bwd(const T* x, int x_cs, const T* dy, int dy_cs, T* dx, int dx_cs, int N, int H, int W,
                             int C, int accumulate) {
    int Ho = H / 2, Wo = W / 2;
    GRID_STRIDE(i, (i64)N * H * W * C) {
        int c = (int)(i % C);
        i64 q = i / C;
        int w = (int)(q % W);
        q /= W;
        int h = (int)(q % H);
        i64 n = q / H;
        int r = h / 2, j = w / 2;
        float g = 0.f;
        if (r < Ho && j < Wo) {
            i64 base = ((n * H + 2 * r) * W + 2 * j) * x_cs + c;
            float v[4] = {ldf(x, base), ldf(x, base + x_cs), ldf(x, base + (i64)W * x_cs),
                          ldf(x, base + (i64)W * x_cs + x_cs)};
            int arg = 0;
            for (int k = 1; k < 4; k++)
                if (v[k] > v[arg]) arg = k;
            if (arg == (h & 1) * 2 + (w & 1)) g = ldf(dy, ((n * Ho + r) * Wo + j) * dy_cs + c);
        }
        i64 o = ((n * H + h) * W + w) * dx_cs + c;
        if (accumulate) g += ldf(dx, o);
        stf(dx, o, g);
    }
}

// Version 2 of the max-pool gradient: one thread per 2x2 window writes its four inputs (version 1: one thread per
// input, each re-reading its whole window, 0.57 TB/s in bf16). The last window of an odd height/width also writes
// the row/column the floor dropped (0, or unchanged when accumulating). Needs H >= 2 and W >= 2.
template <typename T>
__device__ void maxpool2_bwd2(const T* x, int x_cs, const T* dy, int dy_cs, T* dx, int dx_cs, int N, int H, int W,
                              int C, int accumulate) {
    int Ho = H / 2, Wo = W / 2;
    GRID_STRIDE(i, (i64)N * Ho * Wo * C) {
        int c = (int)(i % C);
        i64 q = i / C;
        int j = (int)(q % Wo);
        q /= Wo;
        int r = (int)(q % Ho);
        i64 n = q / Ho;
        i64 base = ((n * H + 2 * r) * W + 2 * j) * x_cs + c;
        float v0 = ldf(x, base), v1 = ldf(x, base + x_cs), v2 = ldf(x, base + (i64)W * x_cs),
              v3 = ldf(x, base + (i64)W * x_cs + x_cs);
        int arg = 0;
        float m = v0;
        if (v1 > m) { m = v1; arg = 1; }
        if (v2 > m) { m = v2; arg = 2; }
        if (v3 > m) { arg = 3; }
        float g = ldf(dy, ((n * Ho + r) * Wo + j) * dy_cs + c);
        int rows = (r == Ho - 1 && (H & 1)) ? 3 : 2;
        int cols = (j == Wo - 1 && (W & 1)) ? 3 : 2;
        for (int a = 0; a < rows; a++) {
            for (int b = 0; b < cols; b++) {
                float v = (a < 2 && b < 2 && a * 2 + b == arg) ? g : 0.f;
                i64 o = ((n * H + 2 * r + a) * W + 2 * j + b) * dx_cs + c;
                if (accumulate) v += ldf(dx, o);
                stf(dx, o, v);
            }
        }
    }
}

// PyTorch's legacy 'nearest' source index: min(floor(dst * (in / out)), in - 1), the scale in float.
__device__ __forceinline__ int nearest_src(int dst, int in, int out) {
    float scale = (float)in / (float)out;
    int s = (int)floorf((float)dst * scale);
    return s < in - 1 ? s : in - 1;
}

// Nearest upsampling x [N, Hi, Wi, C] -> y [N, Ho, Wo, C] (any sizes; 2x is the common case).
template <typename T>
__device__ void upsample_fwd(const T* x, int x_cs, T* y, int y_cs, int N, int Hi, int Wi, int Ho, int Wo, int C) {
    GRID_STRIDE(i, (i64)N * Ho * Wo * C) {
        int c = (int)(i % C);
        i64 q = i / C;
        int w = (int)(q % Wo);
        q /= Wo;
        int h = (int)(q % Ho);
        i64 n = q / Ho;
        int sh = nearest_src(h, Hi, Ho), sw = nearest_src(w, Wi, Wo);
        stf(y, ((n * Ho + h) * Wo + w) * y_cs + c, ldf(x, ((n * Hi + sh) * Wi + sw) * x_cs + c));
    }
}

// First output index whose source index is >= s (the output indices mapping to s are contiguous).
__device__ __forceinline__ int nearest_first(int s, int in, int out) {
    int d = (int)((float)s * (float)out / (float)in) - 2;
    if (d < 0) d = 0;
    while (d < out && nearest_src(d, in, out) < s) d++;
    return d;
}

// Gradient of nearest upsampling: dx[n, h, w, c] = sum of dy over the outputs that copied it. Deterministic gather.
template <typename T>
__device__ void upsample_bwd(const T* dy, int dy_cs, T* dx, int dx_cs, int N, int Hi, int Wi, int Ho, int Wo, int C,
                             int accumulate) {
    GRID_STRIDE(i, (i64)N * Hi * Wi * C) {
        int c = (int)(i % C);
        i64 q = i / C;
        int w = (int)(q % Wi);
        q /= Wi;
        int h = (int)(q % Hi);
        i64 n = q / Hi;
        int h0 = nearest_first(h, Hi, Ho), h1 = nearest_first(h + 1, Hi, Ho);
        int w0 = nearest_first(w, Wi, Wo), w1 = nearest_first(w + 1, Wi, Wo);
        float g = 0.f;
        for (int a = h0; a < h1; a++)
            for (int b = w0; b < w1; b++) g += ldf(dy, ((n * Ho + a) * Wo + b) * dy_cs + c);
        i64 o = ((n * Hi + h) * Wi + w) * dx_cs + c;
        if (accumulate) g += ldf(dx, o);
        stf(dx, o, g);
    }
}

// Loss and its gradient in one pass. kind 0: MSE, sum (p - t)^2, grad = scale * 2 (p - t);
// kind 1: L1, sum |p - t|, grad = scale * sign(p - t). scale = 1 / n for a mean. Block sums of the loss terms in
// float go to partial[blockIdx.x] (blockDim.x == 256); grad may be null (loss only).
template <typename T>
__device__ void loss_fwd_bwd(const T* pred, const float* target, T* grad, i64 n, int kind, float scale,
                             float* partial) {
    __shared__ float s[256];
    float acc = 0.f;
    GRID_STRIDE(i, n) {
        float d = ldf(pred, i) - target[i];
        float g;
        if (kind == 0) {
            acc += d * d;
            g = 2.f * d;
        } else {
            acc += fabsf(d);
            g = (d > 0.f) ? 1.f : ((d < 0.f) ? -1.f : 0.f);
        }
        if (grad) stf(grad, i, g * scale);
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int k = 128; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// out[0] = scale * sum(partial[0..n]); one block of 256 threads, accumulated in double.
extern "C" __global__ void reduce_sum_f32(const float* partial, int n, float scale, float* out) {
    __shared__ double s[256];
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += 256) acc += (double)partial[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int k = 128; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = (float)(s[0] * (double)scale);
}

// Adam (PyTorch torch.optim.Adam, not AdamW) over one flat parameter buffer: f32 master weights p, f32 moments m, v,
// gradients g in the compute type; `copy` (may be null) receives the updated weights in bf16 for bf16 compute.
//   g' = g * grad_scale + wd * p;  m = lerp(m, g', 1 - b1);  v = b2 v + (1 - b2) g'^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)          (bc_k = 1 - b_k^step)
// In a captured training step the bias corrections come from device memory `bc` = [bc1, bc2_sqrt] (refreshed from
// pinned host memory by a copy in the same graph, so a replay uses the current step); `loss` (may be null): skip the
// whole update when the step's loss is not finite (parameters and moments stay as they were).
template <typename T>
__device__ void adam(float* p, bf16* copy, const T* g, float* m, float* v, i64 n, float lr, float b1, float b2,
                     float eps, float wd, float bc1, float bc2_sqrt, float grad_scale, const float* bc,
                     const float* loss) {
    if (loss && !isfinite(loss[0])) return;
    if (bc) {
        bc1 = bc[0];
        bc2_sqrt = bc[1];
    }
    GRID_STRIDE(i, n) {
        float gi = ldf(g, i) * grad_scale;
        float pi = p[i];
        if (wd != 0.f) gi += wd * pi;
        float mi = m[i] + (1.f - b1) * (gi - m[i]);
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        pi -= (lr / bc1) * (mi / (sqrtf(vi) / bc2_sqrt + eps));
        p[i] = pi;
        if (copy) stf(copy, i, pi);
    }
}

// Backward-data of a 1x1 convolution with ONE output channel (the U-Net's output layer): dx[p, c] = dy[p] * w[c]
// (+ dx[p, c] if accumulate). cuDNN's general kernels are slow for this shape (6 ms in bf16 at 8x1024^2); this is one
// memory pass.
template <typename T>
__device__ void conv1x1_to1_bwd_data(const T* dy, const T* w, T* dx, i64 npix, int C, int accumulate) {
    GRID_STRIDE(i, npix * C) {
        i64 p = i / C;
        int c = (int)(i - p * C);
        float v = ldf(dy, p) * ldf(w, c);
        if (accumulate) v += ldf(dx, i);
        stf(dx, i, v);
    }
}

// 2x2 pixel shuffle for the transposed conv done as a GEMM: src [N, H, W, 4C] with channel (a*2 + b)*C + c ->
// dst [N, 2H, 2W, C] (channel stride dst_cs) at (2i + a, 2j + b, c).
template <typename T>
__device__ void pixel_shuffle2(const T* src, T* dst, int dst_cs, int N, int H, int W, int C) {
    GRID_STRIDE(i, (i64)N * 4 * H * W * C) {
        int c = (int)(i % C);
        i64 q = i / C;
        int ox = (int)(q % (2 * W));
        q /= 2 * W;
        int oy = (int)(q % (2 * H));
        i64 n = q / (2 * H);
        int s = ((oy & 1) * 2 + (ox & 1)) * C + c;
        float v = ldf(src, ((n * H + (oy >> 1)) * W + (ox >> 1)) * 4 * C + s);
        stf(dst, ((n * 2 * H + oy) * 2 * W + ox) * dst_cs + c, v);
    }
}

template <typename T>
__device__ void fill(T* p, i64 n, float v) {
    GRID_STRIDE(i, n) stf(p, i, v);
}

// ---- extern "C" instantiations: NAME_T for one storage type, NAME_Ti_To for two. ----
#define FOR_T(X) X(f32, float) X(bf16, bf16)

#define INST1(sfx, T)                                                                                              \
    extern "C" __global__ void act_bwd_##sfx(const T* dy, int dy_cs, const T* y, int y_cs, T* dx, int dx_cs,       \
                                             i64 npix, int C, float slope, float* partial) {                       \
        act_bwd<T>(dy, dy_cs, y, y_cs, dx, dx_cs, npix, C, slope, partial);                                        \
    }                                                                                                              \
    extern "C" __global__ void sum_parts_##sfx(const float* partial, int parts, int C, T* out, int accumulate) {   \
        sum_parts<T>(partial, parts, C, out, accumulate);                                                          \
    }                                                                                                              \
    extern "C" __global__ void maxpool2_fwd_##sfx(const T* x, int x_cs, T* y, int y_cs, int N, int H, int W,       \
                                                  int C) {                                                         \
        maxpool2_fwd<T>(x, x_cs, y, y_cs, N, H, W, C);                                                             \
    }                                                                                                              \
    extern "C" __global__ void maxpool2_bwd_##sfx(const T* x, int x_cs, const T* dy, int dy_cs, T* dx, int dx_cs,  \
                                                  int N, int H, int W, int C, int accumulate) {                    \
        maxpool2_bwd<T>(x, x_cs, dy, dy_cs, dx, dx_cs, N, H, W, C, accumulate);                                    \
    }                                                                                                              \
    extern "C" __global__ void maxpool2_bwd2_##sfx(const T* x, int x_cs, const T* dy, int dy_cs, T* dx, int dx_cs, \
                                                   int N, int H, int W, int C, int accumulate) {                   \
        maxpool2_bwd2<T>(x, x_cs, dy, dy_cs, dx, dx_cs, N, H, W, C, accumulate);                                   \
    }                                                                                                              \
    extern "C" __global__ void upsample_fwd_##sfx(const T* x, int x_cs, T* y, int y_cs, int N, int Hi, int Wi,     \
                                                  int Ho, int Wo, int C) {                                         \
        upsample_fwd<T>(x, x_cs, y, y_cs, N, Hi, Wi, Ho, Wo, C);                                                   \
    }                                                                                                              \
    extern "C" __global__ void upsample_bwd_##sfx(const T* dy, int dy_cs, T* dx, int dx_cs, int N, int Hi, int Wi, \
                                                  int Ho, int Wo, int C, int accumulate) {                         \
        upsample_bwd<T>(dy, dy_cs, dx, dx_cs, N, Hi, Wi, Ho, Wo, C, accumulate);                                   \
    }                                                                                                              \
    extern "C" __global__ void loss_##sfx(const T* pred, const float* target, T* grad, i64 n, int kind,            \
                                          float scale, float* partial) {                                           \
        loss_fwd_bwd<T>(pred, target, grad, n, kind, scale, partial);                                              \
    }                                                                                                              \
    extern "C" __global__ void adam_##sfx(float* p, bf16* copy, const T* g, float* m, float* v, i64 n, float lr,   \
                                          float b1, float b2, float eps, float wd, float bc1, float bc2_sqrt,      \
                                          float grad_scale, const float* bc, const float* loss) {                  \
        adam<T>(p, copy, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2_sqrt, grad_scale, bc, loss);                    \
    }                                                                                                              \
    extern "C" __global__ void conv1x1_to1_bwd_data_##sfx(const T* dy, const T* w, T* dx, i64 npix, int C,         \
                                                          int accumulate) {                                        \
        conv1x1_to1_bwd_data<T>(dy, w, dx, npix, C, accumulate);                                                   \
    }                                                                                                              \
    extern "C" __global__ void pixel_shuffle2_##sfx(const T* src, T* dst, int dst_cs, int N, int H, int W, int C) { \
        pixel_shuffle2<T>(src, dst, dst_cs, N, H, W, C);                                                           \
    }                                                                                                              \
    extern "C" __global__ void fill_##sfx(T* p, i64 n, float v) { fill<T>(p, n, v); }                            \
    extern "C" __global__ void bias_act_vec_##sfx(const T* x, int x_cs, const float* bias, T* y, int y_cs,         \
                                                  i64 npix, int CV, float slope, int accumulate) {                 \
        bias_act_vec<T>(x, x_cs, bias, y, y_cs, npix, CV, slope, accumulate);                                      \
    }                                                                                                              \
    extern "C" __global__ void act_bwd_vec_##sfx(const T* dy, int dy_cs, const T* y, int y_cs, T* dx, int dx_cs,   \
                                                 i64 npix, int CV, float slope, float* partial) {                  \
        act_bwd_vec<T>(dy, dy_cs, y, y_cs, dx, dx_cs, npix, CV, slope, partial);                                   \
    }                                                                                                              \
    extern "C" __global__ void maxpool2_fwd_vec_##sfx(const T* x, int x_cs, T* y, int y_cs, int N, int H, int W,   \
                                                      int CV) {                                                    \
        maxpool2_fwd_vec<T>(x, x_cs, y, y_cs, N, H, W, CV);                                                        \
    }                                                                                                              \
    extern "C" __global__ void maxpool2_bwd_vec_##sfx(const T* x, int x_cs, const T* dy, int dy_cs, T* dx,         \
                                                      int dx_cs, int N, int H, int W, int CV, int accumulate) {    \
        maxpool2_bwd_vec<T>(x, x_cs, dy, dy_cs, dx, dx_cs, N, H, W, CV, accumulate);                               \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(256, 3) maxpool2_bwd_act_vec_##sfx(const T* x, int x_cs, const T* dy, int dy_cs, T* dx,     \
                                                          int dx_cs, int N, int H, int W, int CV, int accumulate,  \
                                                          float slope, float* partial) {                           \
        maxpool2_bwd_act_vec<T>(x, x_cs, dy, dy_cs, dx, dx_cs, N, H, W, CV, accumulate, slope, partial);           \
    }                                                                                                              \
    extern "C" __global__ void conv1x1_to1_bwd_data_act_vec_##sfx(const T* dy, const T* w, T* dx, i64 npix,        \
                                                                  int CV, const T* y, int y_cs, float slope,       \
                                                                  float* partial) {                                \
        conv1x1_to1_bwd_data_act_vec<T>(dy, w, dx, npix, CV, y, y_cs, slope, partial);                             \
    }                                                                                                              \
    extern "C" __global__ void conv_in3_fwd_##sfx(const T* x, int x_cs, const T* wt, const float* bias, T* y,      \
                                                  int y_cs, int N, int H, int W, int CV, float slope) {            \
        conv_in3_fwd<T>(x, x_cs, wt, bias, y, y_cs, N, H, W, CV, slope);                                           \
    }                                                                                                              \
    extern "C" __global__ void conv_in3_bwd_filter_##sfx(const T* x, int x_cs, const T* dy, int dy_cs, int N,      \
                                                         int H, int W, int CV, float* partial) {                   \
        conv_in3_bwd_filter<T>(x, x_cs, dy, dy_cs, N, H, W, CV, partial);                                          \
    }                                                                                                              \
    extern "C" __global__ void conv1x1_to1_bwd_data_vec_##sfx(const T* dy, const T* w, T* dx, i64 npix, int CV,   \
                                                              int accumulate) {                                    \
        conv1x1_to1_bwd_data_vec<T>(dy, w, dx, npix, CV, accumulate);                                              \
    }                                                                                                              \
    extern "C" __global__ void conv1x1_to1_fwd_vec_##sfx(const T* x, int x_cs, const T* w, const float* bias, T* y, \
                                                         int y_cs, i64 npix, int CV, float slope) {                \
        conv1x1_to1_fwd_vec<T>(x, x_cs, w, bias, y, y_cs, npix, CV, slope);                                        \
    }                                                                                                              \
    extern "C" __global__ void conv1x1_to1_bwd_filter_vec_##sfx(const T* x, int x_cs, const T* dy, i64 npix,      \
                                                                int CV, float* partial) {                          \
        conv1x1_to1_bwd_filter_vec<T>(x, x_cs, dy, npix, CV, partial);                                             \
    }                                                                                                              \
    extern "C" __global__ void pixel_shuffle2_bias_act_vec_##sfx(const T* src, T* dst, int dst_cs,                 \
                                                                 const float* bias, int N, int H, int W, int CV,   \
                                                                 float slope) {                                    \
        pixel_shuffle2_bias_act_vec<T>(src, dst, dst_cs, bias, N, H, W, CV, slope);                                \
    }
FOR_T(INST1)

#define INST2(si, Ti, so, To)                                                                                      \
    extern "C" __global__ void bias_act_##si##_##so(const Ti* x, int x_cs, const float* bias, To* y, int y_cs,     \
                                                    i64 npix, int C, float slope, int accumulate) {                \
        bias_act_fwd<Ti, To>(x, x_cs, bias, y, y_cs, npix, C, slope, accumulate);                                  \
    }                                                                                                              \
    extern "C" __global__ void bias_act2_##si##_##so(const Ti* x, int x_cs, const float* bias, To* y, int y_cs,    \
                                                     i64 npix, int C, float slope, int accumulate) {               \
        bias_act_fwd2<Ti, To>(x, x_cs, bias, y, y_cs, npix, C, slope, accumulate);                                 \
    }                                                                                                              \
    extern "C" __global__ void image_norm_##si##_##so(const Ti* x, To* y, i64 n, double center, double spread,     \
                                                      int restore) {                                               \
        image_norm<Ti, To>(x, y, n, center, spread, restore);                                                      \
    }
INST2(f32, float, f32, float)
INST2(bf16, bf16, bf16, bf16)
INST2(f32, float, bf16, bf16)
INST2(bf16, bf16, f32, float)
