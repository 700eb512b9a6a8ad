// The emulated twins of the PTX helpers in lcm_device.cuh, with the ISA's semantics: cvta.to.shared,
// cp.async (+ commit_group, wait_group), ldmatrix.x4 (+ .trans), mma.sync.m16n8k16 (f16 -> f32),
// mma.sync.m16n8k8 (tf32 -> f32) and cvt.rna.tf32.f32. The warp
// exchange and the fibers they run on are runtime.cpp's.
#include <string.h>

#include "runtime.h"

namespace lcm {
namespace emu {
namespace {

// f16 bits -> f32, exact, through a table (the mma twin converts 384 halves per call).
struct HalfTable {
    float v[65536];
    HalfTable() {
        for (uint32_t h = 0; h < 65536; ++h) {
            const uint32_t sign = (h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
            uint32_t bits;
            if (exp == 0x1f) {
                bits = sign | 0x7f800000u | (man << 13);
            } else if (exp != 0) {
                bits = sign | ((exp + 112) << 23) | (man << 13);
            } else {
                const float f = (float)man * (1.0f / 16777216.0f);  // subnormal: man · 2^-24
                memcpy(&bits, &f, 4);
                bits |= sign;
            }
            memcpy(&v[h], &bits, 4);
        }
    }
};
const HalfTable g_half_table;

inline float h2f(uint16_t h) { return g_half_table.v[h]; }

inline uint16_t half_of(uint32_t reg, int hi) { return (uint16_t)(hi ? reg >> 16 : reg & 0xffff); }


}  // namespace

uint32_t cvta_shared(const void* p) {
    const Worker& w = *tl_worker;
    if (!in_smem(w, p, 1)) failf("cvta.to.shared of %p, which is not in the block's shared memory", p);
    return (uint32_t)((const unsigned char*)p - w.smem);
}

// cp.async: queued at issue, performed at the cp.async.wait_group that covers its group — so a kernel
// that reads the destination without that wait sees the poison (or a stale tile), as it could on a GPU.
void cp_async16(void* dst, const void* src, int bytes) {
    Worker& w = *tl_worker;
    if (!in_smem(w, dst, 16)) failf("cp.async destination %p is outside the block's %u bytes of shared memory", dst, w.smem_bytes);
    if (((uintptr_t)dst & 15) != 0) failf("cp.async destination %p is not 16-byte aligned", dst);
    if (bytes < 0 || bytes > 16) failf("cp.async source size %d (0..16)", bytes);
    if (bytes > 0 && ((uintptr_t)src & 15) != 0) failf("cp.async source %p is not 16-byte aligned", src);
    Fiber& f = self();
    f.copies.push_back(Copy{(unsigned char*)dst, (const unsigned char*)src, bytes, f.committed});
}

void cp_async_commit() { ++self().committed; }

void cp_async_wait(int n) {
    Fiber& f = self();
    if (f.committed < (uint64_t)n) return;
    const uint64_t done_below = f.committed - (uint64_t)n;
    size_t k = 0;
    for (; k < f.copies.size() && f.copies[k].group < done_below; ++k) {
        const Copy& c = f.copies[k];
        if (c.bytes > 0) memcpy(c.dst, c.src, (size_t)c.bytes);
        memset(c.dst + c.bytes, 0, (size_t)(16 - c.bytes));
    }
    f.copies.erase(f.copies.begin(), f.copies.begin() + (long)k);
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lane l supplies the address of row l%8 of matrix
// l/8; register i of lane 4g+t gets row g, halves 2t and 2t+1 of matrix i (.trans: rows 2t, 2t+1 of
// column g).
void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
    Worker& w = *tl_worker;
    const char* what = trans ? "ldmatrix.x4.trans" : "ldmatrix.x4";
    if (!in_smem(w, p, 16)) failf("%s row address %p is outside the block's %u bytes of shared memory", what, p, w.smem_bytes);
    if (((uintptr_t)p & 15) != 0) failf("%s row address %p is not 16-byte aligned", what, p);
    const unsigned char* slots = warp_exchange(what, &p, sizeof p);
    auto row = [&](unsigned l) {
        const uint16_t* a;
        memcpy(&a, slots + kSlotBytes * l, sizeof a);
        return a;
    };
    const unsigned lane = self().lane, g = lane / 4, t = lane % 4;
    for (unsigned i = 0; i < 4; ++i) {
        uint16_t lo, hi;
        if (trans) {
            lo = row(8 * i + 2 * t)[g];
            hi = row(8 * i + 2 * t + 1)[g];
        } else {
            lo = row(8 * i + g)[2 * t];
            hi = row(8 * i + g)[2 * t + 1];
        }
        r[i] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, fragments as in the PTX ISA (lane = 4g + t):
// A a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..];
// B b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]; C c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1].
// Products are exact in f32; the 16-term sum is taken in k order (the tensor core's order and rounding
// are not modelled).
namespace {
struct MmaSlot {
    uint32_t a[4], b[2];
    float d[4];
};
static_assert(sizeof(MmaSlot) <= kSlotBytes, "mma slot");

// D = A·B + C for the whole warp, once, by the last lane to arrive; each lane's d comes back in its slot.
// Cloned for AVX2 where the CPU has it (8 columns = one vector); no FMA contraction either way
// (-ffp-contract=off), so every machine gets the same bits.
__attribute__((target_clones("avx2", "default"))) void mma_combine(unsigned char (*slots)[kSlotBytes]) {
    float A[16][16], B[16][8], D[16][8];
    for (unsigned lane = 0; lane < 32; ++lane) {
        MmaSlot s;
        memcpy(&s, slots[lane], sizeof s);
        const unsigned g = lane / 4, t = lane % 4;
        for (int e = 0; e < 2; ++e) {
            A[g][2 * t + e] = h2f(half_of(s.a[0], e));
            A[g + 8][2 * t + e] = h2f(half_of(s.a[1], e));
            A[g][2 * t + 8 + e] = h2f(half_of(s.a[2], e));
            A[g + 8][2 * t + 8 + e] = h2f(half_of(s.a[3], e));
            B[2 * t + e][g] = h2f(half_of(s.b[0], e));
            B[2 * t + 8 + e][g] = h2f(half_of(s.b[1], e));
        }
    }
    for (int m = 0; m < 16; ++m) {  // n innermost (vectorises); each D[m][n] still sums k in order
        for (int n = 0; n < 8; ++n) D[m][n] = 0.0f;
        for (int k = 0; k < 16; ++k)
            for (int n = 0; n < 8; ++n) D[m][n] += A[m][k] * B[k][n];
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        MmaSlot s;
        memcpy(&s, slots[lane], sizeof s);
        const unsigned g = lane / 4, t = lane % 4;
        for (int r = 0; r < 4; ++r) s.d[r] += D[g + 8 * (r >> 1)][2 * t + (r & 1)];
        memcpy(slots[lane], &s, sizeof s);
    }
}
}  // namespace

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, fragments as in the PTX ISA (lane = 4g + t):
// A a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..];
// B b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]; C c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1].
// Products are exact in f32; each 16-term sum is taken in k order, then added to C (the tensor core's
// order and rounding are not modelled).
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const MmaSlot mine = {{a[0], a[1], a[2], a[3]}, {b0, b1}, {d[0], d[1], d[2], d[3]}};
    const unsigned char* slots = collective("mma.sync.m16n8k16", &mine, sizeof mine, mma_combine);
    MmaSlot out;
    memcpy(&out, slots + kSlotBytes * self().lane, sizeof out);
    for (int r = 0; r < 4; ++r) d[r] = out.d[r];
}

// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest with ties away from zero (adding half an ulp
// to the magnitude does exactly that, carrying into the exponent and up to infinity), low 13 bits zero.
// NaN stays NaN; infinities are unchanged.
uint32_t cvt_rna_tf32(uint32_t bits) {
    if ((bits & 0x7f800000u) == 0x7f800000u) return (bits & 0x7fffffu) ? 0x7fffffffu : bits;
    return (bits + 0x1000u) & 0xffffe000u;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (lane = 4g + t): A a0 = A[g][t], a1 = A[g+8][t],
// a2 = A[g][t+4], a3 = A[g+8][t+4]; B b0 = B[t][g], b1 = B[t+4][g]; C as m16n8k16. The tensor core reads
// only the top 19 bits of each operand: the twin masks the rest off. Products of two tf32 values are
// exact in f32; each 8-term sum is taken in k order, then added to C.
namespace {
float tf32_value(uint32_t r) {
    const uint32_t bits = r & 0xffffe000u;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

__attribute__((target_clones("avx2", "default"))) void mma_tf32_combine(unsigned char (*slots)[kSlotBytes]) {
    float A[16][8], B[8][8], D[16][8];
    for (unsigned lane = 0; lane < 32; ++lane) {
        MmaSlot s;
        memcpy(&s, slots[lane], sizeof s);
        const unsigned g = lane / 4, t = lane % 4;
        A[g][t] = tf32_value(s.a[0]);
        A[g + 8][t] = tf32_value(s.a[1]);
        A[g][t + 4] = tf32_value(s.a[2]);
        A[g + 8][t + 4] = tf32_value(s.a[3]);
        B[t][g] = tf32_value(s.b[0]);
        B[t + 4][g] = tf32_value(s.b[1]);
    }
    for (int m = 0; m < 16; ++m) {
        for (int n = 0; n < 8; ++n) D[m][n] = 0.0f;
        for (int k = 0; k < 8; ++k)
            for (int n = 0; n < 8; ++n) D[m][n] += A[m][k] * B[k][n];
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        MmaSlot s;
        memcpy(&s, slots[lane], sizeof s);
        const unsigned g = lane / 4, t = lane % 4;
        for (int r = 0; r < 4; ++r) s.d[r] += D[g + 8 * (r >> 1)][2 * t + (r & 1)];
        memcpy(slots[lane], &s, sizeof s);
    }
}
}  // namespace

void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const MmaSlot mine = {{a[0], a[1], a[2], a[3]}, {b0, b1}, {d[0], d[1], d[2], d[3]}};
    const unsigned char* slots = collective("mma.sync.m16n8k8.tf32", &mine, sizeof mine, mma_tf32_combine);
    MmaSlot out;
    memcpy(&out, slots + kSlotBytes * self().lane, sizeof out);
    for (int r = 0; r < 4; ++r) d[r] = out.d[r];
}

}  // namespace emu
}  // namespace lcm
