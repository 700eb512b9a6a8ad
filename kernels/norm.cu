// GroupNorm (+SiLU) over NHWC and LayerNorm over the last dimension. See LcmGroupNormParams and
// LcmLayerNormParams in lcm_abi.h.
//
// GroupNorm, one pass of statistics over the data (then one read and one write to apply):
//  - stats: a block owns a chunk of pixels and all C channels. Thread (row, col) always reads the same
//    `vec` channels (blockDim = cols·rows), so it keeps per-channel sums in registers — no group logic in
//    the hot loop, and 16-byte coalesced loads along C. Sums are of x − shift, the shift being the chunk's
//    first pixel, so Σ(x−s)² − (Σ(x−s))²/n does not cancel catastrophically when |mean| ≫ std. The chunk's
//    per-channel (mean, M2) are merged into per-group (mean, M2) with Chan's formula.
//  - finalize: one warp per group merges the chunks (Chan again) into (mean, rstd).
//  - apply: thread (row, col) folds gamma·rstd and beta − mean·gamma·rstd for its channels into
//    registers once, then streams its pixels.
// Deterministic: no atomics; every reduction has a fixed order.
#include "lcm_abi.h"
#include "lcm_device.cuh"

namespace lcm {
namespace norm {

template <typename E, int V>
static __device__ __forceinline__ void group_norm_stats(const LcmGroupNormParams& p) {
    float* sm = reinterpret_cast<float*>(dev::dynamic_smem());
    const int C = p.c, cols = C / V, rows = blockDim.x / cols;
    const int tid = threadIdx.x, col = tid % cols, row = tid / cols;
    const int b = blockIdx.y, chunk = blockIdx.x;
    const int p0 = chunk * p.chunk_pixels, p1 = min(p.hw, p0 + p.chunk_pixels), np = p1 - p0;
    const E* xb = reinterpret_cast<const E*>(p.x) + (long long)b * p.hw * C;
    float* S1 = sm;               // [rows][C]
    float* S2 = sm + rows * C;    // [rows][C]
    float* MC = sm + 2 * rows * C;  // [C] per-channel mean of the chunk
    float* QC = MC + C;             // [C] per-channel M2 of the chunk

    float shift[V], s1[V], s2[V];
    dev::load_vec<V>(xb + (long long)p0 * C + col * V, shift);
#pragma unroll
    for (int j = 0; j < V; ++j) s1[j] = s2[j] = 0.0f;
    for (int px = p0 + row; px < p1; px += rows) {
        float v[V];
        dev::load_vec<V>(xb + (long long)px * C + col * V, v);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const float d = v[j] - shift[j];
            s1[j] += d;
            s2[j] += d * d;
        }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
        S1[row * C + col * V + j] = s1[j];
        S2[row * C + col * V + j] = s2[j];
    }
    __syncthreads();
    const float inv_np = 1.0f / (float)np;
    for (int c = tid; c < C; c += blockDim.x) {
        float a = 0.0f, q = 0.0f;
        for (int r = 0; r < rows; ++r) {
            a += S1[r * C + c];
            q += S2[r * C + c];
        }
        const float sh = dev::to_f32(xb[(long long)p0 * C + c]);
        MC[c] = sh + a * inv_np;
        QC[c] = fmaxf(q - a * a * inv_np, 0.0f);
    }
    __syncthreads();
    const int cpg = C / p.groups;
    for (int g = tid; g < p.groups; g += blockDim.x) {
        float mean = 0.0f;
        for (int c = g * cpg; c < (g + 1) * cpg; ++c) mean += MC[c];
        mean /= (float)cpg;
        float m2 = 0.0f, dev2 = 0.0f;
        for (int c = g * cpg; c < (g + 1) * cpg; ++c) {
            m2 += QC[c];
            dev2 += (MC[c] - mean) * (MC[c] - mean);
        }
        float* out = p.partial + ((long long)(b * p.chunks + chunk) * p.groups + g) * 2;
        out[0] = mean;
        out[1] = m2 + (float)np * dev2;
    }
}

// Chan et al.'s merge of two (count, mean, M2) summaries.
static __device__ __forceinline__ void chan_merge(float& n, float& mean, float& m2, float nb, float meanb, float m2b) {
    const float nt = n + nb;
    if (nb == 0.0f) return;
    if (n == 0.0f) {
        n = nb;
        mean = meanb;
        m2 = m2b;
        return;
    }
    const float delta = meanb - mean;
    mean += delta * (nb / nt);
    m2 += m2b + delta * delta * (n * nb / nt);
    n = nt;
}

static __device__ __forceinline__ void group_norm_finalize(const LcmGroupNormParams& p) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int b = blockIdx.x, cpg = p.c / p.groups;
    for (int g = warp; g < p.groups; g += nwarps) {
        float n = 0.0f, mean = 0.0f, m2 = 0.0f;
        for (int ch = lane; ch < p.chunks; ch += 32) {
            const float* e = p.partial + ((long long)(b * p.chunks + ch) * p.groups + g) * 2;
            const int np = min(p.hw, (ch + 1) * p.chunk_pixels) - ch * p.chunk_pixels;
            chan_merge(n, mean, m2, (float)(np * cpg), e[0], e[1]);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float nb = __shfl_xor_sync(0xffffffffu, n, o);
            const float mb = __shfl_xor_sync(0xffffffffu, mean, o);
            const float qb = __shfl_xor_sync(0xffffffffu, m2, o);
            chan_merge(n, mean, m2, nb, mb, qb);
        }
        if (lane == 0) {
            const float var = m2 / n;  // population variance, as torch
            p.stats[(b * p.groups + g) * 2] = mean;
            p.stats[(b * p.groups + g) * 2 + 1] = rsqrtf(var + p.eps);
        }
    }
}

template <typename E, int V>
static __device__ __forceinline__ void group_norm_apply(const LcmGroupNormParams& p) {
    const E* x = reinterpret_cast<const E*>(p.x);
    const E* gamma = reinterpret_cast<const E*>(p.gamma);
    const E* beta = reinterpret_cast<const E*>(p.beta);
    E* out = reinterpret_cast<E*>(p.out);
    const int C = p.c, cols = C / V, rows = blockDim.x / cols;
    const int tid = threadIdx.x, col = tid % cols, row = tid / cols;
    const int b = blockIdx.y, chunk = blockIdx.x;
    const int p0 = chunk * p.chunk_pixels, p1 = min(p.hw, p0 + p.chunk_pixels);
    const int cpg = C / p.groups;
    float sc[V], sh[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
        const int c = col * V + j, g = c / cpg;
        const float mean = p.stats[(b * p.groups + g) * 2], rstd = p.stats[(b * p.groups + g) * 2 + 1];
        sc[j] = dev::to_f32(gamma[c]) * rstd;
        sh[j] = dev::to_f32(beta[c]) - mean * sc[j];
    }
    const long long base = (long long)b * p.hw * C + col * V;
    for (int px = p0 + row; px < p1; px += rows) {
        float v[V];
        dev::load_vec<V>(x + base + (long long)px * C, v);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const float y = v[j] * sc[j] + sh[j];
            v[j] = p.silu ? dev::silu(y) : y;
        }
        dev::store_vec<V>(out + base + (long long)px * C, v);
    }
}

// One warp per row; three passes (mean, variance about the mean, apply) over a row that stays in L1.
template <int V>
static __device__ __forceinline__ void layer_norm(const LcmLayerNormParams& p) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= p.rows) return;
    const int C = p.c, nv = C / V;
    const __half* x = p.x + (long long)row * C;
    __half* y = p.out + (long long)row * C;
    float sum = 0.0f;
    for (int i = lane; i < nv; i += 32) {
        float v[V];
        dev::load_vec<V>(x + i * V, v);
#pragma unroll
        for (int j = 0; j < V; ++j) sum += v[j];
    }
    const float mean = dev::warp_sum(sum) / (float)C;
    float sq = 0.0f;
    for (int i = lane; i < nv; i += 32) {
        float v[V];
        dev::load_vec<V>(x + i * V, v);
#pragma unroll
        for (int j = 0; j < V; ++j) sq += (v[j] - mean) * (v[j] - mean);
    }
    const float rstd = rsqrtf(dev::warp_sum(sq) / (float)C + p.eps);
    for (int i = lane; i < nv; i += 32) {
        float v[V];
        dev::load_vec<V>(x + i * V, v);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const int c = i * V + j;
            v[j] = (v[j] - mean) * rstd * __half2float(p.gamma[c]) + __half2float(p.beta[c]);
        }
        dev::store_vec<V>(y + i * V, v);
    }
}

}  // namespace norm
}  // namespace lcm

// `_v8` (f16) / `_v4` (f32): C a multiple of the 16-byte vector; `_v1`: any C. The f32 forms (x, gamma,
// beta, out as float) serve VAEs decoded in f32. Launch shapes in src/cuda/launch/norm.rs.
#define LCM_GROUP_NORM(suffix, E, V)                                                                       \
    extern "C" __global__ void group_norm_stats_##suffix(const __grid_constant__ LcmGroupNormParams p) { \
        lcm::norm::group_norm_stats<E, V>(p);                                                            \
    }                                                                                                    \
    extern "C" __global__ void group_norm_apply_##suffix(const __grid_constant__ LcmGroupNormParams p) { \
        lcm::norm::group_norm_apply<E, V>(p);                                                            \
    }
LCM_GROUP_NORM(v8_f16, __half, 8)
LCM_GROUP_NORM(v1_f16, __half, 1)
LCM_GROUP_NORM(v4_f32, float, 4)
LCM_GROUP_NORM(v1_f32, float, 1)
#undef LCM_GROUP_NORM
extern "C" __global__ void group_norm_finalize(const __grid_constant__ LcmGroupNormParams p) {
    lcm::norm::group_norm_finalize(p);
}
extern "C" __global__ void __launch_bounds__(128) layer_norm_v8_f16(const __grid_constant__ LcmLayerNormParams p) {
    lcm::norm::layer_norm<8>(p);
}
extern "C" __global__ void __launch_bounds__(128) layer_norm_v1_f16(const __grid_constant__ LcmLayerNormParams p) {
    lcm::norm::layer_norm<1>(p);
}
