// Device helpers shared by the kernel files: tensor-core fragments (ldmatrix, mma.sync m16n8k16 f16 and
// m16n8k8 tf32), cp.async with zero fill, and warp reductions. Everything is `static __device__ __forceinline__` inside
// namespace lcm::dev so the files can be compiled as one translation unit (build.rs) without clashes.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16", f16 inputs, f32 accumulators); with
// lane = 4·g + t (g = lane/4, t = lane%4):
//   A (16x16, row-major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16x8, "col"):      b0 = B[2t..2t+1][g],  b1 = B[2t+8..2t+9][g]
//   C (16x8):             c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// ldmatrix.x4 hands matrix i (lanes 8i..8i+7 give its 8 row addresses) to register i; each thread gets
// row g, columns 2t..2t+1 of every matrix (with .trans: row 2t..2t+1, column g).
#ifndef LCM_DEVICE_CUH
#define LCM_DEVICE_CUH

#include <cuda_fp16.h>
#include <stdint.h>

namespace lcm {
namespace dev {

// The block's dynamic shared memory (as many bytes as the launch asked for).
static __device__ __forceinline__ unsigned char* dynamic_smem() {
#ifdef LCM_EMULATE
    return emu::dynamic_smem();
#else
    extern __shared__ __align__(16) unsigned char lcm_dynamic_smem[];
    return lcm_dynamic_smem;
#endif
}

// The PTX helpers below have emulated twins with the ISA's semantics (kernels/emulate/ptx.cpp):
// the choice between the two lives here only, so kernel bodies are the same in both builds.

static __device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; `bytes` < 16 zero-fills the rest (0 = write zeros, read
// nothing, so `src` need only be a valid address). Lands at the cp_async_wait that covers its group.
static __device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
#ifdef LCM_EMULATE
    emu::cp_async16(dst, src, bytes);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(bytes));
#endif
}
static __device__ __forceinline__ void cp_async_commit() {
#ifdef LCM_EMULATE
    emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
#ifdef LCM_EMULATE
    emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

static __device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
#ifdef LCM_EMULATE
    emu::ldmatrix_x4(r, p, false);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#endif
}
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
#ifdef LCM_EMULATE
    emu::ldmatrix_x4(r, p, true);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#endif
}

// d += a·b, 16x8x16, f16 inputs, f32 accumulators.
static __device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef LCM_EMULATE
    emu::mma_m16n8k16(d, a, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// f32 -> tf32 (cvt.rna: to nearest, ties away from zero), left in a 32-bit register with its low 13 bits
// zero: what the tf32 mma below takes. (The tensor core would ignore those bits; rounding first keeps
// the error at half a tf32 ulp, as cuDNN's and CUTLASS's tf32 convolutions do.)
// A float's bits (host builds have no __float_as_uint).
static __device__ __forceinline__ uint32_t f32_bits(float x) {
#ifdef LCM_EMULATE
    uint32_t b;
    memcpy(&b, &x, 4);
    return b;
#else
    return __float_as_uint(x);
#endif
}

// Takes and gives the bits (what ldmatrix loaded).
static __device__ __forceinline__ uint32_t to_tf32(uint32_t bits) {
#ifdef LCM_EMULATE
    return emu::cvt_rna_tf32(bits);
#else
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(bits)));
    return r;
#endif
}

// d += a·b, 16x8x8, tf32 inputs (to_tf32), f32 accumulators; lane = 4g + t:
//   A (16x8, row-major): a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4]
//   B (8x8, "col"):      b0 = B[t][g],  b1 = B[t+4][g]
//   C: as for m16n8k16.
// ldmatrix on f32 data hands each thread 32-bit element t of row g of each 8x4 matrix: exactly a0..a3
// (matrices rows 0-7 / 8-15 x columns 0-3 / 4-7) and, from [n][k] tiles, b0 and b1.
static __device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef LCM_EMULATE
    emu::mma_m16n8k8_tf32(d, a, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

static __device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Exact (erf) GELU, as torch's default. erff is not replaced by --use_fast_math.
static __device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
static __device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }
static __device__ __forceinline__ float quick_gelu(float x) { return x / (1.0f + __expf(-1.702f * x)); }
// NaN passes through, as torch's relu (fmaxf(x, 0) would turn it into 0 and hide it).
static __device__ __forceinline__ float relu(float x) { return x < 0.0f ? 0.0f : x; }
// TAESD's latent soft clamp to (-3, 3) (diffusers' DecoderTiny).
static __device__ __forceinline__ float tanh_clamp(float x) { return tanhf(x / 3.0f) * 3.0f; }

// Activation element types: __half (every model), float (the `_f32`/`_tf32` kernels, for VAEs that
// overflow in f16 and that diffusers decodes in f32: `force_upcast`). kVec<E> elements make one 16-byte
// access.
template <typename E>
constexpr int kVec = 16 / (int)sizeof(E);
static __device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
static __device__ __forceinline__ float to_f32(float v) { return v; }
template <typename E>
static __device__ __forceinline__ E from_f32(float v);
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
    return __float2half(v);
}
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
    return v;
}

// Eight halves as one 16-byte value.
struct alignas(16) Half8 {
    __half2 h[4];
};

// V consecutive halves <-> V floats: one 16-byte access when V = 8 (the caller guarantees alignment),
// element by element otherwise. Shared by the element-wise and normalisation kernels.
template <int V>
static __device__ __forceinline__ void load_vec(const __half* src, float (&v)[V]) {
    if constexpr (V == 8) {
        const Half8 h = *reinterpret_cast<const Half8*>(src);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float2 f = __half22float2(h.h[j]);
            v[2 * j] = f.x;
            v[2 * j + 1] = f.y;
        }
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = __half2float(src[j]);
    }
}

template <int V>
static __device__ __forceinline__ void store_vec(__half* dst, const float (&v)[V]) {
    if constexpr (V == 8) {
        Half8 h;
#pragma unroll
        for (int j = 0; j < 4; ++j) h.h[j] = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
        *reinterpret_cast<Half8*>(dst) = h;
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) dst[j] = __float2half(v[j]);
    }
}

// The f32 forms: one 16-byte access when V = 4.
template <int V>
static __device__ __forceinline__ void load_vec(const float* src, float (&v)[V]) {
    if constexpr (V == 4) {
        const float4 f = *reinterpret_cast<const float4*>(src);
        v[0] = f.x;
        v[1] = f.y;
        v[2] = f.z;
        v[3] = f.w;
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = src[j];
    }
}

template <int V>
static __device__ __forceinline__ void store_vec(float* dst, const float (&v)[V]) {
    if constexpr (V == 4) {
        *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) dst[j] = v[j];
    }
}

}  // namespace dev
}  // namespace lcm

#endif  // LCM_DEVICE_CUH
