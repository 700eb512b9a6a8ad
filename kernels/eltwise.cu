// Memory-bound element-wise ops: `map` (every lcm_core::MapKind: activations, scale, add), add_channel,
// add_scaled,
// GEGLU (unfused form), concat, nearest upsample, token + position embedding, timestep embedding,
// f32 <-> f16 casts. See lcm_abi.h for each contract.
//
// Each kernel is a grid-stride loop over "vector units" of V halves: V = 8 (one 16-byte load/store)
// when the sizes allow it, V = 1 otherwise; the `_v8`/`_v1` suffix says which. The host picks the
// variant and a grid of about 4 waves of blocks (src/cuda/ops/eltwise.rs).
#include "lcm_abi.h"
#include "lcm_device.cuh"

namespace lcm {
namespace elt {

template <int V>
struct Vec {
    float v[V];
    template <typename E>
    static __device__ __forceinline__ Vec load(const E* p) {
        Vec r;
        dev::load_vec<V>(p, r.v);
        return r;
    }
    template <typename E>
    __device__ __forceinline__ void store(E* p) const {
        dev::store_vec<V>(p, v);
    }
};

// The struct's pointers are typed for f16; the f32 instantiations read the same fields as float.
template <typename E>
static __device__ __forceinline__ const E* in(const void* p) {
    return static_cast<const E*>(p);
}
template <typename E>
static __device__ __forceinline__ E* out_ptr(void* p) {
    return static_cast<E*>(p);
}

#define LCM_GRID_STRIDE(i, count) \
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < (count); \
         i += (unsigned long long)gridDim.x * blockDim.x)

// One grid-stride pass of `f` over the n elements: of a (unary), or of a and b (binary).
template <int V, typename E, typename F>
static __device__ __forceinline__ void unary(const LcmEltwiseParams& p, F f) {
    LCM_GRID_STRIDE(i, p.n / V) {
        Vec<V> a = Vec<V>::load(in<E>(p.a) + i * V);
#pragma unroll
        for (int j = 0; j < V; ++j) a.v[j] = f(a.v[j]);
        a.store(out_ptr<E>(p.out) + i * V);
    }
}

template <int V, typename E, typename F>
static __device__ __forceinline__ void binary(const LcmEltwiseParams& p, F f) {
    LCM_GRID_STRIDE(i, p.n / V) {
        Vec<V> a = Vec<V>::load(in<E>(p.a) + i * V);
        const Vec<V> b = Vec<V>::load(in<E>(p.b) + i * V);
#pragma unroll
        for (int j = 0; j < V; ++j) a.v[j] = f(a.v[j], b.v[j]);
        a.store(out_ptr<E>(p.out) + i * V);
    }
}

// The device functor of every LcmMapOp (the CPU's closures are lcm_cpu::eltwise::map). The switch is on
// a launch constant and picks a whole loop, so no element pays for it.
template <int V, typename E = __half>
static __device__ __forceinline__ void map(const LcmEltwiseParams& p) {
    const float mul = p.mul, add = p.add;
    switch (p.op) {
        case LCM_MAP_SILU: return unary<V, E>(p, [](float x) { return dev::silu(x); });
        case LCM_MAP_GELU: return unary<V, E>(p, [](float x) { return dev::gelu_erf(x); });
        case LCM_MAP_QUICK_GELU: return unary<V, E>(p, [](float x) { return dev::quick_gelu(x); });
        case LCM_MAP_RELU: return unary<V, E>(p, [](float x) { return dev::relu(x); });
        case LCM_MAP_TANH_CLAMP: return unary<V, E>(p, [](float x) { return dev::tanh_clamp(x); });
        case LCM_MAP_SCALE: return unary<V, E>(p, [=](float x) { return x * mul + add; });
        case LCM_MAP_ADD: return binary<V, E>(p, [](float x, float y) { return x + y; });
    }
}

template <int V>
static __device__ __forceinline__ void add_channel(const LcmEltwiseParams& p) {
    const unsigned long long per_batch = p.hw * p.c;
    LCM_GRID_STRIDE(i, p.n / V) {
        const unsigned long long e = i * V;
        const unsigned long long b = e / per_batch;
        const int ch = (int)(e % p.c);
        Vec<V> a = Vec<V>::load(p.a + e);
        const Vec<V> t = Vec<V>::load(p.b + b * p.c + ch);
#pragma unroll
        for (int j = 0; j < V; ++j) a.v[j] += t.v[j];
        a.store(p.out + e);
    }
}

// A vector unit never straddles two images: the host picks V = 8 only when per_image is a multiple of 8.
template <int V>
static __device__ __forceinline__ void add_scaled(const LcmAddScaledParams& p) {
    LCM_GRID_STRIDE(i, p.n / V) {
        const unsigned long long e = i * V;
        const float s = p.scale[e / p.per_image];
        Vec<V> x = Vec<V>::load(p.x + e);
        const Vec<V> y = Vec<V>::load(p.y + e);
#pragma unroll
        for (int j = 0; j < V; ++j) x.v[j] += s * y.v[j];
        x.store(p.out + e);
    }
}

template <int V>
static __device__ __forceinline__ void geglu(const LcmEltwiseParams& p) {
    LCM_GRID_STRIDE(i, p.n / V) {
        const unsigned long long e = i * V;
        const unsigned long long r = e / p.c;
        const int j0 = (int)(e % p.c);
        const __half* row = p.a + r * 2 * p.c;
        Vec<V> h = Vec<V>::load(row + j0);
        const Vec<V> g = Vec<V>::load(row + p.c + j0);
#pragma unroll
        for (int j = 0; j < V; ++j) h.v[j] *= dev::gelu_erf(g.v[j]);
        h.store(p.out + e);
    }
}

template <int V, typename E>
static __device__ __forceinline__ void copy_vec(E* dst, const E* src) {
    if constexpr (V * sizeof(E) == 16) {
        *reinterpret_cast<float4*>(dst) = *reinterpret_cast<const float4*>(src);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) dst[j] = src[j];
    }
}

template <int V>
static __device__ __forceinline__ void concat(const LcmConcatParams& p) {
    const int co = p.ca + p.cb;
    LCM_GRID_STRIDE(i, p.rows * (unsigned long long)co / V) {
        const unsigned long long e = i * V;
        const unsigned long long r = e / co;
        const int c = (int)(e % co);
        const __half* src = c < p.ca ? p.a + r * p.ca + c : p.b + r * p.cb + (c - p.ca);
        copy_vec<V>(p.out + e, src);
    }
}

template <int V, typename E = __half>
static __device__ __forceinline__ void upsample(const LcmUpsampleParams& p) {
    const unsigned long long total = (unsigned long long)p.batch * p.ho * p.wo * p.c;
    LCM_GRID_STRIDE(i, total / V) {
        const unsigned long long e = i * V;
        const int c = (int)(e % p.c);
        const unsigned long long px = e / p.c;
        const int ox = (int)(px % p.wo);
        const unsigned long long by = px / p.wo;
        const int oy = (int)(by % p.ho);
        const int b = (int)(by / p.ho);
        // torch's nearest: floor(dst · (in/out)) in f32, clamped.
        const int iy = min((int)floorf((float)oy * p.scale_h), p.h - 1);
        const int ix = min((int)floorf((float)ox * p.scale_w), p.w - 1);
        copy_vec<V>(out_ptr<E>(p.out) + e, in<E>(p.x) + (((long long)b * p.h + iy) * p.w + ix) * p.c + c);
    }
}

template <int V>
static __device__ __forceinline__ void embed(const LcmEmbedParams& p) {
    const unsigned long long total = (unsigned long long)p.batch * p.tokens * p.c;
    LCM_GRID_STRIDE(i, total / V) {
        const unsigned long long e = i * V;
        const unsigned long long r = e / p.c;  // token row b·tokens + t
        const int c = (int)(e % p.c), t = (int)(r % p.tokens);
        const int id = p.ids[r];
        Vec<V> out;
        if (id < 0 || id >= p.vocab) {
#pragma unroll
            for (int j = 0; j < V; ++j) out.v[j] = 0.0f;
            // The first bad id wins the flag and leaves itself for the host's error message.
            if (c == 0 && atomicCAS(p.error, 0, 1) == 0) p.error[1] = id;
        } else {
            out = Vec<V>::load(p.table + (long long)id * p.c + c);
            const Vec<V> pos = Vec<V>::load(p.positions + (long long)t * p.c + c);
#pragma unroll
            for (int j = 0; j < V; ++j) out.v[j] += pos.v[j];
        }
        out.store(p.out + e);
    }
}

// Computed in double: the arguments reach ~1000 rad, where --use_fast_math's sinf would be off by far
// more than f16 resolution. A few hundred values per call; the cost is nil.
static __device__ __forceinline__ void timestep(const LcmTimestepParams& p) {
    const int half = p.dim / 2;
    LCM_GRID_STRIDE(i, (unsigned long long)p.batch * p.dim) {
        const int b = (int)(i / p.dim), k = (int)(i % p.dim);
        float v = 0.0f;  // the zero column of an odd dim
        if (k < 2 * half) {
            const int j = k < half ? k : k - half;
            const bool first = k < half;
            // The frequency and t·f rounded in f32 exactly as torch (and the CPU reference) do — the _rn
            // intrinsics are IEEE even under --use_fast_math — then sin/cos of that f32 in double.
            const float e = __fdiv_rn(__fmul_rn(-9.210340371976184f, (float)j), (float)half - p.freq_shift);
            const float f = (float)exp((double)e);
            const double arg = (double)__fmul_rn(__half2float(p.t[b]), f);
            const bool use_sin = p.flip_sin_to_cos ? !first : first;
            v = (float)(use_sin ? sin(arg) : cos(arg));
        }
        p.out[i] = __float2half(v);
    }
}

// out[i] = x[i mod n_in] / div + add between f32 and f16 (LcmCastParams), each operation one IEEE
// rounding as on the host.
template <typename In, typename Out>
static __device__ __forceinline__ void cast(const LcmCastParams& p) {
    const In* x = static_cast<const In*>(p.x);
    Out* out = static_cast<Out*>(p.out);
    const float div = p.row ? p.row->input_div : p.div;
    LCM_GRID_STRIDE(i, p.n) {
        const float v = __fadd_rn(__fdiv_rn((float)x[i % p.n_in], div), p.add);
        out[i] = Out(v);
    }
}

}  // namespace elt
}  // namespace lcm

#define LCM_ELT(name, fn, P)                                                                       \
    extern "C" __global__ void name##_v8_f16(const __grid_constant__ P p) { lcm::elt::fn<8>(p); } \
    extern "C" __global__ void name##_v1_f16(const __grid_constant__ P p) { lcm::elt::fn<1>(p); }
LCM_ELT(map, map, LcmEltwiseParams)
LCM_ELT(add_channel, add_channel, LcmEltwiseParams)
LCM_ELT(add_scaled, add_scaled, LcmAddScaledParams)
LCM_ELT(geglu, geglu, LcmEltwiseParams)
LCM_ELT(concat, concat, LcmConcatParams)
LCM_ELT(upsample_nearest, upsample, LcmUpsampleParams)
LCM_ELT(embed, embed, LcmEmbedParams)
#undef LCM_ELT

// The f32 forms (VAEs decoded in f32): `_v4` moves 16 bytes, `_v1` one element.
#define LCM_ELT_F32(name, fn, P)                                                                                 \
    extern "C" __global__ void name##_v4_f32(const __grid_constant__ P p) { lcm::elt::fn<4, float>(p); } \
    extern "C" __global__ void name##_v1_f32(const __grid_constant__ P p) { lcm::elt::fn<1, float>(p); }
LCM_ELT_F32(map, map, LcmEltwiseParams)
LCM_ELT_F32(upsample_nearest, upsample, LcmUpsampleParams)
#undef LCM_ELT_F32

extern "C" __global__ void timestep_embed_f16(const __grid_constant__ LcmTimestepParams p) { lcm::elt::timestep(p); }
extern "C" __global__ void cast_f32_f16(const __grid_constant__ LcmCastParams p) { lcm::elt::cast<float, __half>(p); }
extern "C" __global__ void cast_f16_f32(const __grid_constant__ LcmCastParams p) { lcm::elt::cast<__half, float>(p); }
extern "C" __global__ void cast_f32_f32(const __grid_constant__ LcmCastParams p) { lcm::elt::cast<float, float>(p); }
