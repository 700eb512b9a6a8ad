// Fused multi-head attention, flash-attention style: per block of queries, loop over key/value tiles
// with an online softmax (running max and sum per row, base-2 exponentials), so the score matrix never
// leaves registers. See LcmAttnParams in lcm_abi.h.
//
// v1 (this file), two kernels:
//  - `flash_fwd<DP, BKV, CAUSAL>`: 4 warps, 64 queries per block, 16 query rows per warp with the whole
//    (padded) head dim DP of the output accumulator in registers. Q fragments stay in registers, K and V
//    tiles are double-buffered through cp.async. S = Q·Kᵀ and O += P·V are mma.sync m16n8k16; P goes from
//    the S accumulators to A fragments without touching shared memory. The runtime head dim d ≤ DP: the
//    columns d..DP are zero-filled, so one instantiation serves every d in its range.
//  - `flash_fwd_wide<DP>` for heads too wide for one warp's registers (the VAE's single 512-wide head):
//    8 warps = 2 row groups of 16 queries × 4 slices of DP/4 channels. Each warp computes a partial
//    Q·Kᵀ over its slice, the partials are summed through shared memory, every warp of a row group runs
//    the same softmax, and each accumulates its own DP/4-wide slice of O.
//  - `flash_fwd_wide_tf32<DP>`: the wide kernel on f32 activations (see its comment).
// Keys past n_kv (and, when causal, past the query) are masked with −inf; tiles past the diagonal are
// skipped. Zero fill of K/V rows past n_kv matters: 0·NaN would poison a row otherwise. A batch row
// under the key limit (kv_limit_*) takes its own key count as its n_kv for all of this — loads, tile
// count, mask — so the keys past it (padding, whatever it holds) are never read; only the batch strides
// use the full n_kv.
#include "lcm_abi.h"
#include "lcm_device.cuh"

namespace lcm {
namespace attn {

// -inf; a literal (not __int_as_float) so it can be constexpr.
constexpr float kNegInf = -__builtin_huge_valf();

// Copies rows [r0, r0 + R) × DP columns of a head into shared memory (row stride LD), zero past `rows`
// and past column d. 16-byte cp.async when d and the strides allow, element copies otherwise.
template <int DP, int LD, int R, int THREADS, typename E>
static __device__ __forceinline__ void load_rows(E (*dst)[LD], const E* src, int ld, int r0, int rows, int d, bool vec) {
    constexpr int V = dev::kVec<E>, kChunks = DP / V;
    for (int idx = threadIdx.x; idx < R * kChunks; idx += THREADS) {
        const int r = idx / kChunks, c = (idx % kChunks) * V;
        const bool row_ok = r0 + r < rows;
        const E* s = src + (long long)(r0 + r) * ld + c;
        if (vec) {
            const bool ok = row_ok && c < d;  // d % V == 0 here, so the chunk is all in or all out
            dev::cp_async16(&dst[r][c], ok ? s : src, ok ? 16 : 0);
        } else {
#pragma unroll
            for (int j = 0; j < V; ++j) dst[r][c + j] = (row_ok && c + j < d) ? s[j] : dev::from_f32<E>(0.0f);
        }
    }
}

// Scales, masks and folds one tile of scores (NJ n8-fragments, rows g and g+8 of a warp's 16) into the
// running softmax state; leaves P = exp2(s − m) in `s` and rescales the O accumulators.
template <int NJ, int NO, bool CAUSAL>
static __device__ __forceinline__ void online_softmax(float (&s)[NJ][4], float (&o)[NO][4], float (&mrow)[2],
                                                      float (&lrow)[2], int kv0, int q_row0, int n_kv,
                                                      float scale_log2) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int key = kv0 + j * 8 + 2 * (lane & 3) + (e & 1);
            const int q = q_row0 + (lane >> 2) + (e >> 1) * 8;
            const bool masked = key >= n_kv || (CAUSAL && key > q);
            s[j][e] = masked ? kNegInf : s[j][e] * scale_log2;
        }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float mx = kNegInf;
#pragma unroll
        for (int j = 0; j < NJ; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
        // The four lanes 4g..4g+3 hold row g: reduce across them.
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(mrow[r], mx);
        // A row with every key masked so far keeps m = −inf; subtract 0 then so exp2 gives 0, not NaN.
        const float m_use = m_new == kNegInf ? 0.0f : m_new;
        const float alpha = exp2f(mrow[r] - m_use);
        mrow[r] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            s[j][2 * r] = exp2f(s[j][2 * r] - m_use);
            s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - m_use);
            sum += s[j][2 * r] + s[j][2 * r + 1];
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        lrow[r] = lrow[r] * alpha + sum;
#pragma unroll
        for (int j = 0; j < NO; ++j) {
            o[j][2 * r] *= alpha;
            o[j][2 * r + 1] *= alpha;
        }
    }
}

// Writes a warp's 16 rows of O / l: columns [c0, c0 + 8·NO) of the head, those below d.
template <int NO, typename E>
static __device__ __forceinline__ void store_rows(const float (&o)[NO][4], const float (&lrow)[2], E* ob, int ldo,
                                                  int q_row0, int n_q, int c0, int d) {
    const int lane = threadIdx.x & 31;
    const bool pair = (d & 1) == 0 && (ldo & 1) == 0;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int q = q_row0 + (lane >> 2) + r * 8;
        if (q >= n_q) continue;
        const float inv = lrow[r] > 0.0f ? 1.0f / lrow[r] : 0.0f;
        E* row = ob + (long long)q * ldo;
#pragma unroll
        for (int j = 0; j < NO; ++j) {
            const int c = c0 + j * 8 + 2 * (lane & 3);
            if (c >= d) continue;
            const float v0 = o[j][2 * r] * inv, v1 = o[j][2 * r + 1] * inv;
            if (pair) {
                if constexpr (sizeof(E) == 2) {
                    *reinterpret_cast<__half2*>(row + c) = __floats2half2_rn(v0, v1);
                } else {
                    *reinterpret_cast<float2*>(row + c) = make_float2(v0, v1);
                }
            } else {
                row[c] = dev::from_f32<E>(v0);
                if (c + 1 < d) row[c + 1] = dev::from_f32<E>(v1);
            }
        }
    }
}

// The keys batch row b sees: the limit's count for its rows, n_kv for the others.
static __device__ __forceinline__ int kv_count(const LcmAttnParams& p, int b) {
    return b >= p.kv_limit_rows_begin && b < p.kv_limit_rows_end ? p.kv_limit_keys : p.n_kv;
}

constexpr int BQ = 64;

template <int DP, int BKV, bool CAUSAL>
struct Flash {
    static constexpr int kLD = DP + 8;  // odd number of 16-byte units per row: conflict-free ldmatrix
    static constexpr int kSmemBytes = (BQ + 4 * BKV) * kLD * 2;
    static_assert(DP % 16 == 0 && BKV % 16 == 0, "fragment multiples");
};

template <int DP, int BKV, bool CAUSAL>
static __device__ __forceinline__ void flash_fwd(const LcmAttnParams& p) {
    constexpr int LD = Flash<DP, BKV, CAUSAL>::kLD;
    unsigned char* smem_raw = dev::dynamic_smem();
    __half(*Qs)[LD] = reinterpret_cast<__half(*)[LD]>(smem_raw);
    __half(*Ks)[BKV][LD] = reinterpret_cast<__half(*)[BKV][LD]>(smem_raw + BQ * LD * 2);
    __half(*Vs)[BKV][LD] = reinterpret_cast<__half(*)[BKV][LD]>(smem_raw + (BQ + 2 * BKV) * LD * 2);

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BQ;
    const int d = p.head_dim;
    const __half* qb = p.q + (long long)b * p.n_q * p.ldq + h * d;
    const __half* kb = p.k + (long long)b * p.n_kv * p.ldk + h * d;
    const __half* vb = p.v + (long long)b * p.n_kv * p.ldv + h * d;
    __half* ob = p.out + (long long)b * p.n_q * p.ldo + h * d;
    const bool vec = (d % 8 == 0) && (p.ldq % 8 == 0) && (p.ldk % 8 == 0) && (p.ldv % 8 == 0);
    const int n_kv = kv_count(p, b);

    const int kv_end = CAUSAL ? min(n_kv, q0 + BQ) : n_kv;
    const int ntiles = (kv_end + BKV - 1) / BKV;

    load_rows<DP, LD, BQ, 128>(Qs, qb, p.ldq, q0, p.n_q, d, vec);
    load_rows<DP, LD, BKV, 128>(Ks[0], kb, p.ldk, 0, n_kv, d, vec);
    load_rows<DP, LD, BKV, 128>(Vs[0], vb, p.ldv, 0, n_kv, d, vec);
    dev::cp_async_commit();

    uint32_t qf[DP / 16][4];
    float o[DP / 8][4];
#pragma unroll
    for (int j = 0; j < DP / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mrow[2] = {kNegInf, kNegInf}, lrow[2] = {0.0f, 0.0f};
    const int q_row0 = q0 + warp * 16;

    for (int t = 0; t < ntiles; ++t) {
        const int buf = t & 1;
        if (t + 1 < ntiles) {
            // The other buffer was last read in iteration t-1, which ended with a barrier.
            load_rows<DP, LD, BKV, 128>(Ks[buf ^ 1], kb, p.ldk, (t + 1) * BKV, n_kv, d, vec);
            load_rows<DP, LD, BKV, 128>(Vs[buf ^ 1], vb, p.ldv, (t + 1) * BKV, n_kv, d, vec);
            dev::cp_async_commit();
            dev::cp_async_wait<1>();
        } else {
            dev::cp_async_wait<0>();
        }
        __syncthreads();
        if (t == 0) {
#pragma unroll
            for (int kk = 0; kk < DP / 16; ++kk)
                dev::ldmatrix_x4(qf[kk], &Qs[warp * 16 + (lane & 15)][kk * 16 + (lane >> 4) * 8]);
        }

        float s[BKV / 8][4];
#pragma unroll
        for (int j = 0; j < BKV / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
            for (int jn = 0; jn < BKV / 16; ++jn) {
                uint32_t r[4];
                dev::ldmatrix_x4(r, &Ks[buf][jn * 16 + (lane & 7) + (lane >> 4) * 8][kk * 16 + ((lane >> 3) & 1) * 8]);
                dev::mma_f16(s[2 * jn], qf[kk], r[0], r[1]);
                dev::mma_f16(s[2 * jn + 1], qf[kk], r[2], r[3]);
            }
        }
        online_softmax<BKV / 8, DP / 8, CAUSAL>(s, o, mrow, lrow, t * BKV, q_row0, n_kv, p.scale_log2);

#pragma unroll
        for (int kk = 0; kk < BKV / 16; ++kk) {
            const uint32_t a[4] = {dev::pack_half2(s[2 * kk][0], s[2 * kk][1]), dev::pack_half2(s[2 * kk][2], s[2 * kk][3]),
                                   dev::pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                   dev::pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dn = 0; dn < DP / 16; ++dn) {
                uint32_t r[4];
                dev::ldmatrix_x4_trans(r, &Vs[buf][kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][dn * 16 + (lane >> 4) * 8]);
                dev::mma_f16(o[2 * dn], a, r[0], r[1]);
                dev::mma_f16(o[2 * dn + 1], a, r[2], r[3]);
            }
        }
        __syncthreads();
    }
    store_rows<DP / 8>(o, lrow, ob, p.ldo, q_row0, p.n_q, 0, d);
}

constexpr int BQW = 32;  // wide kernel: 2 row groups of 16
constexpr int BKW = 16;

template <int DP>
struct Wide {
    static constexpr int kLD = DP + 8;
    static constexpr int kSlice = DP / 4;
    // Two stages of {K, V} tiles, then the partial scores [2 row groups][4 slices][32 lanes][8].
    static constexpr int kTileBytes = 2 * BKW * kLD * 2;
    static constexpr int kSmemBytes = 2 * kTileBytes + 2 * 4 * 32 * 8 * 4;
    // Q is staged once through stage 1's {K, V} space, which is exactly BQW rows.
    static_assert(2 * BKW == BQW, "Q staging reuses one K/V stage");
    static_assert(kSlice % 16 == 0, "slice must be whole fragments");
};

template <int DP>
static __device__ __forceinline__ void flash_fwd_wide(const LcmAttnParams& p) {
    constexpr int LD = Wide<DP>::kLD, SL = Wide<DP>::kSlice;
    unsigned char* smem_raw = dev::dynamic_smem();
    auto Kst = [&](int s) { return reinterpret_cast<__half(*)[LD]>(smem_raw + s * Wide<DP>::kTileBytes); };
    auto Vst = [&](int s) { return reinterpret_cast<__half(*)[LD]>(smem_raw + s * Wide<DP>::kTileBytes + BKW * LD * 2); };
    float(*Sp)[4][32][8] = reinterpret_cast<float(*)[4][32][8]>(smem_raw + 2 * Wide<DP>::kTileBytes);

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rg = warp >> 2, sl = warp & 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BQW;
    const int d = p.head_dim;
    const __half* qb = p.q + (long long)b * p.n_q * p.ldq + h * d;
    const __half* kb = p.k + (long long)b * p.n_kv * p.ldk + h * d;
    const __half* vb = p.v + (long long)b * p.n_kv * p.ldv + h * d;
    __half* ob = p.out + (long long)b * p.n_q * p.ldo + h * d;
    const bool vec = (d % 8 == 0) && (p.ldq % 8 == 0) && (p.ldk % 8 == 0) && (p.ldv % 8 == 0);
    const int n_kv = kv_count(p, b);
    const int ntiles = (n_kv + BKW - 1) / BKW;

    load_rows<DP, LD, BQW, 256>(Kst(1), qb, p.ldq, q0, p.n_q, d, vec);
    load_rows<DP, LD, BKW, 256>(Kst(0), kb, p.ldk, 0, n_kv, d, vec);
    load_rows<DP, LD, BKW, 256>(Vst(0), vb, p.ldv, 0, n_kv, d, vec);
    dev::cp_async_commit();
    dev::cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[SL / 16][4];
#pragma unroll
    for (int kk = 0; kk < SL / 16; ++kk)
        dev::ldmatrix_x4(qf[kk], &Kst(1)[rg * 16 + (lane & 15)][sl * SL + kk * 16 + (lane >> 4) * 8]);
    __syncthreads();  // stage 1 is free for K/V from here on

    float o[SL / 8][4];
#pragma unroll
    for (int j = 0; j < SL / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mrow[2] = {kNegInf, kNegInf}, lrow[2] = {0.0f, 0.0f};
    const int q_row0 = q0 + rg * 16;

    for (int t = 0; t < ntiles; ++t) {
        const int buf = t & 1;
        if (t + 1 < ntiles) {
            load_rows<DP, LD, BKW, 256>(Kst(buf ^ 1), kb, p.ldk, (t + 1) * BKW, n_kv, d, vec);
            load_rows<DP, LD, BKW, 256>(Vst(buf ^ 1), vb, p.ldv, (t + 1) * BKW, n_kv, d, vec);
            dev::cp_async_commit();
            dev::cp_async_wait<1>();
        } else {
            dev::cp_async_wait<0>();
        }
        __syncthreads();

        float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
        __half(*Kb)[LD] = Kst(buf);
#pragma unroll
        for (int kk = 0; kk < SL / 16; ++kk) {
            uint32_t r[4];
            dev::ldmatrix_x4(r, &Kb[(lane & 7) + (lane >> 4) * 8][sl * SL + kk * 16 + ((lane >> 3) & 1) * 8]);
            dev::mma_f16(s[0], qf[kk], r[0], r[1]);
            dev::mma_f16(s[1], qf[kk], r[2], r[3]);
        }
        // Partials in fragment order: all warps share the layout, so lane i sums entry i of each.
        float* mine = Sp[rg][sl][lane];
        *reinterpret_cast<float4*>(mine) = make_float4(s[0][0], s[0][1], s[0][2], s[0][3]);
        *reinterpret_cast<float4*>(mine + 4) = make_float4(s[1][0], s[1][1], s[1][2], s[1][3]);
        __syncthreads();
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                s[j][e] = Sp[rg][0][lane][j * 4 + e] + Sp[rg][1][lane][j * 4 + e] + Sp[rg][2][lane][j * 4 + e] +
                          Sp[rg][3][lane][j * 4 + e];
        online_softmax<2, SL / 8, false>(s, o, mrow, lrow, t * BKW, q_row0, n_kv, p.scale_log2);

        const uint32_t a[4] = {dev::pack_half2(s[0][0], s[0][1]), dev::pack_half2(s[0][2], s[0][3]),
                               dev::pack_half2(s[1][0], s[1][1]), dev::pack_half2(s[1][2], s[1][3])};
        __half(*Vb)[LD] = Vst(buf);
#pragma unroll
        for (int dn = 0; dn < SL / 16; ++dn) {
            uint32_t r[4];
            dev::ldmatrix_x4_trans(r, &Vb[(lane & 7) + ((lane >> 3) & 1) * 8][sl * SL + dn * 16 + (lane >> 4) * 8]);
            dev::mma_f16(o[2 * dn], a, r[0], r[1]);
            dev::mma_f16(o[2 * dn + 1], a, r[2], r[3]);
        }
        __syncthreads();  // Sp and this stage are rewritten next iteration
    }
    store_rows<SL / 8>(o, lrow, ob, p.ldo, q_row0, p.n_q, sl * SL, d);
}

// The wide kernel with f32 activations (VAEs decoded in f32: `force_upcast`), on tf32 mma.sync m16n8k8:
// the same 2 row groups x 4 channel slices and the same online softmax, with key tiles of BKT = 8 (f32
// tiles are twice the bytes; 8 keys are one n8 fragment of S and one k8 step of P·V). Q's fragments come
// straight from global memory once. P goes from the S accumulators (row g: keys 2t, 2t+1) to an A
// fragment (row g: k = t, t+4) without a shuffle by numbering the tile's keys so that logical k = t is
// key 2t and k = t + 4 is key 2t + 1; the B fragment of V reads those keys (scalar shared loads, which
// ldmatrix cannot transpose for 32-bit elements). V's row stride DP + 4 ≡ 4 (mod 32) words puts the
// 32 lanes' (key 2t or 2t+1, column g) on 32 different banks; K's (DP + 4)·4 bytes is an odd number of
// 16-byte units for ldmatrix.
constexpr int BKT = 8;

template <int DP>
struct WideTf32 {
    static constexpr int kLD = DP + 4;
    static constexpr int kSlice = DP / 4;
    static constexpr int kTileBytes = 2 * BKT * kLD * 4;  // one stage: K then V
    static constexpr int kSmemBytes = 2 * kTileBytes + 2 * 4 * 32 * 4 * 4;
    static_assert(kSlice % 16 == 0, "slice must be whole ldmatrix.x4 loads");
};

template <int DP>
static __device__ __forceinline__ void flash_fwd_wide_tf32(const LcmAttnParams& p) {
    constexpr int LD = WideTf32<DP>::kLD, SL = WideTf32<DP>::kSlice;
    unsigned char* smem_raw = dev::dynamic_smem();
    auto Kst = [&](int s) { return reinterpret_cast<float(*)[LD]>(smem_raw + s * WideTf32<DP>::kTileBytes); };
    auto Vst = [&](int s) {
        return reinterpret_cast<float(*)[LD]>(smem_raw + s * WideTf32<DP>::kTileBytes + BKT * LD * 4);
    };
    float(*Sp)[4][32][4] = reinterpret_cast<float(*)[4][32][4]>(smem_raw + 2 * WideTf32<DP>::kTileBytes);

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    const int rg = warp >> 2, sl = warp & 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BQW;
    const int d = p.head_dim;
    // The struct's pointers are typed for f16; this kernel reads the same fields as float.
    const float* qb = reinterpret_cast<const float*>(p.q) + (long long)b * p.n_q * p.ldq + h * d;
    const float* kb = reinterpret_cast<const float*>(p.k) + (long long)b * p.n_kv * p.ldk + h * d;
    const float* vb = reinterpret_cast<const float*>(p.v) + (long long)b * p.n_kv * p.ldv + h * d;
    float* ob = reinterpret_cast<float*>(p.out) + (long long)b * p.n_q * p.ldo + h * d;
    const bool vec = (d % 4 == 0) && (p.ldq % 4 == 0) && (p.ldk % 4 == 0) && (p.ldv % 4 == 0);
    const int n_kv = kv_count(p, b);
    const int ntiles = (n_kv + BKT - 1) / BKT;
    const int q_row0 = q0 + rg * 16;

    load_rows<DP, LD, BKT, 256>(Kst(0), kb, p.ldk, 0, n_kv, d, vec);
    load_rows<DP, LD, BKT, 256>(Vst(0), vb, p.ldv, 0, n_kv, d, vec);
    dev::cp_async_commit();

    // Q's A fragments for this warp's 16 rows and SL channels: a0 = Q[g][c], a1 = Q[g+8][c],
    // a2 = Q[g][c+4], a3 = Q[g+8][c+4] with c = slice base + 8·kk + t; zero past n_q and d.
    uint32_t qf[SL / 8][4];
    auto q_at = [&](int row, int c) {
        const bool ok = q_row0 + row < p.n_q && c < d;
        return dev::to_tf32(ok ? dev::f32_bits(qb[(long long)(q_row0 + row) * p.ldq + c]) : 0u);
    };
#pragma unroll
    for (int kk = 0; kk < SL / 8; ++kk) {
        const int c = sl * SL + kk * 8 + t4;
        qf[kk][0] = q_at(g, c);
        qf[kk][1] = q_at(g + 8, c);
        qf[kk][2] = q_at(g, c + 4);
        qf[kk][3] = q_at(g + 8, c + 4);
    }

    float o[SL / 8][4];
#pragma unroll
    for (int j = 0; j < SL / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mrow[2] = {kNegInf, kNegInf}, lrow[2] = {0.0f, 0.0f};

    for (int t = 0; t < ntiles; ++t) {
        const int buf = t & 1;
        if (t + 1 < ntiles) {
            // The other stage was last read in iteration t-1, which ended with a barrier.
            load_rows<DP, LD, BKT, 256>(Kst(buf ^ 1), kb, p.ldk, (t + 1) * BKT, n_kv, d, vec);
            load_rows<DP, LD, BKT, 256>(Vst(buf ^ 1), vb, p.ldv, (t + 1) * BKT, n_kv, d, vec);
            dev::cp_async_commit();
            dev::cp_async_wait<1>();
        } else {
            dev::cp_async_wait<0>();
        }
        __syncthreads();

        // Partial S over this warp's slice: b0 = K[key g][c], b1 = K[key g][c + 4], two k-steps per
        // ldmatrix.x4 (matrix i: the 8 keys x 4 channels at c0 + 4i).
        float s[1][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
        float(*Kb)[LD] = Kst(buf);
#pragma unroll
        for (int kk = 0; kk < SL / 16; ++kk) {
            uint32_t r[4];
            dev::ldmatrix_x4(r, &Kb[lane & 7][sl * SL + kk * 16 + (lane >> 3) * 4]);
            const uint32_t a0[4] = {qf[2 * kk][0], qf[2 * kk][1], qf[2 * kk][2], qf[2 * kk][3]};
            const uint32_t a1[4] = {qf[2 * kk + 1][0], qf[2 * kk + 1][1], qf[2 * kk + 1][2], qf[2 * kk + 1][3]};
            dev::mma_tf32(s[0], a0, dev::to_tf32(r[0]), dev::to_tf32(r[1]));
            dev::mma_tf32(s[0], a1, dev::to_tf32(r[2]), dev::to_tf32(r[3]));
        }
        *reinterpret_cast<float4*>(Sp[rg][sl][lane]) = make_float4(s[0][0], s[0][1], s[0][2], s[0][3]);
        __syncthreads();
#pragma unroll
        for (int e = 0; e < 4; ++e) s[0][e] = Sp[rg][0][lane][e] + Sp[rg][1][lane][e] + Sp[rg][2][lane][e] + Sp[rg][3][lane][e];
        online_softmax<1, SL / 8, false>(s, o, mrow, lrow, t * BKT, q_row0, n_kv, p.scale_log2);

        // P (rows g, g+8; keys 2t, 2t+1) as the A fragment of logical k = t, t + 4.
        const uint32_t a[4] = {dev::to_tf32(dev::f32_bits(s[0][0])), dev::to_tf32(dev::f32_bits(s[0][2])),
                               dev::to_tf32(dev::f32_bits(s[0][1])), dev::to_tf32(dev::f32_bits(s[0][3]))};
        float(*Vb)[LD] = Vst(buf);
#pragma unroll
        for (int dn = 0; dn < SL / 8; ++dn) {
            const int c = sl * SL + dn * 8 + g;
            dev::mma_tf32(o[dn], a, dev::to_tf32(dev::f32_bits(Vb[2 * t4][c])),
                          dev::to_tf32(dev::f32_bits(Vb[2 * t4 + 1][c])));
        }
        __syncthreads();  // Sp and this stage are rewritten next iteration
    }
    store_rows<SL / 8>(o, lrow, ob, p.ldo, q_row0, p.n_q, sl * SL, d);
}

}  // namespace attn
}  // namespace lcm

// Instantiations. Grid (ceil(n_q / 64), heads, batch), 128 threads, dynamic shared memory
// Flash<DP, BKV>::kSmemBytes; wide: grid (ceil(n_q / 32), heads, batch), 256 threads. The host's table
// (src/cuda/launch.rs, ATTN_TABLE) picks the smallest DP ≥ head_dim with the right causality.
//   name                      DP   BKV  serves                                       smem
#define LCM_ATTN(name, DP, BKV, CAUSAL)                                                        \
    extern "C" __global__ void __launch_bounds__(128) name(const __grid_constant__ LcmAttnParams p) { \
        lcm::attn::flash_fwd<DP, BKV, CAUSAL>(p);                                             \
    }
LCM_ATTN(attn_fwd_hd16_f16, 16, 64, false)          // general path, d <= 16
LCM_ATTN(attn_fwd_hd32_f16, 32, 64, false)          // general path, d <= 32
LCM_ATTN(attn_fwd_hd40_f16, 48, 64, false)          // UNet 64x64 level (d = 40 padded to 48)
LCM_ATTN(attn_fwd_hd64_f16, 64, 64, false)          // general path
LCM_ATTN(attn_fwd_hd80_f16, 80, 64, false)          // UNet 32x32 level
LCM_ATTN(attn_fwd_hd128_f16, 128, 64, false)        // general path
LCM_ATTN(attn_fwd_hd160_f16, 160, 32, false)        // UNet 16x16 level and mid block (BKV 32: registers)
LCM_ATTN(attn_fwd_hd16_causal_f16, 16, 64, true)    // general path
LCM_ATTN(attn_fwd_hd32_causal_f16, 32, 64, true)    // general path
LCM_ATTN(attn_fwd_hd64_causal_f16, 64, 64, true)    // CLIP text encoder
LCM_ATTN(attn_fwd_hd128_causal_f16, 128, 64, true)  // general path
#undef LCM_ATTN

extern "C" __global__ void __launch_bounds__(256) attn_fwd_hd512_f16(const __grid_constant__ LcmAttnParams p) {
    lcm::attn::flash_fwd_wide<512>(p);  // VAE mid block; general path for 160 < d <= 512
}
// f32 activations, every non-causal d <= 512: the VAE mid block when the VAE is decoded in f32.
extern "C" __global__ void __launch_bounds__(256) attn_fwd_hd512_tf32(const __grid_constant__ LcmAttnParams p) {
    lcm::attn::flash_fwd_wide_tf32<512>(p);
}
