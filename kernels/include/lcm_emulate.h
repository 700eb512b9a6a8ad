// The CUDA execution model on the CPU, for the emulation build of kernels/*.cu (build.rs compiles the
// same files as host C++ with LCM_EMULATE defined and this header force-included; the runtime behind it
// is kernels/emulate/runtime.cpp, the PTX twins kernels/emulate/ptx.cpp).
//
// - A block's threads are fibers on one OS thread, scheduled cooperatively: each runs until it reaches a
//   barrier or exits. Blocks are independent and may run on several OS threads at once.
// - `__syncthreads()` is a block barrier; exited threads count as arrived (as on sm_70+).
// - Warp collectives (`__shfl_xor_sync` and the emulated ldmatrix / mma.sync in lcm_device.cuh) exchange
//   values through per-warp slots at a warp barrier. Every lane of a full warp must take part: a lane
//   that exited, a partial warp, a partial mask or lanes at different collectives is an error, never a
//   silent wrong answer.
// - Dynamic shared memory is allocated per block at exactly the launched size, filled with 0xFF bytes
//   (NaN as f16 and f32) and followed by an inaccessible page, so a read past its end is reported with
//   the kernel, block and thread. Device allocations end at an inaccessible page too.
// - `__shared__` variables become per-OS-thread statics: correct per block because an OS thread runs one
//   block at a time (the kernels use only dynamic shared memory today).
//
// What this does not model (the GPU check covers it): timing, warps running concurrently between
// barriers, the memory model, fast-math approximations (`__expf`, `rsqrtf` are exact here) and the
// tensor cores' accumulation order and rounding.
#ifndef LCM_EMULATE_H
#define LCM_EMULATE_H

#include <cuda_fp16.h>  // the host path of __half / __half2 and the vector types
#include <math.h>
#include <stdint.h>
#include <string.h>

// host_defines.h makes the execution-space keywords empty on the host; these are the ones it leaves out.
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ static thread_local

namespace lcm {
namespace emu {

// The calling fiber's coordinates and its block's dynamic shared memory (runtime.cpp).
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
unsigned char* dynamic_smem();
unsigned lane_id();  // linear thread index % 32

void sync_block();
// Publishes `bytes` (≤ kWarpSlotBytes) from this lane, waits for the whole warp at the same collective
// `what`, and returns the warp's 32 slots (kWarpSlotBytes apart, lane order). Valid until this lane's
// next collective.
constexpr int kWarpSlotBytes = 48;
const unsigned char* warp_exchange(const char* what, const void* mine, int bytes);
// Reports a kernel error (the launch fails with this message, naming kernel, block and thread).
[[noreturn]] void fail(const char* what);

// The PTX twins (lcm_device.cuh calls them under LCM_EMULATE).
void cp_async16(void* dst, const void* src, int bytes);
void cp_async_commit();
void cp_async_wait(int n);
void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans);
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
uint32_t cvt_rna_tf32(uint32_t bits);
uint32_t cvta_shared(const void* p);

}  // namespace emu
}  // namespace lcm

#define threadIdx (::lcm::emu::thread_idx())
#define blockIdx (::lcm::emu::block_idx())
#define blockDim (::lcm::emu::block_dim())
#define gridDim (::lcm::emu::grid_dim())

static inline void __syncthreads() { ::lcm::emu::sync_block(); }

template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= ::lcm::emu::kWarpSlotBytes, "shuffle payload");
    if (mask != 0xffffffffu || width != 32) ::lcm::emu::fail("__shfl_xor_sync: only full-warp masks are emulated");
    const unsigned char* slots = ::lcm::emu::warp_exchange("__shfl_xor_sync", &v, sizeof(T));
    T out;
    memcpy(&out, slots + ::lcm::emu::kWarpSlotBytes * (::lcm::emu::lane_id() ^ (unsigned)(lane_mask & 31)), sizeof(T));
    return out;
}

static inline int atomicCAS(int* p, int compare, int value) {
    __atomic_compare_exchange_n(p, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;  // the old value either way
}

static inline unsigned __cvta_generic_to_shared(const void* p) { return ::lcm::emu::cvta_shared(p); }

// Device math. The fast-math approximations are computed exactly here (a documented difference).
#define __expf(x) expf(x)  // a macro: glibc's math.h declares an __expf it does not export
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

#endif  // LCM_EMULATE_H
