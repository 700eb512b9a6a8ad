// Implicit GEMM on tensor cores: conv2d (any kernel size, stride, asymmetric padding) and linear layers,
// with bias, residual, alpha, a second K segment (unmerged LoRA) and GEGLU in the epilogue. See
// LcmGemmParams in lcm_abi.h for what is computed and the weight layout.
//
// v1 (this file): mma.sync m16n8k16 f16 -> f32, operands through ldmatrix from shared memory, a
// three-stage cp.async pipeline over BK = 32. A tile of the virtual im2col matrix is gathered straight
// from the NHWC input: every 8 consecutive k are 8 consecutive channels of one filter tap (the weight's
// channel stride is padded to a multiple of 8), so each 16-byte chunk is one cp.async with zero fill for
// padding and image borders. Inputs whose channel count is not a multiple of 8 (RGB, 4-channel latents)
// take the `VecA = false` instantiation, which gathers element by element.
//
// The f32 instantiations (`igemm_tf32_*`: f32 activations and weights, for VAEs that overflow in f16)
// are the same kernel with E = float: BK = 16 keeps shared-memory rows at 80 bytes, so the stages, the
// chunk-to-thread map and every ldmatrix address are byte for byte the f16 ones; a 16-byte chunk holds 4
// channels, and each k-step is one mma.sync m16n8k8 on tf32 (rounded by cvt.rna) instead of m16n8k16 —
// what cuDNN's default tf32 convolutions do for PyTorch's f32 VAE decode.
#include "lcm_abi.h"
#include "lcm_device.cuh"

namespace lcm {
namespace gemm {

constexpr int STAGES = 3;

template <int BM, int BN, int WM, int WN, typename E>
struct Tile {
    static constexpr int kVec = dev::kVec<E>;   // elements per 16-byte chunk
    static constexpr int BK = 4 * kVec;         // four chunks per row: 64 bytes of k per stage
    // Shared-memory row stride: 80 bytes, an odd number of 16-byte units, so the 8 row addresses of an
    // ldmatrix land in 8 different bank groups (no conflicts, no swizzle needed).
    static constexpr int LDS = BK + kVec;
    static constexpr int KSTEP = 2 * kVec;      // k per mma: 16 (f16) or 8 (tf32)
    static constexpr int kThreads = WM * WN * 32;
    static constexpr int kTM = BM / WM;  // warp tile
    static constexpr int kTN = BN / WN;
    static constexpr int kMI = kTM / 16;  // m16 fragments per warp
    static constexpr int kNI = kTN / 8;   // n8 fragments per warp
    static constexpr int kChunksA = BM * 4 / kThreads;
    static constexpr int kChunksB = BN * 4 / kThreads;
    static constexpr int kSmemBytes = STAGES * (BM + BN) * LDS * (int)sizeof(E);
    static_assert(kTM % 16 == 0 && kTN % 16 == 0, "warp tile must be whole ldmatrix.x4 loads");
    static_assert(kChunksA * kThreads == BM * 4 && kChunksB * kThreads == BN * 4, "tile/threads");
    static_assert(LDS * sizeof(E) == 80, "80-byte rows: the shared layout both element types share");
};

// Where one A row (output pixel) reads from: the batch image's base and the top-left input coordinate of
// its receptive field; `iy0 = INT_MIN/2` marks a row past M (always zero-filled).
template <typename E>
struct ARow {
    const E* img;
    int iy0, ix0;
    int m;
};

template <int BM, int BN, int WM, int WN, bool VecA, typename E>
static __device__ __forceinline__ void igemm(const LcmGemmParams& p) {
    using T = Tile<BM, BN, WM, WN, E>;
    constexpr int BK = T::BK, LDS = T::LDS, V = T::kVec;
    unsigned char* smem_raw = dev::dynamic_smem();
    E(*As)[BM][LDS] = reinterpret_cast<E(*)[BM][LDS]>(smem_raw);
    E(*Bs)[BN][LDS] = reinterpret_cast<E(*)[BN][LDS]>(smem_raw + STAGES * BM * LDS * sizeof(E));
    // The struct's pointers are typed for f16; the f32 instantiations read the same fields as float.
    const E* x = reinterpret_cast<const E*>(p.x);
    const E* weight = reinterpret_cast<const E*>(p.weight);
    const E* bias = reinterpret_cast<const E*>(p.bias);
    const E* residual = reinterpret_cast<const E*>(p.residual);
    const E* a2 = reinterpret_cast<const E*>(p.a2);
    const E* weight2 = reinterpret_cast<const E*>(p.weight2);
    E* out = reinterpret_cast<E*>(p.out);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp % WM, wn = warp / WM;
    const int M = p.batch * p.ho * p.wo, N = p.co;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int K1 = p.kh * p.kw * p.cip;
    const int kt1 = (K1 + BK - 1) / BK;
    const int kt2 = (p.k2 + BK - 1) / BK;
    const int ktiles = kt1 + kt2;
    const int kc = (tid & 3) * V;  // this thread's k offset inside a BK tile (same for all its chunks)

    // Per-row gather state for this thread's A chunks: rows tid/4 + i·threads/4.
    ARow<E> arow[T::kChunksA];
#pragma unroll
    for (int i = 0; i < T::kChunksA; ++i) {
        const int m = m0 + (tid >> 2) + i * (T::kThreads / 4);
        arow[i].m = m;
        if (m < M) {
            const int hw = p.ho * p.wo;
            const int b = m / hw, r = m - b * hw;
            const int oy = r / p.wo, ox = r - oy * p.wo;
            arow[i].img = x + (long long)b * p.h * p.w * p.ci;
            arow[i].iy0 = oy * p.stride - p.pad_top;
            arow[i].ix0 = ox * p.stride - p.pad_left;
        } else {
            arow[i].img = x;
            arow[i].iy0 = -(1 << 29);  // never inside the image
            arow[i].ix0 = 0;
        }
    }
    // Weight row of each of this thread's B chunks (GEGLU interleaves hidden and gate rows).
    int brow[T::kChunksB];
#pragma unroll
    for (int i = 0; i < T::kChunksB; ++i) {
        const int n = n0 + (tid >> 2) + i * (T::kThreads / 4);
        brow[i] = n >= N ? -1 : (p.geglu ? ((n & 1) ? N / 2 + (n >> 1) : (n >> 1)) : n);
    }

    auto load_tile = [&](int kt, int stage) {
        const int row_a = tid >> 2;
        if (kt < kt1) {
            const int k = kt * BK + kc;
            // k -> (filter tap, channel); one division pair per chunk, shared by all rows of the thread.
            const int tap = k / p.cip, c = k - tap * p.cip;
            const int ky = tap / p.kw, kx = tap - ky * p.kw;
            const bool k_ok = k < K1;
#pragma unroll
            for (int i = 0; i < T::kChunksA; ++i) {
                const int iy = arow[i].iy0 + ky, ix = arow[i].ix0 + kx;
                const bool ok = k_ok && iy >= 0 && iy < p.h && ix >= 0 && ix < p.w;
                E* dst = &As[stage][row_a + i * (T::kThreads / 4)][kc];
                const E* src = arow[i].img + ((long long)iy * p.w + ix) * p.ci + c;
                if (VecA) {
                    dev::cp_async16(dst, ok ? src : x, ok ? 16 : 0);
                } else {
#pragma unroll
                    for (int j = 0; j < V; ++j) dst[j] = (ok && c + j < p.ci) ? src[j] : dev::from_f32<E>(0.0f);
                }
            }
#pragma unroll
            for (int i = 0; i < T::kChunksB; ++i) {
                const bool ok = k_ok && brow[i] >= 0;
                const E* src = weight + (long long)brow[i] * K1 + k;
                dev::cp_async16(&Bs[stage][(tid >> 2) + i * (T::kThreads / 4)][kc], ok ? src : weight, ok ? 16 : 0);
            }
        } else {
            // Second segment: plain row-major [M, k2] against [N, k2] (k2 is a multiple of 8).
            const int k = (kt - kt1) * BK + kc;
            const bool k_ok = k < p.k2;
#pragma unroll
            for (int i = 0; i < T::kChunksA; ++i) {
                const bool ok = k_ok && arow[i].m < M;
                const E* src = a2 + (long long)arow[i].m * p.k2 + k;
                dev::cp_async16(&As[stage][row_a + i * (T::kThreads / 4)][kc], ok ? src : a2, ok ? 16 : 0);
            }
#pragma unroll
            for (int i = 0; i < T::kChunksB; ++i) {
                const bool ok = k_ok && brow[i] >= 0;
                const E* src = weight2 + (long long)brow[i] * p.k2 + k;
                dev::cp_async16(&Bs[stage][(tid >> 2) + i * (T::kThreads / 4)][kc], ok ? src : weight2, ok ? 16 : 0);
            }
        }
    };

    float acc[T::kMI][T::kNI][4];
#pragma unroll
    for (int i = 0; i < T::kMI; ++i)
#pragma unroll
        for (int j = 0; j < T::kNI; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    // Prologue: STAGES-1 tiles in flight. A group is committed even when empty so that the
    // wait_group count below always refers to the tile about to be used.
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_tile(s, s);
        dev::cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; ++kt) {
        dev::cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile kt visible to all; every warp is done with tile kt-1's stage
        const int pre = kt + STAGES - 1;
        if (pre < ktiles) load_tile(pre, pre % STAGES);
        dev::cp_async_commit();

        const int st = kt % STAGES;
#pragma unroll
        for (int kk = 0; kk < BK / T::KSTEP; ++kk) {
            uint32_t af[T::kMI][4];
            uint32_t bf[T::kNI][2];
#pragma unroll
            for (int mi = 0; mi < T::kMI; ++mi)
                dev::ldmatrix_x4(af[mi], &As[st][wm * T::kTM + mi * 16 + (lane & 15)][kk * T::KSTEP + (lane >> 4) * V]);
#pragma unroll
            for (int nj = 0; nj < T::kNI / 2; ++nj) {
                uint32_t r[4];
                dev::ldmatrix_x4(r, &Bs[st][wn * T::kTN + nj * 16 + (lane & 7) + (lane >> 4) * 8][kk * T::KSTEP + ((lane >> 3) & 1) * V]);
                bf[2 * nj][0] = r[0];
                bf[2 * nj][1] = r[1];
                bf[2 * nj + 1][0] = r[2];
                bf[2 * nj + 1][1] = r[3];
            }
            if constexpr (sizeof(E) == 4) {
#pragma unroll
                for (int mi = 0; mi < T::kMI; ++mi)
#pragma unroll
                    for (int r = 0; r < 4; ++r) af[mi][r] = dev::to_tf32(af[mi][r]);
#pragma unroll
                for (int ni = 0; ni < T::kNI; ++ni)
#pragma unroll
                    for (int r = 0; r < 2; ++r) bf[ni][r] = dev::to_tf32(bf[ni][r]);
            }
#pragma unroll
            for (int mi = 0; mi < T::kMI; ++mi)
#pragma unroll
                for (int ni = 0; ni < T::kNI; ++ni) {
                    if constexpr (sizeof(E) == 4) {
                        dev::mma_tf32(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
                    } else {
                        dev::mma_f16(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
                    }
                }
        }
    }
    dev::cp_async_wait<0>();

    // Epilogue straight from the accumulator fragments: each thread owns column pairs (2t, 2t+1).
    const int g = lane >> 2, t4 = lane & 3;
    const bool pair_store = (p.ldc & 1) == 0;
#pragma unroll
    for (int mi = 0; mi < T::kMI; ++mi) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int m = m0 + wm * T::kTM + mi * 16 + g + hr * 8;
            if (m >= M) continue;
            E* orow = out + (long long)m * p.ldc;
            const E* rrow = residual ? residual + (long long)m * p.ldc : nullptr;
#pragma unroll
            for (int ni = 0; ni < T::kNI; ++ni) {
                const int n = n0 + wn * T::kTN + ni * 8 + 2 * t4;
                if (n >= N) continue;
                float v0 = acc[mi][ni][2 * hr] * p.alpha, v1 = acc[mi][ni][2 * hr + 1] * p.alpha;
                if (p.geglu) {
                    // n even: v0 is hidden unit n/2, v1 its gate (N is even for GEGLU).
                    const int j = n >> 1;
                    if (bias) {
                        v0 += dev::to_f32(bias[j]);
                        v1 += dev::to_f32(bias[N / 2 + j]);
                    }
                    orow[j] = dev::from_f32<E>(v0 * dev::gelu_erf(v1));
                    continue;
                }
                const bool has1 = n + 1 < N;
                if (bias) {
                    v0 += dev::to_f32(bias[n]);
                    if (has1) v1 += dev::to_f32(bias[n + 1]);
                }
                if (rrow) {
                    v0 += dev::to_f32(rrow[n]);
                    if (has1) v1 += dev::to_f32(rrow[n + 1]);
                }
                if constexpr (sizeof(E) == 2) {
                    if (has1 && pair_store) {
                        *reinterpret_cast<__half2*>(orow + n) = __floats2half2_rn(v0, v1);
                        continue;
                    }
                } else if (has1 && pair_store) {
                    *reinterpret_cast<float2*>(orow + n) = make_float2(v0, v1);
                    continue;
                }
                orow[n] = dev::from_f32<E>(v0);
                if (has1) orow[n + 1] = dev::from_f32<E>(v1);
            }
        }
    }
}

}  // namespace gemm
}  // namespace lcm

// The tile table (grid = (ceil(M/BM), ceil(N/BN)), dynamic shared memory = Tile::kSmemBytes; the host
// mirrors these numbers in src/cuda/launch.rs):
//   128x128, 8 warps (2x4, warp tile 64x32): the large SD1.5 convs and linears;
//   64x64,   4 warps (2x2, warp tile 32x32): problems with fewer 128x128 tiles than SMs;
//   64x64 scalar-A: inputs whose channel count is not a multiple of 8.
// Each in f16 and in f32 (tf32 math); shared memory is the same for both (80-byte rows).
#define LCM_IGEMM(name, THREADS, BM, BN, WM, WN, VEC_A)                                                       \
    extern "C" __global__ void __launch_bounds__(THREADS) igemm_f16_##name(const __grid_constant__ LcmGemmParams p) { \
        lcm::gemm::igemm<BM, BN, WM, WN, VEC_A, __half>(p);                                                  \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(THREADS) igemm_tf32_##name(const __grid_constant__ LcmGemmParams p) { \
        lcm::gemm::igemm<BM, BN, WM, WN, VEC_A, float>(p);                                                   \
    }
LCM_IGEMM(128x128, 256, 128, 128, 2, 4, true)
LCM_IGEMM(64x64, 128, 64, 64, 2, 2, true)
LCM_IGEMM(64x64_scalar_a, 128, 64, 64, 2, 2, false)
#undef LCM_IGEMM
