// The emulator's runtime (see kernels/include/lcm_emulate.h for the model): fibers for a block's threads,
// block and warp barriers and the warp exchange, per-block shared memory behind a guard page, guard-paged
// device allocations, and turning a kernel's fault into an error message instead of a crash. The PTX
// twins built on the warp exchange are in ptx.cpp.
//
// Entry points for the Rust side (src/cuda/emulator.rs): lcm_emu_run_blocks, lcm_emu_alloc, lcm_emu_free.
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <vector>

#include "runtime.h"

namespace lcm {
namespace emu {

thread_local Worker* tl_worker __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

constexpr size_t kStackBytes = 64 << 10;

size_t page_size() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

// ---------------------------------------------------------------------------------------------------
// Context switching. x86-64: callee-saved registers, MXCSR and the x87 control word on the stack, then
// the stack pointer swapped (a few nanoseconds; swapcontext makes a signal-mask syscall per switch).
// Elsewhere: ucontext.

#ifdef LCM_EMU_ASM_SWITCH
asm(R"(
    .text
    .p2align 4
    .globl lcm_emu_switch
    .hidden lcm_emu_switch
    .type lcm_emu_switch,@function
lcm_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size lcm_emu_switch,.-lcm_emu_switch
)");
#endif

Worker& worker() {
    if (!tl_worker) tl_worker = new Worker();  // one per OS thread, kept for the thread's life
    return *tl_worker;
}

// ---------------------------------------------------------------------------------------------------
// Errors: a message naming the kernel, block and thread, then back to lcm_emu_run_blocks.

void describe_here(char* out, size_t n) {
    Worker& w = *tl_worker;
    if (w.cur) {
        snprintf(out, n, "%s: block (%u,%u,%u) thread (%u,%u,%u): ", w.launch->name, w.bid.x, w.bid.y, w.bid.z,
                 w.cur->tid.x, w.cur->tid.y, w.cur->tid.z);
    } else {
        snprintf(out, n, "%s: block (%u,%u,%u): ", w.launch->name, w.bid.x, w.bid.y, w.bid.z);
    }
}

}  // namespace

[[noreturn]] void failf(const char* fmt, ...) {
    Worker& w = *tl_worker;
    char prefix[160];
    describe_here(prefix, sizeof prefix);
    char body[352];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    snprintf(w.error, sizeof w.error, "%s%s", prefix, body);
    siglongjmp(w.on_error, 1);
}

namespace {

// ---------------------------------------------------------------------------------------------------
// Device allocations: each ends at an inaccessible page, 16-byte aligned (what the kernels' vector
// accesses need), and is registered so a fault can be described.

struct Alloc {
    unsigned char* map;
    size_t map_bytes;
    size_t bytes;  // as asked for
    size_t used;   // rounded up to 16: the guard page starts right after
};
std::mutex g_allocs_mutex;
std::map<uintptr_t, Alloc> g_allocs;  // by user address

// ---------------------------------------------------------------------------------------------------
// Faults inside a launch become errors.

struct sigaction g_old_segv, g_old_bus;

const char* access_kind(void* uctx) {
#if defined(__x86_64__)
    const ucontext_t* uc = static_cast<const ucontext_t*>(uctx);
    return (uc->uc_mcontext.gregs[REG_ERR] & 2) ? "write" : "read";
#else
    (void)uctx;
    return "access";
#endif
}

void on_fault(int sig, siginfo_t* info, void* uctx) {
    Worker* w = tl_worker;
    if (!w || !w->in_launch) {
        // Not ours: hand it to whoever handled it before (Rust's stack-overflow handler, or the default).
        const struct sigaction& old = sig == SIGBUS ? g_old_bus : g_old_segv;
        if (old.sa_flags & SA_SIGINFO) {
            old.sa_sigaction(sig, info, uctx);
        } else if (old.sa_handler != SIG_IGN && old.sa_handler != SIG_DFL) {
            old.sa_handler(sig);
        } else {
            signal(sig, SIG_DFL);  // returning re-executes the access, which now terminates the process
        }
        return;
    }
    const uintptr_t a = (uintptr_t)info->si_addr;
    const size_t page = page_size();
    const char* kind = access_kind(uctx);
    char what[300];
    const uintptr_t s0 = (uintptr_t)w->smem;
    const uintptr_t map0 = (uintptr_t)w->smem_map, map1 = map0 + w->smem_map_bytes;
    if (a >= map0 && a < map1) {
        snprintf(what, sizeof what, "%s at byte %lld of its %u-byte dynamic shared memory", kind,
                 (long long)(a - s0), w->smem_bytes);
    } else if (w->stacks && a >= (uintptr_t)w->stacks &&
               a < (uintptr_t)w->stacks + w->stack_slots * (kStackBytes + page)) {
        snprintf(what, sizeof what, "thread stack overflow (%zu KiB per emulated thread)", kStackBytes >> 10);
    } else {
        snprintf(what, sizeof what, "%s of address 0x%llx, which is not device memory", kind, (unsigned long long)a);
        if (g_allocs_mutex.try_lock()) {
            auto it = g_allocs.upper_bound(a);
            if (it != g_allocs.begin()) {
                --it;
                const uintptr_t end = it->first + it->second.used;
                if (a >= end && a < end + page)
                    snprintf(what, sizeof what, "%s at byte %llu of a %zu-byte device allocation", kind,
                             (unsigned long long)(a - it->first), it->second.bytes);
            }
            g_allocs_mutex.unlock();
        }
        if (info->si_code == SI_KERNEL && a == 0)
            snprintf(what, sizeof what, "general-protection fault (a misaligned vector access?)");
    }
    char prefix[160];
    describe_here(prefix, sizeof prefix);
    snprintf(w->error, sizeof w->error, "%s%s", prefix, what);
    siglongjmp(w->on_error, 1);
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
    });
    // A stack overflow in a fiber needs somewhere else to run the handler. Rust gives its threads an
    // alternate signal stack; other threads get one here.
    static thread_local bool has_altstack = false;
    if (!has_altstack) {
        stack_t cur;
        if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
            stack_t ss;
            ss.ss_size = 64 << 10;
            ss.ss_sp = malloc(ss.ss_size);
            ss.ss_flags = 0;
            sigaltstack(&ss, nullptr);
        }
        has_altstack = true;
    }
}

// ---------------------------------------------------------------------------------------------------
// Memory for a worker: fiber stacks with guard pages, and the shared-memory window.

unsigned char* map_region(size_t bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : static_cast<unsigned char*>(p);
}

bool ensure_fibers(Worker& w, size_t n, char* err, size_t errlen) {
    if (w.stack_slots >= n) return true;
    const size_t page = page_size(), slot = kStackBytes + page;
    if (w.stacks) munmap(w.stacks, w.stack_slots * slot);
    w.stacks = map_region(n * slot);
    w.stack_slots = 0;
    if (!w.stacks) {
        snprintf(err, errlen, "emulator: cannot map %zu fiber stacks", n);
        return false;
    }
    for (size_t i = 0; i < n; ++i) mprotect(w.stacks + i * slot, page, PROT_NONE);
    w.stack_slots = n;
    w.fibers.resize(n);
    for (size_t i = 0; i < n; ++i) w.fibers[i].stack = w.stacks + i * slot + page;
    return true;
}

bool ensure_smem(Worker& w, unsigned bytes, char* err, size_t errlen) {
    const size_t page = page_size();
    const size_t inner = round_up(bytes ? bytes : 1, page);
    if (!w.smem_map || w.smem_map_bytes < inner + 2 * page) {
        if (w.smem_map) munmap(w.smem_map, w.smem_map_bytes);
        w.smem_map_bytes = inner + 2 * page;
        w.smem_map = map_region(w.smem_map_bytes);
        if (!w.smem_map) {
            snprintf(err, errlen, "emulator: cannot map %u bytes of shared memory", bytes);
            return false;
        }
        mprotect(w.smem_map, page, PROT_NONE);
        mprotect(w.smem_map + w.smem_map_bytes - page, page, PROT_NONE);
    }
    unsigned char* hi = w.smem_map + w.smem_map_bytes - page;
    // The block's bytes end at the guard (rounded down to 16-byte alignment, so at most 15 bytes of slack).
    w.smem = reinterpret_cast<unsigned char*>(((uintptr_t)hi - bytes) & ~(uintptr_t)15);
    w.smem_bytes = bytes;
    return true;
}

// ---------------------------------------------------------------------------------------------------
// The scheduler.

[[noreturn]] void fiber_main();

void switch_to(Context& from, Context& to) {
#ifdef LCM_EMU_ASM_SWITCH
    lcm_emu_switch(&from.sp, to.sp);
#else
    swapcontext(&from.uc, &to.uc);
#endif
}

void start_fiber(Worker& w, Fiber& f) {
#ifdef LCM_EMU_ASM_SWITCH
    unsigned char* top = f.stack + kStackBytes;
    // What lcm_emu_switch pops: MXCSR and x87 control word, r15..rbp, then the "return" into fiber_main
    // with the stack aligned as after a call.
    uintptr_t* sp = reinterpret_cast<uintptr_t*>(((uintptr_t)top & ~(uintptr_t)15) - 16);
    sp[1] = 0;
    sp[0] = (uintptr_t)&fiber_main;
    for (int i = 1; i <= 6; ++i) *--sp = 0;
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    --sp;
    memcpy(reinterpret_cast<unsigned char*>(sp), &mxcsr, 4);
    memcpy(reinterpret_cast<unsigned char*>(sp) + 4, &fpucw, 2);
    f.ctx.sp = sp;
#else
    getcontext(&f.ctx.uc);
    f.ctx.uc.uc_stack.ss_sp = f.stack;
    f.ctx.uc.uc_stack.ss_size = kStackBytes;
    f.ctx.uc.uc_link = nullptr;
    makecontext(&f.ctx.uc, (void (*)())fiber_main, 0);
#endif
    (void)w;
}

// The OS thread goes from fiber to fiber directly (one switch, not two through a scheduler loop): to
// the next ready fiber in FIFO order, or back to run_block when none is ready — the block is done, or
// deadlocked.
void switch_away(Worker& w, Fiber& from) {
    if (w.ready_count == 0) {
        w.cur = nullptr;
        switch_to(from.ctx, w.sched);
        return;
    }
    Fiber& to = w.fibers[w.ready[w.ready_head]];
    w.ready_head = (w.ready_head + 1) % w.ready.size();
    --w.ready_count;
    w.cur = &to;
    switch_to(from.ctx, to.ctx);
}

void make_ready(Worker& w, Fiber& f) {
    f.state = State::Ready;
    w.ready[(w.ready_head + w.ready_count) % w.ready.size()] = f.linear;
    ++w.ready_count;
}

// Everyone waiting at __syncthreads goes on, in thread order; `running` (the last to arrive) is
// already on its way.
void release_block(Worker& w, Fiber* running) {
    for (size_t i = 0; i < w.ready.size(); ++i) {  // ready.size() = this block's threads
        Fiber& f = w.fibers[i];
        if (f.state == State::AtBlockBarrier && &f != running) make_ready(w, f);
    }
    if (running) running->state = State::Ready;
    w.block_arrived = 0;
}

[[noreturn]] void fiber_main() {
    Worker& w = *tl_worker;
    w.launch->thunk(w.launch->params);
    Fiber& f = self();
    Warp& wp = w.warps[f.warp];
    f.copies.clear();  // copies still pending at exit land nowhere anyone reads
    f.state = State::Done;
    --w.live;
    --wp.live;
    if (wp.arrived > 0) failf("lane %u exited while lanes of its warp wait at %s", f.lane, wp.what);
    // Exited threads count as arrived at later barriers (sm_70+).
    if (w.block_arrived > 0 && w.block_arrived == w.live) release_block(w, nullptr);
    switch_away(w, f);
    __builtin_unreachable();
}

[[noreturn]] void deadlock(Worker& w, size_t n) {
    unsigned at_block = 0, at_warp = 0;
    const char* warp_what = "";
    for (size_t i = 0; i < n; ++i) {
        if (w.fibers[i].state == State::AtBlockBarrier) ++at_block;
        if (w.fibers[i].state == State::AtWarpCollective) {
            ++at_warp;
            warp_what = w.fibers[i].what;
        }
    }
    w.cur = nullptr;
    failf("deadlock: %u threads wait at __syncthreads and %u at %s, and none can proceed", at_block, at_warp,
          at_warp ? warp_what : "a warp collective");
}

void run_block(Worker& w, size_t n) {
    const unsigned nwarps = (unsigned)((n + 31) / 32);
    w.warps.resize(nwarps);
    for (unsigned i = 0; i < nwarps; ++i) {
        Warp& wp = w.warps[i];
        wp.lanes = wp.live = (unsigned)(n - i * 32 < 32 ? n - i * 32 : 32);
        wp.arrived = 0;
        wp.what = "";
    }
    w.ready.resize(n);
    w.ready_head = w.ready_count = 0;
    for (size_t i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        f.linear = (unsigned)i;
        f.tid.x = (unsigned)(i % w.bdim.x);
        f.tid.y = (unsigned)(i / w.bdim.x % w.bdim.y);
        f.tid.z = (unsigned)(i / ((size_t)w.bdim.x * w.bdim.y));
        f.warp = (unsigned)(i / 32);
        f.lane = (unsigned)(i % 32);
        f.phase = 0;
        f.what = "";
        f.copies.clear();
        f.committed = 0;
        start_fiber(w, f);
        make_ready(w, f);
    }
    memset(w.smem, 0xFF, w.smem_bytes);  // NaN as f16 and f32: what a kernel reads before writing shows
    w.live = (unsigned)n;
    w.block_arrived = 0;
    Fiber& first = w.fibers[w.ready[0]];
    w.ready_head = 1 % n;
    --w.ready_count;
    w.cur = &first;
    switch_to(w.sched, first.ctx);
    // Back here when no fiber is ready: all exited, or the rest wait for something that cannot happen.
    if (w.live > 0) deadlock(w, n);
}

}  // namespace

bool in_smem(const Worker& w, const void* p, size_t bytes) {
    const uintptr_t a = (uintptr_t)p, s = (uintptr_t)w.smem;
    return a >= s && a + bytes <= s + w.smem_bytes;
}

// A warp collective: this lane's `bytes` go into its slot; the last lane to arrive runs `combine` over
// all 32 slots (if any) and releases the others. Two slot buffers alternate, so a lane may run ahead into
// its next collective while slower lanes still read this one's slots.
unsigned char* collective(const char* what, const void* mine, int bytes, void (*combine)(unsigned char (*)[kSlotBytes])) {
    Worker& w = *tl_worker;
    Fiber& f = *w.cur;
    Warp& wp = w.warps[f.warp];
    if (wp.lanes != 32) failf("%s in a partial warp of %u threads (only full warps are emulated)", what, wp.lanes);
    if (wp.live != 32) failf("%s after lanes of the warp exited", what);
    if (wp.arrived == 0) {
        wp.what = what;
    } else if (wp.what != what && strcmp(wp.what, what) != 0) {
        failf("warp divergence: lane %u is at %s while other lanes are at %s", f.lane, what, wp.what);
    }
    const unsigned parity = f.phase++ & 1;
    memcpy(wp.slots[parity][f.lane], mine, (size_t)bytes);
    if (++wp.arrived < 32) {
        f.what = what;
        f.state = State::AtWarpCollective;
        switch_away(w, f);
    } else {
        if (combine) combine(wp.slots[parity]);
        wp.arrived = 0;
        for (unsigned i = f.warp * 32; i < f.warp * 32 + 32; ++i)
            if (w.fibers[i].state == State::AtWarpCollective) make_ready(w, w.fibers[i]);
    }
    return &wp.slots[parity][0][0];
}


// ---------------------------------------------------------------------------------------------------
// What lcm_emulate.h declares.

const uint3& thread_idx() { return self().tid; }
const uint3& block_idx() { return tl_worker->bid; }
const dim3& block_dim() { return tl_worker->bdim; }
const dim3& grid_dim() { return tl_worker->gdim; }
unsigned char* dynamic_smem() { return tl_worker->smem; }
unsigned lane_id() { return self().lane; }

void sync_block() {
    Worker& w = *tl_worker;
    Fiber& f = *w.cur;
    f.state = State::AtBlockBarrier;
    if (++w.block_arrived == w.live) {
        release_block(w, &f);  // the last to arrive goes straight on
        return;
    }
    switch_away(w, f);
}

const unsigned char* warp_exchange(const char* what, const void* mine, int bytes) {
    return collective(what, mine, bytes, nullptr);
}

void fail(const char* what) { failf("%s", what); }

}  // namespace emu
}  // namespace lcm

using lcm::emu::Launch;
using lcm::emu::Worker;

// Runs blocks [first, first + count) of a launch (block index linear, x fastest) on the calling thread.
// Returns 0, or 1 with a message in `err` (the first failing block stops the rest).
extern "C" int lcm_emu_run_blocks(const Launch* l, unsigned long long first, unsigned long long count, char* err,
                                  size_t errlen) {
    using namespace lcm::emu;
    install_fault_handler();
    Worker& w = worker();
    const size_t n = (size_t)l->block[0] * l->block[1] * l->block[2];
    if (n == 0 || n > 1024) {
        snprintf(err, errlen, "%s: block of %zu threads (1..1024)", l->name, n);
        return 1;
    }
    if (!ensure_fibers(w, n, err, errlen) || !ensure_smem(w, l->smem, err, errlen)) return 1;
    w.launch = l;
    w.bdim = dim3(l->block[0], l->block[1], l->block[2]);
    w.gdim = dim3(l->grid[0], l->grid[1], l->grid[2]);
    w.cur = nullptr;
    w.bid = make_uint3(0, 0, 0);
    volatile unsigned long long b = first;  // survives the longjmp
    if (sigsetjmp(w.on_error, 1) != 0) {
        w.in_launch = false;
        w.cur = nullptr;
        snprintf(err, errlen, "%s", w.error);
        return 1;
    }
    w.in_launch = true;
    for (; b < first + count; b = b + 1) {
        const unsigned long long gx = l->grid[0], gy = l->grid[1];
        w.bid = make_uint3((unsigned)(b % gx), (unsigned)(b / gx % gy), (unsigned)(b / (gx * gy)));
        run_block(w, n);
    }
    w.in_launch = false;
    return 0;
}

// A device allocation: `bytes` ending (16-byte aligned) just before an inaccessible page.
extern "C" void* lcm_emu_alloc(size_t bytes) {
    using namespace lcm::emu;
    const size_t page = page_size();
    const size_t used = round_up(bytes ? bytes : 1, 16);
    const size_t map_bytes = round_up(used, page) + page;
    unsigned char* map = map_region(map_bytes);
    if (!map) return nullptr;
    mprotect(map + map_bytes - page, page, PROT_NONE);
    unsigned char* p = map + map_bytes - page - used;
    std::lock_guard<std::mutex> lock(g_allocs_mutex);
    g_allocs[(uintptr_t)p] = Alloc{map, map_bytes, bytes, used};
    return p;
}

extern "C" void lcm_emu_free(void* p) {
    using namespace lcm::emu;
    Alloc a;
    {
        std::lock_guard<std::mutex> lock(g_allocs_mutex);
        auto it = g_allocs.find((uintptr_t)p);
        if (it == g_allocs.end()) return;
        a = it->second;
        g_allocs.erase(it);
    }
    munmap(a.map, a.map_bytes);
}
