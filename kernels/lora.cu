// LoRA merge: W += scale · up @ down, in place on a weight already stored in the GEMM layout. See
// LcmLoraMergeParams. One thread per weight element, `rank` FMAs each (rank ≤ 128 in practice): a one-off
// at load time or on a LoRA switch in merged mode, ~0.1 ms for the whole UNet's targets on an H100, so
// plainness wins over a tensor-core GEMM here. The unmerged path needs no kernel of its own: it is the
// GEMM's second K segment (gemm.cu).
#include "lcm_abi.h"
#include "lcm_device.cuh"

extern "C" __global__ void lora_merge_f16(const __grid_constant__ LcmLoraMergeParams p) {
    const int K = p.kh * p.kw * p.cip;        // stored row length
    const int Kt = p.ci * p.kh * p.kw;        // torch row length of `down`
    const unsigned long long total = (unsigned long long)p.co * K;
    for (unsigned long long e = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; e < total;
         e += (unsigned long long)gridDim.x * blockDim.x) {
        const int n = (int)(e / K), k = (int)(e % K);
        const int tap = k / p.cip, c = k - tap * p.cip;
        if (c >= p.ci) continue;  // channel padding stays zero
        const int ky = tap / p.kw, kx = tap - ky * p.kw;
        const int kt = (c * p.kh + ky) * p.kw + kx;
        float sum = 0.0f;
        for (int j = 0; j < p.rank; ++j) sum += p.up[(long long)n * p.rank + j] * p.down[(long long)j * Kt + kt];
        p.w[e] = __float2half(__half2float(p.w[e]) + p.scale * sum);
    }
}
