// Internal to the emulator's runtime (kernels/emulate/runtime.cpp and ptx.cpp): what a fiber, a warp and
// an OS thread's worker hold, and the few functions the PTX twins share with the scheduler. Kernel code
// sees only kernels/include/lcm_emulate.h.
#ifndef LCM_EMULATE_RUNTIME_H
#define LCM_EMULATE_RUNTIME_H

#include <setjmp.h>

#include <vector>

#include "lcm_emulate.h"

#if defined(__x86_64__) && !defined(LCM_EMU_UCONTEXT)
#define LCM_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace lcm {
namespace emu {

constexpr int kSlotBytes = kWarpSlotBytes;

#ifdef LCM_EMU_ASM_SWITCH
extern "C" void lcm_emu_switch(void** save_sp, void* to_sp);

struct Context {
    void* sp = nullptr;
};
#else
struct Context {
    ucontext_t uc;
};
#endif

enum class State : unsigned char { Ready, AtBlockBarrier, AtWarpCollective, Done };

struct Copy {
    unsigned char* dst;
    const unsigned char* src;
    int bytes;
    uint64_t group;  // commits before it was issued: the group it belongs to once committed
};

struct Fiber {
    Context ctx;
    uint3 tid;
    unsigned linear, warp, lane;
    State state;
    unsigned phase;     // collectives taken so far: their parity picks the slot buffer
    const char* what;   // the collective this lane waits at
    unsigned char* stack;  // lowest usable byte (a guard page lies below)
    std::vector<Copy> copies;
    uint64_t committed;
};

struct Warp {
    unsigned lanes, live, arrived;
    const char* what;
    alignas(16) unsigned char slots[2][32][kSlotBytes];
};

struct Launch {
    void (*thunk)(const void*);
    const void* params;
    const char* name;
    unsigned grid[3], block[3];
    unsigned smem;
};

// Everything one OS thread needs to run blocks; reused across launches.
struct Worker {
    Context sched;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    unsigned char* stacks = nullptr;  // fibers.size() · (guard + kStackBytes)
    size_t stack_slots = 0;
    unsigned char* smem_map = nullptr;  // [guard][pages][guard]
    size_t smem_map_bytes = 0;
    unsigned char* smem = nullptr;  // this block's dynamic shared memory, ending at the upper guard
    unsigned smem_bytes = 0;
    const Launch* launch = nullptr;
    uint3 bid;
    dim3 bdim, gdim;
    unsigned live = 0, block_arrived = 0;
    std::vector<unsigned> ready;  // ring of ready fibers (each at most once), FIFO
    size_t ready_head = 0, ready_count = 0;
    Fiber* cur = nullptr;
    sigjmp_buf on_error;
    bool in_launch = false;
    char error[512];
};

extern thread_local Worker* tl_worker __attribute__((tls_model("initial-exec")));

inline Fiber& self() { return *tl_worker->cur; }

// Reports a kernel error naming the kernel, block and thread; returns to lcm_emu_run_blocks.
[[noreturn]] void failf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// A warp collective: this lane's `bytes` go into its slot; the last lane to arrive runs `combine` over
// all 32 slots (if any) and releases the others. Returns the warp's slots.
unsigned char* collective(const char* what, const void* mine, int bytes, void (*combine)(unsigned char (*)[kSlotBytes]));

// Whether [p, p + bytes) lies in the running block's dynamic shared memory.
bool in_smem(const Worker& w, const void* p, size_t bytes);

}  // namespace emu
}  // namespace lcm

#endif  // LCM_EMULATE_RUNTIME_H
