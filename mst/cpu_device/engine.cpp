// mst/cpu_device/engine.cpp: the CPU device's kernel engine (engine.h): fibers, schedules, barriers, warp
// collectives, shared memory and its race tracker (fed by GCC's ThreadSanitizer instrumentation of kernel
// code, whose __tsan_* callbacks are defined here: no libtsan is linked), and the mma.sync-era PTX
// instructions (mma, ldmatrix, cp.async) by the PTX ISA's semantics.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cerrno>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <link.h>
#include <mutex>
#include <pthread.h>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>

#include "mst/cpu_device/cpu_device.h"
#include "mst/cpu_device/engine.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace mst_cpu {

// ----------------------------------------------------------------------------
// errors

void fatal(const char* format, ...) {
    va_list args;
    va_start(args, format);
    char text[1024];
    vsnprintf(text, sizeof text, format, args);
    va_end(args);
    fflush(stdout);
    fprintf(stderr, "[CPU device] %s\n", text);
    fflush(stderr);
    _exit(1);  // from any worker thread, at once: no destructor may run under a fiber
}

void kernel_fatal(const CudaThread* t, const char* format, ...) {
    va_list args;
    va_start(args, format);
    char text[900];
    vsnprintf(text, sizeof text, format, args);
    va_end(args);
    Worker* w = current_worker();
    if (!w || !w->block.launch) fatal("%s", text);
    const Block& b = w->block;
    if (t)
        fatal("kernel %s, block (%u,%u,%u), thread (%u,%u,%u) (warp %d lane %d): %s", b.launch->kernel, b.index.x,
              b.index.y, b.index.z, t->index.x, t->index.y, t->index.z, t->warp, t->lane, text);
    fatal("kernel %s, block (%u,%u,%u): %s", b.launch->kernel, b.index.x, b.index.y, b.index.z, text);
}

void poison(void* p, size_t bytes) {
    unsigned char* c = (unsigned char*)p;
    size_t i = 0;
    for (; i < bytes && ((uintptr_t)(c + i) & 7); i++) c[i] = (((uintptr_t)(c + i)) & 1) ? 0x7f : 0xff;
    const uint64_t word = 0x7fff7fff7fff7fffull;  // little-endian: 0xff at even addresses, 0x7f at odd
    for (; i + 8 <= bytes; i += 8) memcpy(c + i, &word, 8);
    for (; i < bytes; i++) c[i] = (((uintptr_t)(c + i)) & 1) ? 0x7f : 0xff;
}

// ----------------------------------------------------------------------------
// configuration (environment, or set_schedule from a test)

struct Config {
    int sample_blocks = 0;  // > 0: sampled-block mode, this many blocks of each launch run
    Schedule schedule = SCHEDULE_RANDOM;
    uint64_t seed = 1;
    int workers = 0;
#if defined(__SANITIZE_ADDRESS__)
    bool race_check = false;  // the ASan build's kernels carry no ThreadSanitizer instrumentation: plain
                              // loads and stores are invisible to the tracker there
#else
    bool race_check = true;
#endif
};
// an environment variable's whole number in [min, max], or one error line naming it
static long long environment_number(const char* name, const char* text, long long min, long long max) {
    char* end;
    errno = 0;
    long long x = strtoll(text, &end, 10);
    if (!*text || *end || errno == ERANGE || x < min || x > max)
        fatal("%s=%s: must be a whole number from %lld to %lld", name, text, min, max);
    return x;
}

static Config& config() {
    static Config c = [] {
        Config c;
        if (const char* s = getenv("MST_CPU_SEED")) c.seed = (uint64_t)environment_number("MST_CPU_SEED", s, 0, LLONG_MAX);
        if (const char* s = getenv("MST_CPU_SCHEDULE")) {
            bool found = false;
            for (int i = 0; i < SCHEDULE_COUNT; i++)
                if (!strcmp(s, schedule_name((Schedule)i))) { c.schedule = (Schedule)i; found = true; }
            if (!found) fatal("MST_CPU_SCHEDULE=%s: must be random, round-robin, lowest-first or highest-first-reversed", s);
        }
        c.workers = std::max(1, (int)std::thread::hardware_concurrency());
        if (const char* s = getenv("MST_CPU_THREADS")) c.workers = (int)environment_number("MST_CPU_THREADS", s, 1, 1024);
        if (const char* s = getenv("MST_CPU_RACECHECK")) c.race_check = environment_number("MST_CPU_RACECHECK", s, 0, 1) == 1;
        if (const char* s = getenv("MST_CPU_SAMPLE_BLOCKS"))
            c.sample_blocks = (int)environment_number("MST_CPU_SAMPLE_BLOCKS", s, 0, 1 << 30);
        return c;
    }();
    return c;
}

const char* schedule_name(Schedule s) {
    switch (s) {
        case SCHEDULE_RANDOM: return "random";
        case SCHEDULE_ROUND_ROBIN: return "round-robin";
        case SCHEDULE_LOWEST_FIRST: return "lowest-first";
        case SCHEDULE_HIGHEST_FIRST_REVERSED: return "highest-first-reversed";
        default: return "?";
    }
}
void set_schedule(Schedule schedule, uint64_t seed) {
    config().schedule = schedule;
    config().seed = seed;
}
Schedule current_schedule() { return config().schedule; }

std::string kernel_name_from(const char* pretty_function) {  // "... [with auto Kernel = NAME]"
    std::string s = pretty_function;
    size_t at = s.find("Kernel = ");
    if (at == std::string::npos) return s;
    s = s.substr(at + 9);
    return s.substr(0, s.rfind(']'));
}

static uint64_t splitmix(uint64_t* state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// ----------------------------------------------------------------------------
// fibers: a context switch that saves the callee-saved registers, the SSE and x87 control words and the
// stack pointer (the System V x86-64 ABI's preserved state), no signal mask: 2-4x a ucontext switch

#if !defined(__x86_64__)
#error "the CPU device's fiber switch is written for x86-64 (the CUDA toolkit's host); port mst_cpu_switch"
#endif
extern "C" void mst_cpu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl mst_cpu_switch
    .type mst_cpu_switch, @function
mst_cpu_switch:
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
    .size mst_cpu_switch, .-mst_cpu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");

// 256 KiB per fiber, with a guard page below: an overflow faults (and is reported) instead of corrupting
static const size_t STACK_BYTES = 256 << 10, GUARD_BYTES = 4096;
static thread_local Worker* tls_worker = nullptr;

Worker* current_worker() { return tls_worker; }
CudaThread& current_thread() {
    Worker* w = tls_worker;
    if (!w || !w->current) fatal("a kernel built-in was called outside a kernel");
    return *w->current;
}
Block& current_block() { return current_thread(), tls_worker->block; }

static char* stack_get(Worker* w) {
    if (!w->free_stacks.empty()) {
        char* s = w->free_stacks.back();
        w->free_stacks.pop_back();
        return s;
    }
    void* p = mmap(nullptr, STACK_BYTES + GUARD_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fatal("cannot map a fiber stack");
    mprotect(p, GUARD_BYTES, PROT_NONE);
    return (char*)p + GUARD_BYTES;
}

[[noreturn]] static void fiber_main();

// a new fiber's stack as mst_cpu_switch leaves a switched-out one: the control words, six registers and
// a return address into fiber_main, with the stack 16-byte aligned at its entry as a call would leave it
static void* stack_init(char* stack) {
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(stack, STACK_BYTES);  // frames of an earlier fiber that ended here never unwound
#endif
    uintptr_t top = ((uintptr_t)(stack + STACK_BYTES)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)top;
    *--sp = 0;                           // fiber_main's (absent) caller's frame
    *--sp = (uint64_t)&fiber_main;       // at 16-byte alignment: after `ret`, rsp % 16 == 8, as after a call
    for (int i = 0; i < 6; i++) *--sp = 0;  // rbp rbx r12 r13 r14 r15
    uint32_t control[2];
    asm volatile("stmxcsr %0; fnstcw %1" : "=m"(control[0]), "=m"(control[1]));
    *--sp = ((uint64_t)(control[1] & 0xffff) << 32) | control[0];
    return sp;
}

// AddressSanitizer must be told which stack is live across a switch (bottom, size: the destination's;
// `ending`: the fiber switching away is done and never resumes)
static void switch_to(void** save, void* load, const void* bottom, size_t size, bool ending = false) {
#if defined(__SANITIZE_ADDRESS__)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(ending ? nullptr : &fake, bottom, size);
    mst_cpu_switch(save, load);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    (void)bottom; (void)size; (void)ending;
    mst_cpu_switch(save, load);
#endif
}
// the scheduler's stack (the worker's OS thread's), for the switches back to it
static const void* scheduler_stack_bottom(Worker* w);
static size_t scheduler_stack_size(Worker* w);

// ----------------------------------------------------------------------------
// the block: scheduling its fibers

static void runnable_set(Block& b, int i) { b.runnable[i >> 6] |= 1ull << (i & 63); }
static void runnable_clear(Block& b, int i) { b.runnable[i >> 6] &= ~(1ull << (i & 63)); }

void make_runnable(Block& b, int i) {
    CudaThread& t = b.thread[i];
    if (t.status != BLOCKED) return;
    t.status = RUNNABLE;
    t.waiting_at = nullptr;
    runnable_set(b, i);
}

// the first runnable thread at or after `from`, wrapping around; -1 when none is
static int next_runnable(const Block& b, int from) {
    const int words = (b.threads + 63) / 64;
    if (from >= b.threads) from = 0;
    int w = from >> 6;
    uint64_t bits = b.runnable[w] & (~0ull << (from & 63));
    for (int k = 0; k <= words; k++) {
        if (bits) return w * 64 + __builtin_ctzll(bits);
        w = (w + 1) % words;
        bits = b.runnable[w];
    }
    return -1;
}

// the next fiber by the schedule; -1 when none is runnable
static int pick(Block& b) {
    const int words = (b.threads + 63) / 64;
    switch (config().schedule) {
        case SCHEDULE_LOWEST_FIRST:
            for (int w = 0; w < words; w++) if (b.runnable[w]) return w * 64 + __builtin_ctzll(b.runnable[w]);
            return -1;
        case SCHEDULE_HIGHEST_FIRST_REVERSED:
            for (int w = words - 1; w >= 0; w--) if (b.runnable[w]) return w * 64 + 63 - __builtin_clzll(b.runnable[w]);
            return -1;
        case SCHEDULE_ROUND_ROBIN:
            return next_runnable(b, b.last_picked + 1);
        default:  // random: the first runnable thread at or after a random place
            return next_runnable(b, (int)(splitmix(&b.rng) % (uint64_t)b.threads));
    }
}

[[noreturn]] static void deadlock(Block& b) {
    // name what the blocked threads wait at and who is missing
    std::string waits;
    int shown = 0, exited = 0;
    for (int i = 0; i < b.threads; i++) {
        CudaThread& t = b.thread[i];
        if (t.status == DONE) { exited++; continue; }
        if (shown < 4) {
            char text[160];
            snprintf(text, sizeof text, "%sthread %d waits at %s", shown ? "; " : "", i, t.waiting_at ? t.waiting_at : "?");
            waits += text;
        }
        shown++;
    }
    kernel_fatal(nullptr, "deadlock: %d of %d threads blocked and none can run (%s%s); %d exited (a barrier or "
                 "collective not reached by all the threads it counts, or an mbarrier phase that never completes)",
                 shown, b.threads, waits.c_str(), shown > 4 ? "; ..." : "", exited);
}

static void thread_exits(Block& b, CudaThread& t);

// A fiber runs a thread to its end; if the schedule's next pick is a thread that has not started, that one
// runs next on the same stack, with no switch (the same order the scheduler would take, at a fraction of
// the cost: most threads of elementwise kernels never block).
[[noreturn]] static void fiber_main() {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);  // the switch that started this fiber is complete
#endif
    Worker* w = tls_worker;
    Block& b = w->block;
    for (;;) {
        CudaThread& t = *w->current;
        (*b.launch->body)();
        thread_exits(b, t);
        t.status = DONE;
        int next = pick(b);
        if (next < 0 || b.thread[next].status != NOT_STARTED) break;
        CudaThread& n = b.thread[next];
        runnable_clear(b, next);
        b.last_picked = next;
        n.stack = t.stack;  // the stack passes on; the scheduler frees it when its last thread is done
        t.stack = nullptr;
        n.status = RUNNING;
        w->current = &n;
    }
    switch_to(&w->current->sp, w->scheduler_sp, scheduler_stack_bottom(w), scheduler_stack_size(w), true);
    __builtin_unreachable();
}

void block_current_thread(const char* what) {
    Worker* w = tls_worker;
    CudaThread& t = *w->current;
    t.status = BLOCKED;
    t.waiting_at = what;
    switch_to(&t.sp, w->scheduler_sp, scheduler_stack_bottom(w), scheduler_stack_size(w));
}

// a running fiber gives the schedule a chance to run another (after it released others at a barrier)
void yield_current_thread() {
    Worker* w = tls_worker;
    CudaThread& t = *w->current;
    t.status = RUNNABLE;
    runnable_set(w->block, t.linear);
    switch_to(&t.sp, w->scheduler_sp, scheduler_stack_bottom(w), scheduler_stack_size(w));
}

static void land_all_async(CudaThread& t);

// the asynchronous units (register_async_unit): hopper.cpp's TMA unit
struct AsyncUnit {
    bool (*progress)(Block&);
    void (*block_end)(Block&);
};
static std::vector<AsyncUnit>& async_units() { static auto* v = new std::vector<AsyncUnit>; return *v; }
void register_async_unit(bool (*progress)(Block&), void (*block_end)(Block&)) { async_units().push_back({progress, block_end}); }
static bool async_progress(Block& b) {
    for (const AsyncUnit& u : async_units())
        if (u.progress && u.progress(b)) return true;
    return false;
}

static void thread_exits(Block& b, CudaThread& t) {
    land_all_async(t);
    Warp& w = b.warp[t.warp];
    if (w.arrived > 0) kernel_fatal(&t, "exits while %d lanes of its warp wait at %s", w.arrived, w.kind_name);
    for (int id = 0; id < MAX_NAMED_BARRIERS; id++)  // (a named barrier over fewer threads may not count this one)
        if (b.barrier[id].arrived > 0 && b.barrier[id].expected == b.threads)
            kernel_fatal(&t, "exits while %d threads wait at bar.sync %d (%s): a barrier every thread counts must be "
                         "reached by all of them", b.barrier[id].arrived, id, id == 0 ? "__syncthreads" : "named barrier");
    const WarpgroupCollective& wg = b.warpgroup[t.warp / 4];
    if (wg.arrived > 0)
        kernel_fatal(&t, "exits while %d threads of its warpgroup wait at %s (a warpgroup instruction needs all 128)", wg.arrived,
                     wg.kind_name);
    b.live--;
}

static void run_block(Worker* w, const GridLaunch& g, uint32_t linear) {
    Block& b = w->block;
    b.launch = &g;
    b.index = make_uint3(linear % g.grid.x, linear / g.grid.x % g.grid.y, linear / (g.grid.x * g.grid.y));
    b.threads = (int)(g.block.x * g.block.y * g.block.z);
    b.warps = (b.threads + 31) / 32;
    b.live = b.threads;
    b.last_picked = -1;
    uint64_t seed_state = config().seed ^ (g.launch_index * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)linear << 20);
    b.rng = splitmix(&seed_state);
    b.serial++;
    if ((int)b.thread.size() < b.threads) b.thread.resize(b.threads);
    memset(b.runnable, 0, sizeof b.runnable);
    for (int i = 0; i < b.threads; i++) {
        CudaThread& t = b.thread[i];
        t.index = make_uint3(i % g.block.x, i / g.block.x % g.block.y, i / (g.block.x * g.block.y));
        t.linear = i;
        t.warp = i / 32;
        t.lane = i % 32;
        t.status = NOT_STARTED;
        t.waiting_at = nullptr;
        t.barrier = -1;
        t.async_copies.clear();
        t.open_group = 0;
        runnable_set(b, i);
    }
    for (int i = 0; i < b.warps; i++) {
        Warp& wp = b.warp[i];
        wp.lanes = std::min(32, b.threads - 32 * i);
        memset(wp.vc, 0, sizeof wp.vc);
        wp.vc[i] = 1;
        wp.arrived = 0;
    }
    for (NamedBarrier& nb : b.barrier) { nb.expected = nb.arrived = 0; nb.warps = nb.waiting = 0; }
    for (WarpgroupCollective& wg : b.warpgroup) wg.arrived = 0;
    // dynamic shared memory: poisoned, and the read sets of the last block forgotten
    if (g.dynamic_smem) poison(w->dynamic_smem, g.dynamic_smem);
    w->read_sets.clear();
    w->free_read_sets.clear();
    w->tracking = config().race_check;

    for (;;) {
        int i = pick(b);
        if (i < 0) {
            if (b.live == 0) break;
            if (async_progress(b)) continue;  // an asynchronous unit completed work (and may have woken fibers)
            deadlock(b);
        }
        CudaThread& t = b.thread[i];
        runnable_clear(b, i);
        b.last_picked = i;
        if (t.status == NOT_STARTED) {
            t.stack = stack_get(w);
            t.sp = stack_init(t.stack);
        }
        t.status = RUNNING;
        w->current = &t;
        switch_to(&w->scheduler_sp, t.sp, t.stack, STACK_BYTES);
        CudaThread& ran = *w->current;  // t, or a thread that followed it on its stack
        w->current = nullptr;
        if (ran.status == DONE) {
            w->free_stacks.push_back(ran.stack);
            ran.stack = nullptr;
        }
    }
    for (int id = 0; id < MAX_NAMED_BARRIERS; id++)
        if (b.barrier[id].arrived > 0)
            kernel_fatal(nullptr, "the block ends with %d of %d arrivals at bar.sync/bar.arrive %d: a phase never completed "
                         "(unmatched bar.arrive)", b.barrier[id].arrived, b.barrier[id].expected, id);
    for (const AsyncUnit& u : async_units())
        if (u.block_end) u.block_end(b);
    w->tracking = false;
    b.launch = nullptr;
}

// ----------------------------------------------------------------------------
// workers: blocks spread over the machine's cores (each worker runs whole blocks, one at a time)

static uintptr_t g_tls_size = 0;  // the executable's TLS block, where static __shared__ variables live
static int find_tls(struct dl_phdr_info* info, size_t, void* out) {
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_TLS) {
            const ElfW(Phdr)& p = info->dlpi_phdr[i];
            size_t align = p.p_align ? p.p_align : 1;
            *(uintptr_t*)out = (p.p_memsz + align - 1) / align * align;
        }
    return 1;  // the first object is the executable
}

static const size_t DYNAMIC_SMEM_CAPACITY = 256 << 10;  // above any card's 227 KiB opt-in limit

static const void* scheduler_stack_bottom(Worker* w) { return w->os_stack; }
static size_t scheduler_stack_size(Worker* w) { return w->os_stack_size; }

static void worker_init(Worker* w, int id) {
    w->id = id;
    tls_worker = w;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstack(&attr, &w->os_stack, &w->os_stack_size);
        pthread_attr_destroy(&attr);
    }
    void* p = mmap(nullptr, DYNAMIC_SMEM_CAPACITY, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fatal("cannot map shared memory");
    w->dynamic_smem = (unsigned char*)p;
    w->dynamic_capacity = DYNAMIC_SMEM_CAPACITY;
    w->dynamic_shadow.assign(DYNAMIC_SMEM_CAPACITY / 2, Granule());
    // x86-64 (TLS variant II): the executable's TLS block ends at the thread pointer
    if (!g_tls_size) dl_iterate_phdr(find_tls, &g_tls_size);
    w->tls_size = g_tls_size;
    w->tls_lo = (uintptr_t)__builtin_thread_pointer() - g_tls_size;
    w->static_shadow.assign(g_tls_size / 2 + 1, Granule());
}

// the workers, started at the first job; the host thread hands them one job at a time and waits
struct WorkerPool {
    std::mutex mutex;
    std::condition_variable start, done;
    std::vector<Worker*> workers;
    const std::function<void(Worker*)>* job = nullptr;
    uint64_t generation = 0;
    int busy = 0;
};
static WorkerPool& pool() { static WorkerPool* p = new WorkerPool; return *p; }  // never destroyed: workers outlive main

static void worker_loop(Worker* w, int id) {
    worker_init(w, id);
    WorkerPool& p = pool();
    uint64_t seen = 0;
    for (;;) {
        const std::function<void(Worker*)>* job;
        {
            std::unique_lock<std::mutex> lock(p.mutex);
            p.start.wait(lock, [&] { return p.generation != seen; });
            seen = p.generation;
            job = p.job;
        }
        (*job)(w);
        std::lock_guard<std::mutex> lock(p.mutex);
        if (--p.busy == 0) p.done.notify_all();
    }
}

static void install_fault_handler();

// runs job on every worker at once; returns when all have finished
static void run_on_workers(const std::function<void(Worker*)>& job) {
    WorkerPool& p = pool();
    int n = config().workers;
    if (p.workers.empty()) {
        install_fault_handler();
        for (int i = 0; i < n; i++) {
            Worker* w = new Worker;
            p.workers.push_back(w);
            std::thread(worker_loop, w, i).detach();
        }
    }
    std::unique_lock<std::mutex> lock(p.mutex);
    p.job = &job;
    p.busy = n;
    p.generation++;
    p.start.notify_all();
    p.done.wait(lock, [&] { return p.busy == 0; });
}

static void run_grid(GridLaunch& g) {
    run_on_workers([&g](Worker* w) {
        for (;;) {
            size_t k = g.next.fetch_add(1);
            if (k >= g.order.size()) break;
            run_block(w, g, g.order[k]);
        }
    });
}

int worker_count() { return config().workers; }

void parallel_for(int64_t count, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& body) {
    if (count <= grain || config().workers == 1) {
        if (count > 0) body(0, count);
        return;
    }
    std::atomic<int64_t> next{0};
    run_on_workers([&](Worker*) {
        for (;;) {
            int64_t begin = next.fetch_add(grain);
            if (begin >= count) break;
            body(begin, std::min(count, begin + grain));
        }
    });
}

static uint64_t g_launches = 0;

void launch(const char* kernel_name, const void* kernel_id, dim3 grid, dim3 block, size_t dynamic_smem,
            cudaStream_t stream, std::function<void()> body);  // runtime.cpp: checks, then run_launch in stream order

// Sampled-block mode (set_block_sampling): the first and last blocks and a seeded few others, in order
std::vector<uint32_t> sampled_blocks(dim3 grid) {
    size_t blocks = (size_t)grid.x * grid.y * grid.z, want = (size_t)config().sample_blocks;
    std::vector<uint32_t> chosen;
    if (want == 0 || want >= blocks) {
        for (size_t i = 0; i < blocks; i++) chosen.push_back((uint32_t)i);
        return chosen;
    }
    chosen = {0, (uint32_t)(blocks - 1)};
    uint64_t state = config().seed ^ blocks ^ ((uint64_t)grid.y << 40);
    while (chosen.size() < std::max<size_t>(want, 2)) {
        uint32_t b = (uint32_t)(splitmix(&state) % blocks);
        if (std::find(chosen.begin(), chosen.end(), b) == chosen.end()) chosen.push_back(b);
    }
    std::sort(chosen.begin(), chosen.end());
    return chosen;
}
void set_block_sampling(int blocks) { config().sample_blocks = std::max(0, blocks); }

void run_launch(const char* kernel_name, dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()>& body) {
    GridLaunch g;
    g.kernel = kernel_name;
    g.grid = grid;
    g.block = block;
    g.dynamic_smem = dynamic_smem;
    g.body = &body;
    g.launch_index = g_launches++;
    size_t blocks = (size_t)grid.x * grid.y * grid.z;
    if (config().sample_blocks > 0) {
        g.order = sampled_blocks(grid);
        blocks = g.order.size();
    } else {
        g.order.resize(blocks);
        for (size_t i = 0; i < blocks; i++) g.order[i] = (uint32_t)i;
    }
    Schedule s = config().schedule;
    if (s == SCHEDULE_HIGHEST_FIRST_REVERSED) std::reverse(g.order.begin(), g.order.end());
    if (s == SCHEDULE_RANDOM) {
        uint64_t state = config().seed ^ (g.launch_index << 32);
        for (size_t i = blocks; i > 1; i--) std::swap(g.order[i - 1], g.order[splitmix(&state) % i]);
    }
    run_grid(g);
}

// ----------------------------------------------------------------------------
// built-ins

uint3 thread_index() { return current_thread().index; }
uint3 block_index() { return current_block().index; }
dim3 block_dimensions() { return current_block().launch->block; }
dim3 grid_dimensions() { return current_block().launch->grid; }

void trap(const char* what) { kernel_fatal(tls_worker && tls_worker->current ? tls_worker->current : nullptr, "%s", what); }

// bar.sync (wait) and bar.arrive (!wait): a phase completes when `threads` threads have arrived; the waiting
// warps then learn the clocks of every arrived warp (bar.arrive releases, bar.sync acquires). A phase completed
// by arrivals alone synchronizes nobody: reported, as a bar.sync missing from a producer/consumer pair.
static void barrier_arrival(int id, int threads, bool wait) {
    CudaThread& t = current_thread();
    Block& b = tls_worker->block;
    const char* op = wait ? "bar.sync" : "bar.arrive";
    if (id < 0 || id >= MAX_NAMED_BARRIERS) kernel_fatal(&t, "%s %d: barrier ids are 0-15", op, id);
    if (threads <= 0 || threads % 32 || threads > b.threads)
        kernel_fatal(&t, "%s %d, %d: the thread count must be a positive multiple of 32, at most the block's %d", op, id, threads, b.threads);
    NamedBarrier& nb = b.barrier[id];
    if (nb.arrived == 0) {
        nb.expected = threads;
        nb.warps = nb.waiting = 0;
        memset(nb.join, 0, sizeof nb.join);
        memset(nb.lanes, 0, sizeof nb.lanes);
    } else if (nb.expected != threads) {
        kernel_fatal(&t, "%s %d with %d threads while others arrived there with %d", op, id, threads, nb.expected);
    }
    if (nb.lanes[t.warp] >> t.lane & 1)  // a GPU counts it again: the phase completes without the threads it awaits
        kernel_fatal(&t, "%s %d: this thread already arrived in the barrier's current phase (a bar.arrive without its "
                     "matching bar.sync)", op, id);
    nb.lanes[t.warp] |= 1u << t.lane;
    Warp& own = b.warp[t.warp];
    nb.warps |= 1u << t.warp;
    if (wait) nb.waiting |= 1u << t.warp;
    for (int u = 0; u < b.warps; u++) nb.join[u] = std::max(nb.join[u], own.vc[u]);
    nb.arrived++;
    if (nb.arrived < nb.expected) {
        if (!wait) return;
        t.barrier = id;
        block_current_thread(id == 0 ? "__syncthreads (bar.sync 0)" : "a named barrier (bar.sync id, count)");
        t.barrier = -1;
        return;
    }
    if (!nb.waiting)
        kernel_fatal(&t, "bar.arrive %d completed a phase of %d threads that no thread waited at (bar.sync): the arrivals "
                     "order nothing", id, threads);
    // complete: the waiting warps learn the arrived warps' clocks; every arrived warp ticks its own
    for (int u = 0; u < b.warps; u++) {
        if (!(nb.warps >> u & 1)) continue;
        Warp& wu = b.warp[u];
        if (nb.waiting >> u & 1)
            for (int v = 0; v < b.warps; v++) wu.vc[v] = std::max(wu.vc[v], nb.join[v]);
        wu.vc[u]++;
    }
    nb.arrived = 0;
    for (int i = 0; i < b.threads; i++)
        if (b.thread[i].status == BLOCKED && b.thread[i].barrier == id) make_runnable(b, i);
    if (wait) yield_current_thread();
}
void named_barrier(int id, int threads) { barrier_arrival(id, threads, true); }
void named_barrier_arrive(int id, int threads) { barrier_arrival(id, threads, false); }

void syncthreads() { named_barrier(0, current_block().threads); }

void warp_collective(int kind, const char* name, void (*complete)(Block&, int warp)) {
    CudaThread& t = current_thread();
    Block& b = tls_worker->block;
    Warp& w = b.warp[t.warp];
    if (w.arrived == 0) {
        w.kind = kind;
        w.kind_name = name;
        for (int l = 0; l < w.lanes; l++)
            if (b.thread[t.warp * 32 + l].status == DONE)
                kernel_fatal(&t, "%s: lane %d of the warp has exited (a full-mask warp collective needs all 32)", name, l);
    } else if (w.kind != kind) {
        kernel_fatal(&t, "%s while other lanes of its warp wait at %s (divergent warp collectives)", name, w.kind_name);
    }
    if (++w.arrived < w.lanes) {
        block_current_thread(name);
        return;
    }
    complete(b, t.warp);
    w.arrived = 0;
    w.vc[t.warp]++;  // the lanes have synchronized
    for (int l = 0; l < w.lanes; l++) make_runnable(b, t.warp * 32 + l);
    yield_current_thread();
}

void warpgroup_collective(int kind, const char* name, void (*complete)(Block&, int warpgroup)) {
    CudaThread& t = current_thread();
    Block& b = tls_worker->block;
    const int g = t.warp / 4;
    if (b.threads < 128 * (g + 1))
        kernel_fatal(&t, "%s: its warpgroup (threads %d-%d) is incomplete, the block has %d threads (a warpgroup is 4 whole warps)",
                     name, 128 * g, 128 * g + 127, b.threads);
    WarpgroupCollective& wg = b.warpgroup[g];
    if (wg.arrived == 0) {
        wg.kind = kind;
        wg.kind_name = name;
        for (int i = 128 * g; i < 128 * (g + 1); i++)
            if (b.thread[i].status == DONE)
                kernel_fatal(&t, "%s: thread %d of the warpgroup has exited (a warpgroup instruction needs all 128)", name, i);
    } else if (wg.kind != kind) {
        kernel_fatal(&t, "%s while other threads of its warpgroup wait at %s (warpgroup instructions must be .aligned: the "
                     "same instruction by all 128 threads)", name, wg.kind_name);
    }
    if (++wg.arrived < 128) {
        block_current_thread(name);
        return;
    }
    complete(b, g);
    wg.arrived = 0;
    for (int w = 4 * g; w < 4 * (g + 1); w++) b.warp[w].vc[w]++;  // each warp's lanes have synchronized (.sync)
    for (int i = 128 * g; i < 128 * (g + 1); i++) make_runnable(b, i);
    yield_current_thread();
}

static void check_full_mask(unsigned mask, const char* what) {
    CudaThread& t = current_thread();
    unsigned full = tls_worker->block.warp[t.warp].lanes == 32 ? 0xffffffffu : (1u << tls_worker->block.warp[t.warp].lanes) - 1;
    if (mask != full) kernel_fatal(&t, "%s with mask 0x%08x: the CPU device runs full-mask warp collectives only", what, mask);
}

static void complete_shuffle(Block& b, int warp) {
    CudaThread* lanes = &b.thread[warp * 32];
    int n = b.warp[warp].lanes;
    uint64_t in[32];
    for (int l = 0; l < n; l++) in[l] = lanes[l].collective.value;
    for (int l = 0; l < n; l++) {
        int mode_bits = lanes[l].collective.operand >> 16, operand = lanes[l].collective.operand & 0xffff;
        int src = l;
        if (mode_bits == 0) src = l ^ operand;
        else if (mode_bits == 1) src = l + operand < n ? l + operand : l;
        else if (mode_bits == 2) src = l - operand >= 0 ? l - operand : l;
        else src = operand & 31;
        if (src >= n) src = l;
        *(uint64_t*)lanes[l].collective.out = in[src];
    }
}

uint64_t shuffle(unsigned mask, uint64_t value, int operand, int mode) {
    check_full_mask(mask, "a warp shuffle");
    CudaThread& t = current_thread();
    uint64_t out = 0;
    t.collective.value = value;
    t.collective.operand = (mode << 16) | (operand & 0xffff);
    t.collective.out = &out;
    warp_collective(1, "a warp shuffle (__shfl*_sync)", complete_shuffle);
    return out;
}

static void complete_ballot(Block& b, int warp) {
    CudaThread* lanes = &b.thread[warp * 32];
    unsigned bits = 0;
    for (int l = 0; l < b.warp[warp].lanes; l++) bits |= (lanes[l].collective.value ? 1u : 0u) << l;
    for (int l = 0; l < b.warp[warp].lanes; l++) *(unsigned*)lanes[l].collective.out = bits;
}
unsigned ballot(unsigned mask, bool predicate) {
    check_full_mask(mask, "__ballot_sync");
    CudaThread& t = current_thread();
    unsigned out = 0;
    t.collective.value = predicate;
    t.collective.out = &out;
    warp_collective(2, "__ballot_sync", complete_ballot);
    return out;
}

static void complete_nothing(Block&, int) {}
void syncwarp(unsigned mask) {
    check_full_mask(mask, "__syncwarp");
    warp_collective(3, "__syncwarp", complete_nothing);
}

// atomics: blocks on other workers run at the same time, so real atomic operations
template <typename T>
static T atomic_update(T* address, T value, T (*op)(T, T)) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "4- or 8-byte atomics");
    using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
    U* word = (U*)address;
    if (is_shared(address, sizeof(T))) shared_access(current_thread(), address, sizeof(T), true);
    U expected = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    for (;;) {
        T old;
        memcpy(&old, &expected, sizeof(T));
        T updated = op(old, value);
        U desired;
        memcpy(&desired, &updated, sizeof(T));
        if (__atomic_compare_exchange_n(word, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return old;
    }
}
float atomic_add(float* a, float v) { return atomic_update<float>(a, v, [](float x, float y) { return x + y; }); }
double atomic_add(double* a, double v) { return atomic_update<double>(a, v, [](double x, double y) { return x + y; }); }
int atomic_add(int* a, int v) { return atomic_update<int>(a, v, [](int x, int y) { return (int)((unsigned)x + (unsigned)y); }); }
unsigned atomic_add(unsigned* a, unsigned v) { return atomic_update<unsigned>(a, v, [](unsigned x, unsigned y) { return x + y; }); }
unsigned long long atomic_add(unsigned long long* a, unsigned long long v) {
    return atomic_update<unsigned long long>(a, v, [](unsigned long long x, unsigned long long y) { return x + y; });
}
int atomic_max(int* a, int v) { return atomic_update<int>(a, v, [](int x, int y) { return std::max(x, y); }); }
int atomic_cas(int* a, int compare, int value) {
    if (is_shared(a, 4)) shared_access(current_thread(), a, 4, true);
    __atomic_compare_exchange_n(a, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
unsigned atomic_cas(unsigned* a, unsigned compare, unsigned value) {
    if (is_shared(a, 4)) shared_access(current_thread(), a, 4, true);
    __atomic_compare_exchange_n(a, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}

// ----------------------------------------------------------------------------
// shared memory: the window's addresses, bounds and the race tracker

void* dynamic_shared_memory() { return current_thread(), tls_worker->dynamic_smem; }

// shared-window addresses (what __cvta_generic_to_shared gives): dynamic shared memory from 0, the static
// (TLS) block above it
uint32_t shared_address(const void* generic) {
    Worker* w = tls_worker;
    uintptr_t a = (uintptr_t)generic;
    if (!w) fatal("__cvta_generic_to_shared outside a kernel");
    if (a - (uintptr_t)w->dynamic_smem < w->dynamic_capacity) return (uint32_t)(a - (uintptr_t)w->dynamic_smem);
    if (a - w->tls_lo < w->tls_size) return (uint32_t)(w->dynamic_capacity + (a - w->tls_lo));
    kernel_fatal(w->current, "__cvta_generic_to_shared(%p): not a shared-memory address", generic);
}
void* generic_address(uint32_t shared) {
    Worker* w = tls_worker;
    if (shared < w->dynamic_capacity) return w->dynamic_smem + shared;
    if (shared - w->dynamic_capacity < w->tls_size) return (void*)(w->tls_lo + (shared - w->dynamic_capacity));
    kernel_fatal(w->current, "shared address 0x%x is outside the CTA's shared memory", shared);
}

bool is_shared(const void* p, size_t bytes) {
    Worker* w = tls_worker;
    if (!w) return false;
    uintptr_t a = (uintptr_t)p;
    return (a - (uintptr_t)w->dynamic_smem < w->dynamic_capacity && a + bytes <= (uintptr_t)w->dynamic_smem + w->dynamic_capacity) ||
           (a - w->tls_lo < w->tls_size && a + bytes <= w->tls_lo + w->tls_size);
}

// where p lies: its granule record, and a name for error lines; null when not shared memory
static Granule* granule_of(Worker* w, uintptr_t a, const char** region, uintptr_t* offset) {
    if (a - (uintptr_t)w->dynamic_smem < w->dynamic_capacity) {
        *offset = a - (uintptr_t)w->dynamic_smem;
        *region = "dynamic shared memory";
        return &w->dynamic_shadow[*offset / 2];
    }
    if (a - w->tls_lo < w->tls_size) {
        *offset = a - w->tls_lo;
        *region = "static __shared__ memory";
        return &w->static_shadow[*offset / 2];
    }
    return nullptr;
}

// prior access (thread p at its warp's clock c) happens before thread t's access now
static bool ordered(const Block& b, int p, uint32_t c, const CudaThread& t, bool many_lanes = false) {
    int pw = p / 32;
    if (pw == t.warp) return c < b.warp[pw].vc[pw] || (p == t.linear && !many_lanes);
    return b.warp[t.warp].vc[pw] >= c;
}

static void report_race(const CudaThread& t, bool write, int other, bool other_wrote, const char* region, uintptr_t offset) {
    kernel_fatal(&t, "race on %s at offset %zu: this thread %s it while thread %d (warp %d) %s it with no barrier "
                 "or warp synchronization between them", region, (size_t)offset, write ? "writes" : "reads", other,
                 other / 32, other_wrote ? "wrote" : "read");
}

void shared_access(CudaThread& t, const void* p, size_t bytes, bool write, bool async) {
    Worker* w = tls_worker;
    Block& b = w->block;
    uintptr_t a = (uintptr_t)p;
    const char* region;
    uintptr_t offset;
    Granule* g = granule_of(w, a, &region, &offset);
    if (!g) return;
    if (region[0] == 'd' && offset + bytes > b.launch->dynamic_smem)
        kernel_fatal(&t, "%s %zu bytes at offset %zu of dynamic shared memory, past the launch's %zu bytes",
                     write ? "writes" : "reads", bytes, (size_t)offset, b.launch->dynamic_smem);
    if (!w->tracking) return;
    const uint32_t clock = b.warp[t.warp].vc[t.warp];
    for (uintptr_t off = offset & ~(uintptr_t)1; off < offset + bytes; off += 2, g++) {
        if (g->serial != b.serial) *g = Granule(), g->serial = b.serial;
        if (write) {
            if (g->writer != NO_THREAD && !ordered(b, g->writer, g->write_clock, t)) report_race(t, true, g->writer, true, region, off);
            if (g->reader == SHARED_READERS) {
                const ReadSet& rs = w->read_sets[g->read_clock];
                for (int u = 0; u < b.warps; u++)
                    if (rs.clock[u] && !ordered(b, u * 32 + rs.lane[u], rs.clock[u], t, rs.many_lanes[u]))
                        report_race(t, true, u * 32 + rs.lane[u], false, region, off);
            } else if (g->reader != NO_THREAD && !ordered(b, g->reader, g->read_clock, t)) {
                report_race(t, true, g->reader, false, region, off);
            }
            if (g->reader == SHARED_READERS) w->free_read_sets.push_back(g->read_clock);
            g->writer = (uint16_t)t.linear;
            g->write_clock = clock;
            g->reader = NO_THREAD;
            g->written = 1;
            g->pending = async;
        } else {
            if (g->pending)
                kernel_fatal(&t, "reads %s at offset %zu that an asynchronous copy (cp.async or TMA) of thread %d has not "
                             "landed: its wait (cp.async.wait_group, mbarrier) comes later or not at all", region, (size_t)off, g->writer);
            if (!g->written)
                kernel_fatal(&t, "reads %s at offset %zu that no thread of this block has written", region, (size_t)off);
            if (g->writer != NO_THREAD && !ordered(b, g->writer, g->write_clock, t)) report_race(t, false, g->writer, true, region, off);
            if (g->reader == NO_THREAD || (g->reader != SHARED_READERS && ordered(b, g->reader, g->read_clock, t))) {
                g->reader = (uint16_t)t.linear;
                g->read_clock = clock;
            } else {
                if (g->reader != SHARED_READERS) {  // a second concurrent reader: keep both in a read set
                    ReadSet rs;
                    memset(&rs, 0, sizeof rs);
                    int pw = g->reader / 32;
                    rs.clock[pw] = g->read_clock;
                    rs.lane[pw] = g->reader % 32;
                    if (w->free_read_sets.empty()) {
                        w->read_sets.push_back(rs);
                        g->read_clock = (uint32_t)(w->read_sets.size() - 1);
                    } else {
                        g->read_clock = w->free_read_sets.back();
                        w->free_read_sets.pop_back();
                        w->read_sets[g->read_clock] = rs;
                    }
                    g->reader = SHARED_READERS;
                }
                ReadSet& rs = w->read_sets[g->read_clock];
                if (rs.clock[t.warp] == clock && rs.lane[t.warp] != t.lane) rs.many_lanes[t.warp] = 1;
                else if (rs.clock[t.warp] != clock) rs.many_lanes[t.warp] = 0;
                rs.clock[t.warp] = clock;
                rs.lane[t.warp] = (uint8_t)t.lane;
            }
        }
    }
}

void land_async(const void* p, size_t bytes) {
    Worker* w = tls_worker;
    const char* region;
    uintptr_t offset;
    Granule* g = granule_of(w, (uintptr_t)p, &region, &offset);
    if (!g) return;
    for (uintptr_t off = offset & ~(uintptr_t)1; off < offset + bytes; off += 2, g++)
        if (g->serial == w->block.serial) g->pending = 0;
}

// the instrumented kernel code's loads and stores
static inline void instrumented_access(const void* p, size_t bytes, bool write) {
    Worker* w = tls_worker;
    if (!w || !w->current) return;
    uintptr_t a = (uintptr_t)p;
    if (a - (uintptr_t)w->dynamic_smem < w->dynamic_capacity || a - w->tls_lo < w->tls_size)
        shared_access(*w->current, p, bytes, write);
}

// ----------------------------------------------------------------------------
// PTX: mma.sync m16n8k16 (9.7.14.5.14), ldmatrix (9.7.14.5.15), cp.async (9.7.9.25)

static float bf16_low(uint32_t x) { uint32_t u = x << 16; float f; memcpy(&f, &u, 4); return f; }
static float bf16_high(uint32_t x) { uint32_t u = x & 0xffff0000u; float f; memcpy(&f, &u, 4); return f; }

// Fragments (g = lane / 4, t = lane % 4): A a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..);
// B b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g); C/D c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1). The 16
// products of bf16 values are exact; they and C are added in double and rounded to fp32 once (hardware
// may truncate differently: GPU/CPU comparisons use tolerances).
static void complete_mma(Block& b, int warp) {
    CudaThread* lanes = &b.thread[warp * 32];
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; l++) {
        const uint32_t* a = (const uint32_t*)lanes[l].collective.in0;
        const uint32_t* bb = (const uint32_t*)lanes[l].collective.in1;
        int g = l / 4, t = l % 4;
        A[g][2 * t] = bf16_low(a[0]); A[g][2 * t + 1] = bf16_high(a[0]);
        A[g + 8][2 * t] = bf16_low(a[1]); A[g + 8][2 * t + 1] = bf16_high(a[1]);
        A[g][2 * t + 8] = bf16_low(a[2]); A[g][2 * t + 9] = bf16_high(a[2]);
        A[g + 8][2 * t + 8] = bf16_low(a[3]); A[g + 8][2 * t + 9] = bf16_high(a[3]);
        B[2 * t][g] = bf16_low(bb[0]); B[2 * t + 1][g] = bf16_high(bb[0]);
        B[2 * t + 8][g] = bf16_low(bb[1]); B[2 * t + 9][g] = bf16_high(bb[1]);
    }
    for (int l = 0; l < 32; l++) {
        float* c = (float*)lanes[l].collective.out;
        int g = l / 4, t = l % 4;
        for (int e = 0; e < 4; e++) {
            int row = e < 2 ? g : g + 8, col = 2 * t + (e & 1);
            double sum = c[e];
            for (int k = 0; k < 16; k++) sum += (double)A[row][k] * (double)B[k][col];
            c[e] = (float)sum;
        }
    }
}
void mma_m16n8k16_bf16(float* c, const uint32_t* a, const uint32_t* b) {
    CudaThread& t = current_thread();
    t.collective.in0 = a;
    t.collective.in1 = b;
    t.collective.out = c;
    warp_collective(10, "mma.sync.m16n8k16", complete_mma);
}

static void complete_ldmatrix(Block& b, int warp, bool transpose) {
    CudaThread* lanes = &b.thread[warp * 32];
    uint16_t m[4][8][8];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++) {
            CudaThread& src = lanes[8 * i + j];
            const void* row = src.collective.in0;
            if (((uintptr_t)row & 15) || !is_shared(row, 16))
                kernel_fatal(&src, "ldmatrix: row address %p is not 16-byte aligned shared memory", row);
            shared_access(src, row, 16, false);
            memcpy(m[i][j], row, 16);
        }
    for (int l = 0; l < 32; l++) {
        uint32_t* r = (uint32_t*)lanes[l].collective.out;
        int row = l / 4, col = 2 * (l % 4);
        for (int i = 0; i < 4; i++)
            r[i] = transpose ? (uint32_t)m[i][col][row] | ((uint32_t)m[i][col + 1][row] << 16)
                             : (uint32_t)m[i][row][col] | ((uint32_t)m[i][row][col + 1] << 16);
    }
}
static void complete_ldmatrix_plain(Block& b, int warp) { complete_ldmatrix(b, warp, false); }
static void complete_ldmatrix_trans(Block& b, int warp) { complete_ldmatrix(b, warp, true); }
void ldmatrix_x4(uint32_t* r, const void* smem, bool transpose) {
    CudaThread& t = current_thread();
    t.collective.in0 = smem;
    t.collective.out = r;
    if (transpose) warp_collective(12, "ldmatrix.x4.trans", complete_ldmatrix_trans);
    else warp_collective(11, "ldmatrix.x4", complete_ldmatrix_plain);
}

void cp_async_16(void* smem, const void* global, int src_bytes) {
    CudaThread& t = current_thread();
    if (((uintptr_t)smem & 15) || !is_shared(smem, 16)) kernel_fatal(&t, "cp.async: destination %p is not 16-byte aligned shared memory", smem);
    if (src_bytes < 0 || src_bytes > 16) kernel_fatal(&t, "cp.async: src-size %d outside [0, 16]", src_bytes);
    if (src_bytes > 0 && (((uintptr_t)global & 15) || !is_device_memory(global, 16)))
        kernel_fatal(&t, "cp.async: source %p is not 16-byte aligned device memory", global);
    AsyncCopy c;
    c.dst = (unsigned char*)smem;
    memset(c.data, 0, 16);
    if (src_bytes) memcpy(c.data, global, src_bytes);
    c.group = t.open_group;
    shared_access(t, smem, 16, true, true);
    poison(smem, 16);  // until it lands
    t.async_copies.push_back(c);
}
void cp_async_commit() { current_thread().open_group++; }
void cp_async_wait(int pending_groups) {
    CudaThread& t = current_thread();
    int newest_retired = t.open_group - 1 - pending_groups;  // groups 0 .. this are complete after the wait
    size_t kept = 0;
    for (AsyncCopy& c : t.async_copies) {
        if (c.group <= newest_retired) {
            memcpy(c.dst, c.data, 16);
            land_async(c.dst, 16);
        } else {
            t.async_copies[kept++] = c;
        }
    }
    t.async_copies.resize(kept);
}
static void land_all_async(CudaThread& t) {
    for (AsyncCopy& c : t.async_copies) { memcpy(c.dst, c.data, 16); land_async(c.dst, 16); }
    t.async_copies.clear();
}

// ----------------------------------------------------------------------------
// faults inside a kernel (a bad pointer, a fiber stack overflow): one line naming where

static void on_fault(int signal, siginfo_t* info, void*) {
    Worker* w = tls_worker;
    if (w && w->current && w->block.launch) {
        char text[160];
        snprintf(text, sizeof text, "%s at address %p (a pointer outside every allocation, or a fiber stack overflow)",
                 signal == SIGSEGV ? "segmentation fault" : "bus error", info->si_addr);
        kernel_fatal(w->current, "%s", text);
    }
    ::signal(signal, SIG_DFL);
    raise(signal);
}
static void install_fault_handler() {
#if !defined(__SANITIZE_ADDRESS__)
    static char alternate[64 << 10];
    stack_t ss = {};
    ss.ss_sp = alternate;
    ss.ss_size = sizeof alternate;
    sigaltstack(&ss, nullptr);  // the workers' own: set in worker_loop too
    struct sigaction sa = {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
#endif
}

}  // namespace mst_cpu

// ----------------------------------------------------------------------------
// GCC's ThreadSanitizer instrumentation of kernel code (-fsanitize=thread at compile time only): every
// load and store calls one of these; shared-memory ones go to the race tracker, the rest return at once.

extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_read1(void* p) { mst_cpu::instrumented_access(p, 1, false); }
void __tsan_read2(void* p) { mst_cpu::instrumented_access(p, 2, false); }
void __tsan_read4(void* p) { mst_cpu::instrumented_access(p, 4, false); }
void __tsan_read8(void* p) { mst_cpu::instrumented_access(p, 8, false); }
void __tsan_read16(void* p) { mst_cpu::instrumented_access(p, 16, false); }
void __tsan_write1(void* p) { mst_cpu::instrumented_access(p, 1, true); }
void __tsan_write2(void* p) { mst_cpu::instrumented_access(p, 2, true); }
void __tsan_write4(void* p) { mst_cpu::instrumented_access(p, 4, true); }
void __tsan_write8(void* p) { mst_cpu::instrumented_access(p, 8, true); }
void __tsan_write16(void* p) { mst_cpu::instrumented_access(p, 16, true); }
void __tsan_unaligned_read2(const void* p) { mst_cpu::instrumented_access(p, 2, false); }
void __tsan_unaligned_read4(const void* p) { mst_cpu::instrumented_access(p, 4, false); }
void __tsan_unaligned_read8(const void* p) { mst_cpu::instrumented_access(p, 8, false); }
void __tsan_unaligned_read16(const void* p) { mst_cpu::instrumented_access(p, 16, false); }
void __tsan_unaligned_write2(void* p) { mst_cpu::instrumented_access(p, 2, true); }
void __tsan_unaligned_write4(void* p) { mst_cpu::instrumented_access(p, 4, true); }
void __tsan_unaligned_write8(void* p) { mst_cpu::instrumented_access(p, 8, true); }
void __tsan_unaligned_write16(void* p) { mst_cpu::instrumented_access(p, 16, true); }
void __tsan_read_range(void* p, unsigned long size) { mst_cpu::instrumented_access(p, size, false); }
void __tsan_write_range(void* p, unsigned long size) { mst_cpu::instrumented_access(p, size, true); }
void __tsan_volatile_read1(void* p) { mst_cpu::instrumented_access(p, 1, false); }
void __tsan_volatile_read2(void* p) { mst_cpu::instrumented_access(p, 2, false); }
void __tsan_volatile_read4(void* p) { mst_cpu::instrumented_access(p, 4, false); }
void __tsan_volatile_read8(void* p) { mst_cpu::instrumented_access(p, 8, false); }
void __tsan_volatile_write1(void* p) { mst_cpu::instrumented_access(p, 1, true); }
void __tsan_volatile_write2(void* p) { mst_cpu::instrumented_access(p, 2, true); }
void __tsan_volatile_write4(void* p) { mst_cpu::instrumented_access(p, 4, true); }
void __tsan_volatile_write8(void* p) { mst_cpu::instrumented_access(p, 8, true); }
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
// host code in an instrumented file (the trainer, libstdc++'s inline atomics): the operations themselves
#define MST_TSAN_ATOMICS(bits, T)                                                                                   \
    T __tsan_atomic##bits##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }        \
    void __tsan_atomic##bits##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }        \
    T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); } \
    T __tsan_atomic##bits##_fetch_add(volatile T* a, T v, int) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); } \
    T __tsan_atomic##bits##_fetch_sub(volatile T* a, T v, int) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); } \
    T __tsan_atomic##bits##_fetch_and(volatile T* a, T v, int) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); } \
    T __tsan_atomic##bits##_fetch_or(volatile T* a, T v, int) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }  \
    T __tsan_atomic##bits##_fetch_xor(volatile T* a, T v, int) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); } \
    int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                        \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                     \
    }                                                                                                              \
    int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                          \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                     \
    }                                                                                                              \
    T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                              \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                           \
        return c;                                                                                                  \
    }
MST_TSAN_ATOMICS(8, uint8_t)
MST_TSAN_ATOMICS(16, uint16_t)
MST_TSAN_ATOMICS(32, uint32_t)
MST_TSAN_ATOMICS(64, uint64_t)
#undef MST_TSAN_ATOMICS
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) {}
}
