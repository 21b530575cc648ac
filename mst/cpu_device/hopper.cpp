// mst/cpu_device/hopper.cpp: the sm_90a instructions of mst/ptx.h on the CPU device, by the PTX ISA's semantics
// (section numbers of PTX ISA 9.0, as in mst/ptx.h), stricter than a GPU where the ISA leaves room:
//   - tensor maps (cuTensorMapEncodeTiled, reached through cudaGetDriverEntryPointByVersion as on a GPU): the
//     arguments checked as the driver documents them, the fields kept inside the 128-byte CUtensorMap;
//   - TMA (cp.async.bulk.tensor, 9.7.9.25.5.2): the box read at issue, out-of-bounds elements zero (5.5.3.3),
//     written through the swizzle (5.5.7). It completes as late as the program allows: only when no CUDA thread
//     of the block can run (the engine's async-unit hook), one mbarrier's transfers at a time, and its bytes land
//     only when that mbarrier's phase completes. Until then the destination holds poison and is `pending` in the
//     race tracker, so a read before the wait is reported, and the write is checked against earlier reads;
//   - mbarrier (9.7.13.15): phases, arrival counts, tx-count, parity waits that block the fiber (a wait that can
//     never complete is the engine's deadlock line, naming the mbarrier), arrive = release and a passing wait =
//     acquire in the race tracker's clocks, the ISA's rules checked (init before use and ordered before it, no
//     re-init, counts in range, a completed phase observed before the next phase's arrivals, fence.mbarrier_init
//     or fence.proxy.async before the async proxy completes a transaction on it);
//   - wgmma (9.7.15): warpgroup collectives; mma_async computes at issue from the shared-memory operands read
//     through the descriptors (9.7.15.5.1.2) and the register fragments (9.7.15.5.1.1), sums each product
//     exactly in double and rounds once to fp32 (as engine.cpp's mma.sync), and leaves NaN in the accumulator
//     registers until the wgmma.wait_group that retires its group writes the results; a wgmma.fence must
//     precede it after the warpgroup's last wait; writing the accumulators or the A fragments while in flight is
//     reported at the wait; its shared-memory reads go through the race tracker at issue and again at the wait;
//   - setmaxnreg (9.7.19.5): warpgroup-uniform, a multiple of 8 in [24, 256], .dec not above and .inc not below
//     the current count, and the CTA's warpgroups together within the SM's 65536 registers.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "mst/cpu_device/cpu_device.h"
#include "mst/cpu_device/engine.h"
#include "mst/ptx.h"

namespace mst_cpu {
namespace {

// ----------------------------------------------------------------------------
// tensor maps: the encoder's fields inside the opaque 128-byte CUtensorMap

const uint32_t TENSOR_MAP_MAGIC = 0x4d415054;  // "TPAM"
struct TensorMapFields {
    uint32_t magic;
    uint8_t data_type, rank, interleave, swizzle, l2_promotion, oob_fill, element_bytes, pad;
    uint64_t address;
    uint64_t dims[5];           // elements
    uint64_t strides[4];        // bytes, dimensions 1 .. rank - 1
    uint16_t box[5];            // elements
    uint8_t element_strides[5];
};
static_assert(sizeof(TensorMapFields) <= sizeof(CUtensorMap), "the fields must fit the opaque CUtensorMap");

int element_bytes(CUtensorMapDataType t) {
    switch (t) {
        case CU_TENSOR_MAP_DATA_TYPE_UINT8: return 1;
        case CU_TENSOR_MAP_DATA_TYPE_UINT16: case CU_TENSOR_MAP_DATA_TYPE_FLOAT16: case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: return 2;
        case CU_TENSOR_MAP_DATA_TYPE_UINT32: case CU_TENSOR_MAP_DATA_TYPE_INT32: case CU_TENSOR_MAP_DATA_TYPE_FLOAT32:
        case CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ: case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32: case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ: return 4;
        case CU_TENSOR_MAP_DATA_TYPE_UINT64: case CU_TENSOR_MAP_DATA_TYPE_INT64: case CU_TENSOR_MAP_DATA_TYPE_FLOAT64: return 8;
        default: return 0;  // the packed sub-byte types: not emulated
    }
}

// the driver's requirements (CUDA driver API, cuTensorMapEncodeTiled); a violation returns
// CUDA_ERROR_INVALID_VALUE with a line saying which, as a GPU's driver returns the error (without the line)
CUresult refuse_map(const char* why) {
    fprintf(stderr, "[CPU device] cuTensorMapEncodeTiled: %s: CUDA_ERROR_INVALID_VALUE\n", why);
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI encode_tiled(CUtensorMap* map, CUtensorMapDataType data_type, cuuint32_t rank, void* address, const cuuint64_t* dims,
                              const cuuint64_t* strides, const cuuint32_t* box, const cuuint32_t* element_strides,
                              CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2,
                              CUtensorMapFloatOOBfill oob_fill) {
    char why[160];
    if (!map || ((uintptr_t)map & 63)) return refuse_map("the tensor map's address must be 64-byte aligned");
    int bytes = element_bytes(data_type);
    if (bytes == 0) return refuse_map("data type not emulated on the CPU device (packed sub-byte types)");
    if (rank < 1 || rank > 5) return refuse_map("the rank must be 1 to 5");
    if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) return refuse_map("interleaved layouts are not emulated on the CPU device");
    if (!address || ((uintptr_t)address & 15)) return refuse_map("the global address must be 16-byte aligned");
    for (cuuint32_t i = 0; i < rank; i++) {
        if (dims[i] == 0 || dims[i] > (1ull << 32)) {
            snprintf(why, sizeof why, "globalDim[%u] = %llu outside [1, 2^32]", i, (unsigned long long)dims[i]);
            return refuse_map(why);
        }
        if (box[i] == 0 || box[i] > 256) {
            snprintf(why, sizeof why, "boxDim[%u] = %u outside [1, 256]", i, box[i]);
            return refuse_map(why);
        }
        if (element_strides[i] == 0 || element_strides[i] > 8) {
            snprintf(why, sizeof why, "elementStrides[%u] = %u outside [1, 8]", i, element_strides[i]);
            return refuse_map(why);
        }
    }
    for (cuuint32_t i = 0; i + 1 < rank; i++)
        if (strides[i] % 16 || strides[i] >= (1ull << 40)) {
            snprintf(why, sizeof why, "globalStrides[%u] = %llu is not a multiple of 16 below 2^40", i, (unsigned long long)strides[i]);
            return refuse_map(why);
        }
    if ((box[0] * bytes) % 16) return refuse_map("boxDim[0] x the element size must be a multiple of 16 bytes");
    int span = swizzle == CU_TENSOR_MAP_SWIZZLE_32B ? 32 : swizzle == CU_TENSOR_MAP_SWIZZLE_64B ? 64 : swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 128 : 0;
    if (swizzle != CU_TENSOR_MAP_SWIZZLE_NONE && span == 0) return refuse_map("the 128-byte swizzle's 32/64-byte atomicity modes are not emulated");
    if (span && (int)(box[0] * bytes) > span) {
        snprintf(why, sizeof why, "the box's inner dimension (%u bytes) exceeds the %d-byte swizzle", box[0] * bytes, span);
        return refuse_map(why);
    }
    if (oob_fill != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) return refuse_map("OOB-NaN fill is not emulated on the CPU device");
    TensorMapFields f;
    memset(&f, 0, sizeof f);
    f.magic = TENSOR_MAP_MAGIC;
    f.data_type = (uint8_t)data_type;
    f.rank = (uint8_t)rank;
    f.interleave = (uint8_t)interleave;
    f.swizzle = (uint8_t)swizzle;
    f.l2_promotion = (uint8_t)l2;
    f.oob_fill = (uint8_t)oob_fill;
    f.element_bytes = (uint8_t)bytes;
    f.address = (uint64_t)(uintptr_t)address;
    for (cuuint32_t i = 0; i < rank; i++) {
        f.dims[i] = dims[i];
        f.box[i] = (uint16_t)box[i];
        f.element_strides[i] = (uint8_t)element_strides[i];
        if (i + 1 < rank) f.strides[i] = strides[i];
    }
    memset(map, 0, sizeof *map);
    memcpy(map, &f, sizeof f);
    return CUDA_SUCCESS;
}

// ----------------------------------------------------------------------------
// the state of the block a worker runs: its mbarriers, the TMA transfers in flight, the wgmma groups

const uint64_t MBARRIER_MARK = 0x52524142424d4350ull;  // what an mbarrier object's 8 bytes hold here

struct TmaTransfer {
    int issuer = 0;
    uint64_t order = 0;                  // issue order in the block
    uint32_t bytes = 0;                  // its complete-tx count: the whole box
    uint32_t vc[MAX_WARPS];              // the issuer's clocks at issue (complete-tx has .release semantics)
    std::vector<unsigned char*> chunks;  // 16-byte destinations, swizzled
    std::vector<unsigned char> data;     // 16 bytes each, read at issue
};

struct MBarrier {
    bool valid = false;
    int init_thread = -1;
    bool init_visible = false;  // fence.mbarrier_init / fence.proxy.async by the initializing thread since the init
    uint32_t expected = 0, pending = 0, phase = 0;
    int64_t tx = 0;
    bool observed = true;       // a try_wait has seen the latest completed phase complete (vacuous before phase 1)
    uint32_t join[MAX_WARPS];   // every release so far (arrivals, complete-tx)
    uint32_t completed[MAX_WARPS];  // the releases of the completed phases: what a passing wait acquires
    std::vector<TmaTransfer*> in_flight, done;  // issued and not complete; complete and not landed (phase open)
};

struct PendingAccumulator {  // one thread's wgmma accumulator registers in flight
    float* d = nullptr;
    int regs = 0, group = 0;
    float value[64];
};
struct PendingFragment {  // one thread's register A fragment of an in-flight wgmma
    const uint32_t* a = nullptr;
    uint32_t copy[4];
    int group = 0;
};

struct ThreadState {
    std::vector<PendingAccumulator> accumulators;
    std::vector<PendingFragment> fragments;
    // operands of the warpgroup instruction it waits at
    float* d = nullptr;
    const uint32_t* a = nullptr;
    uint64_t desc_a = 0, desc_b = 0;
    int n = 0, scale_a = 1, scale_b = 1, registers = 0;
    bool scale_d = false, trans_a = false, trans_b = false, increase = false;
    // the mbarrier wait it is blocked at
    const uint64_t* wait_bar = nullptr;
    uint32_t wait_parity = 0;
    std::string waiting;
};

struct OperandReads {  // the shared memory an in-flight wgmma reads (checked again at its wait)
    int group = 0;
    std::vector<const void*> chunks;
};
struct WarpgroupState {
    int next_group = 0;   // the id of the group the mma_async issued now join; commit_group starts the next
    bool fenced = false;  // wgmma.fence since the last wgmma.wait_group
    int registers = 0;    // setmaxnreg's count; 0: the launch's (unknown here)
    std::vector<OperandReads> reads;
};

struct State {
    uint32_t serial = 0;
    const GridLaunch* launch = nullptr;
    std::map<uintptr_t, MBarrier> bars;
    uint64_t transfers = 0;
    ThreadState thread[MAX_BLOCK_THREADS];
    WarpgroupState warpgroup[MAX_WARPS / 4];
};

void reset(State& s, Block& b) {
    for (auto& kv : s.bars) {
        for (TmaTransfer* x : kv.second.in_flight) delete x;
        for (TmaTransfer* x : kv.second.done) delete x;
    }
    s.bars.clear();
    s.transfers = 0;
    for (ThreadState& t : s.thread) {
        t.accumulators.clear();
        t.fragments.clear();
        t.wait_bar = nullptr;
    }
    for (WarpgroupState& g : s.warpgroup) g = WarpgroupState();
    s.serial = b.serial;
    s.launch = b.launch;
}

State& state(Block& b) {
    static thread_local State* s = nullptr;  // one per worker OS thread, which runs one block at a time
    if (!s) s = new State;
    if (s->serial != b.serial || s->launch != b.launch) reset(*s, b);
    return *s;
}

uint32_t shared_of(const void* p) { return shared_address(p); }

// release: what this thread's warp has seen joins `join`, and the warp's clock moves on (later accesses of the
// thread are not covered by this release)
void release(Block& b, CudaThread& t, uint32_t* join) {
    Warp& w = b.warp[t.warp];
    for (int u = 0; u < b.warps; u++) join[u] = std::max(join[u], w.vc[u]);
    w.vc[t.warp]++;
}
void acquire(Block& b, CudaThread& t, const uint32_t* released) {
    Warp& w = b.warp[t.warp];
    for (int u = 0; u < b.warps; u++) w.vc[u] = std::max(w.vc[u], released[u]);
}

// ----------------------------------------------------------------------------
// mbarrier (9.7.13.15)

const char* describe_bar(char* text, size_t size, const uint64_t* bar, const MBarrier& m) {
    snprintf(text, size, "the mbarrier at shared 0x%x (phase %u: %u/%u arrivals pending, tx-count %lld, %zu TMA in flight)",
             shared_of(bar), m.phase, m.pending, m.expected, (long long)m.tx, m.in_flight.size() + m.done.size());
    return text;
}
// what a blocked waiter shows in the engine's deadlock line (kept short: the line shows four of them)
std::string describe_wait(const uint64_t* bar, uint32_t parity, const MBarrier& m) {
    char text[160];
    snprintf(text, sizeof text, "mbarrier.try_wait.parity %u, shared 0x%x (phase %u: %u/%u arrivals pending, tx-count %lld)", parity,
             shared_of(bar), m.phase, m.pending, m.expected, (long long)m.tx);
    return text;
}

MBarrier& lookup(CudaThread& t, State& s, uint64_t* bar, const char* what) {
    if (((uintptr_t)bar & 7) || !is_shared(bar, 8))
        kernel_fatal(&t, "%s: address %p is not 8-byte aligned shared memory (9.7.13.15.1)", what, (void*)bar);
    auto it = s.bars.find((uintptr_t)bar);
    if (it == s.bars.end() || !it->second.valid)
        kernel_fatal(&t, "%s on shared 0x%x, which holds no mbarrier initialized in this block (mbarrier.init, 9.7.13.15.3)", what,
                     shared_of(bar));
    if (memcmp(bar, &MBARRIER_MARK, 8))
        kernel_fatal(&t, "%s: the mbarrier object at shared 0x%x was overwritten by an ordinary store (9.7.13.15.3: only mbarrier "
                     "instructions may access it until mbarrier.inval)", what, shared_of(bar));
    shared_access(t, bar, 8, false);  // ordered after the init (a barrier between, as 9.7.13.15.9's examples)
    return it->second;
}

void land(TmaTransfer* x) {
    for (size_t i = 0; i < x->chunks.size(); i++) memcpy(x->chunks[i], &x->data[16 * i], 16);
    for (unsigned char* c : x->chunks) land_async(c, 16);
    delete x;
}

// 9.7.13.15.6: the phase completes when no arrival is pending and the tx-count is 0; the TMA bytes tracked by
// it land now; waiting threads re-check their parity
void maybe_complete(Block& b, State& s, uint64_t* bar, MBarrier& m) {
    if (m.pending != 0 || m.tx != 0) return;
    for (TmaTransfer* x : m.done) land(x);
    m.done.clear();
    m.phase++;
    m.pending = m.expected;
    memcpy(m.completed, m.join, sizeof m.completed);
    m.observed = false;
    for (int i = 0; i < b.threads; i++)
        if (s.thread[i].wait_bar == bar && b.thread[i].status == BLOCKED) make_runnable(b, i);
}

// complete-tx (9.7.13.15.5.2) of a transfer
void complete_transfer(Block& b, State& s, uint64_t* bar, MBarrier& m, TmaTransfer* x) {
    m.tx -= x->bytes;
    if (m.tx < -((1 << 20) - 1))
        kernel_fatal(nullptr, "the TMA transfers on the mbarrier at shared 0x%x completed %lld bytes more than expect_tx announced "
                     "(tx-count below -(2^20 - 1), 9.7.13.15.2)", shared_of(bar), (long long)-m.tx);
    for (int u = 0; u < b.warps; u++) m.join[u] = std::max(m.join[u], x->vc[u]);
    m.done.push_back(x);
    maybe_complete(b, s, bar, m);
}

// the engine's async-unit hook: no CUDA thread can run. The mbarrier with the oldest transfer in flight gets all
// of its transfers completed; false when there were none (the engine then reports the deadlock, and the waits
// are described as they stand)
bool tma_progress(Block& b) {
    State& s = state(b);
    uint64_t* oldest = nullptr;
    uint64_t order = ~0ull;
    for (auto& kv : s.bars)
        if (!kv.second.in_flight.empty() && kv.second.in_flight.front()->order < order) {
            order = kv.second.in_flight.front()->order;
            oldest = (uint64_t*)kv.first;
        }
    if (oldest) {
        MBarrier& m = s.bars[(uintptr_t)oldest];
        std::vector<TmaTransfer*> list;
        list.swap(m.in_flight);
        for (TmaTransfer* x : list) complete_transfer(b, s, oldest, m, x);
        return true;
    }
    for (int i = 0; i < b.threads; i++) {
        ThreadState& ts = s.thread[i];
        if (!ts.wait_bar || b.thread[i].status != BLOCKED) continue;
        ts.waiting = describe_wait(ts.wait_bar, ts.wait_parity, s.bars[(uintptr_t)ts.wait_bar]);
        b.thread[i].waiting_at = ts.waiting.c_str();
    }
    return false;
}

void block_end(Block& b) {
    State& s = state(b);
    for (auto& kv : s.bars) {
        const MBarrier& m = kv.second;
        char text[256];
        if (!m.in_flight.empty() || !m.done.empty())
            kernel_fatal(nullptr, "the block ended with TMA transfers into its shared memory never completed on %s: no thread waited "
                         "for that phase (mbarrier.try_wait), or expect_tx announced more bytes than were loaded",
                         describe_bar(text, sizeof text, (uint64_t*)kv.first, m));
    }
    for (int i = 0; i < b.threads; i++)
        if (!s.thread[i].accumulators.empty())
            kernel_fatal(&b.thread[i], "exited with wgmma.mma_async results in flight: no wgmma.wait_group retired their group "
                         "(9.7.15.7.3)");
    reset(s, b);
}

struct Registration {
    Registration() { register_async_unit(tma_progress, block_end); }
} registration;

}  // namespace

void mbarrier_init(uint64_t* bar, uint32_t count) {
    CudaThread& t = current_thread();
    Block& b = current_block();
    State& s = state(b);
    if (((uintptr_t)bar & 7) || !is_shared(bar, 8))
        kernel_fatal(&t, "mbarrier.init: address %p is not 8-byte aligned shared memory (9.7.13.15.1)", (void*)bar);
    if (count < 1 || count > (1u << 20) - 1) kernel_fatal(&t, "mbarrier.init with count %u outside [1, 2^20 - 1] (9.7.13.15.9)", count);
    MBarrier& m = s.bars[(uintptr_t)bar];
    if (m.valid)
        kernel_fatal(&t, "mbarrier.init on shared 0x%x, which holds a valid mbarrier (initialized by thread %d, phase %u): undefined "
                     "without mbarrier.inval first (9.7.13.15.9)", shared_of(bar), m.init_thread, m.phase);
    shared_access(t, bar, 8, true);
    memcpy(bar, &MBARRIER_MARK, 8);
    m = MBarrier();
    m.valid = true;
    m.init_thread = t.linear;
    m.expected = m.pending = count;
    memset(m.join, 0, sizeof m.join);
    memset(m.completed, 0, sizeof m.completed);
}

void fence_mbarrier_init() {
    CudaThread& t = current_thread();
    State& s = state(current_block());
    for (auto& kv : s.bars)
        if (kv.second.init_thread == t.linear) kv.second.init_visible = true;
}

// fence.proxy.async: the generic proxy's prior accesses (an mbarrier.init included) ordered before the async
// proxy's. Shared-memory data written by ordinary stores and read by wgmma or TMA is not tracked by proxy (the
// kernels here read only TMA-written tiles): such a missing fence is not detected.
void fence_proxy_async() { fence_mbarrier_init(); }

void mbarrier_arrive(uint64_t* bar, uint32_t expect_tx_bytes, bool expect_tx) {
    CudaThread& t = current_thread();
    Block& b = current_block();
    State& s = state(b);
    const char* what = expect_tx ? "mbarrier.arrive.expect_tx" : "mbarrier.arrive";
    MBarrier& m = lookup(t, s, bar, what);
    if (!m.observed)
        kernel_fatal(&t, "%s on the mbarrier at shared 0x%x in phase %u before any thread's mbarrier.try_wait observed phase %u "
                     "complete (9.7.13.15.4)", what, shared_of(bar), m.phase, m.phase - 1);
    if (expect_tx) {  // expect-tx first, then arrive-on (9.7.13.15.13)
        m.tx += expect_tx_bytes;
        if (m.tx > (1 << 20) - 1)
            kernel_fatal(&t, "%s of %u bytes: the tx-count %lld exceeds 2^20 - 1 (9.7.13.15.2)", what, expect_tx_bytes, (long long)m.tx);
    }
    if (m.pending == 0)
        kernel_fatal(&t, "%s on the mbarrier at shared 0x%x: more arrivals in phase %u than its expected count %u (9.7.13.15.2)", what,
                     shared_of(bar), m.phase, m.expected);
    release(b, t, m.join);
    m.pending--;
    maybe_complete(b, s, bar, m);
}

bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
    CudaThread& t = current_thread();
    Block& b = current_block();
    State& s = state(b);
    ThreadState& ts = s.thread[t.linear];
    for (;;) {
        MBarrier& m = lookup(t, s, bar, "mbarrier.try_wait.parity");
        // 9.7.13.15.16: true when the phase of this parity (the current one or the one before it) has completed
        if ((m.phase & 1) != (parity & 1)) {
            acquire(b, t, m.completed);
            m.observed = true;
            ts.wait_bar = nullptr;
            return true;
        }
        ts.wait_bar = bar;
        ts.wait_parity = parity;
        ts.waiting = describe_wait(bar, parity, m);
        block_current_thread(ts.waiting.c_str());
    }
}

uint64_t globaltimer() {
    return (uint64_t)std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ----------------------------------------------------------------------------
// TMA: cp.async.bulk.tensor, global -> shared, tile mode, mbarrier::complete_tx::bytes (9.7.9.25.5.2)

// the swizzle of a shared-memory byte address (5.5.7; CUTLASS's Swizzle<B, 4, 3>): bits 4 .. 4 + B - 1 ^= bits
// 7 .. 7 + B - 1, B = 3, 2, 1 for the 128-, 64-, 32-byte modes
static uint32_t swizzle_address(uint32_t address, int span) {
    if (span <= 16) return address;
    uint32_t mask = (uint32_t)(span / 16 - 1);
    return address ^ (((address >> 7) & mask) << 4);
}

void cp_async_bulk_tensor_load(int dims, void* smem, const CUtensorMap* map, uint64_t* bar, const int32_t* coords) {
    CudaThread& t = current_thread();
    Block& b = current_block();
    State& s = state(b);
    TensorMapFields f;
    memcpy(&f, map, sizeof f);
    if (f.magic != TENSOR_MAP_MAGIC)
        kernel_fatal(&t, "cp.async.bulk.tensor: the tensor map at %p was not made by cuTensorMapEncodeTiled (5.5.8)", (const void*)map);
    if (dims != f.rank) kernel_fatal(&t, "cp.async.bulk.tensor.%dd with a tensor map of rank %d", dims, f.rank);
    MBarrier& m = lookup(t, s, bar, "cp.async.bulk.tensor's mbarrier");
    if (!m.init_visible)
        kernel_fatal(&t, "cp.async.bulk.tensor completes on the mbarrier at shared 0x%x, whose mbarrier.init was not made visible to the "
                     "async proxy (fence.mbarrier_init.release.cluster or fence.proxy.async by thread %d after the init)",
                     shared_of(bar), m.init_thread);
    for (int i = 1; i < f.rank; i++)
        if (f.element_strides[i] != 1) kernel_fatal(&t, "cp.async.bulk.tensor: element strides other than 1 are not emulated");
    const int eb = f.element_bytes;
    const int span = f.swizzle == CU_TENSOR_MAP_SWIZZLE_32B ? 32 : f.swizzle == CU_TENSOR_MAP_SWIZZLE_64B ? 64
                   : f.swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 128 : 0;
    const uint32_t row_bytes = f.box[0] * eb;
    if (span && row_bytes != (uint32_t)span)
        kernel_fatal(&t, "cp.async.bulk.tensor: a %u-byte box row with the %d-byte swizzle is not emulated (rows of exactly the swizzle "
                     "span are)", row_bytes, span);
    // 5.5.7: a swizzle pattern repeats every 8 rows of the span from an aligned start; unswizzled: 128 bytes
    const uint32_t align = span ? 8 * span : 128;
    uint32_t rows = 1;
    for (int i = 1; i < f.rank; i++) rows *= f.box[i];
    const uint32_t bytes = rows * row_bytes;
    if (!is_shared(smem, bytes) || shared_of(smem) % align)
        kernel_fatal(&t, "cp.async.bulk.tensor: destination %p (%u bytes) is not %u-byte aligned shared memory (5.5.7, 9.7.9.25.5.2)",
                     smem, bytes, align);
    TmaTransfer* x = new TmaTransfer;
    x->issuer = t.linear;
    x->order = s.transfers++;
    x->bytes = bytes;
    memcpy(x->vc, b.warp[t.warp].vc, sizeof x->vc);
    x->chunks.reserve(bytes / 16);
    x->data.resize(bytes);
    const uint32_t base = shared_of(smem);
    const unsigned char* global = (const unsigned char*)(uintptr_t)f.address;
    for (uint32_t r = 0; r < rows; r++) {
        // the row's coordinates in dimensions 1 ..; rows outside the tensor are zeros (5.5.3.3)
        bool inside = true;
        uint64_t offset = 0;
        uint32_t rest = r;
        for (int d = 1; d < f.rank; d++) {
            int64_t c = (int64_t)coords[d] + rest % f.box[d];
            rest /= f.box[d];
            if (c < 0 || c >= (int64_t)f.dims[d]) inside = false;
            else offset += (uint64_t)c * f.strides[d - 1];
        }
        int64_t lo = std::max<int64_t>(coords[0], 0), hi = std::min<int64_t>((int64_t)coords[0] + f.box[0], (int64_t)f.dims[0]);
        if (inside && lo < hi && !is_device_memory(global + offset + lo * eb, (size_t)(hi - lo) * eb))
            kernel_fatal(&t, "cp.async.bulk.tensor: row %u of the box (%lld bytes at %p) is outside every device allocation: the tensor "
                         "map's address, dimensions or strides do not describe the tensor", r, (long long)(hi - lo) * eb,
                         (const void*)(global + offset + lo * eb));
        for (uint32_t c = 0; c < row_bytes / 16; c++) {
            unsigned char* data = &x->data[(size_t)(r * row_bytes / 16 + c) * 16];
            const int64_t x_first = (int64_t)coords[0] + c * (16 / eb);
            if (inside && x_first >= 0 && x_first + 16 / eb <= (int64_t)f.dims[0]) memcpy(data, global + offset + x_first * eb, 16);
            else for (int e = 0; e < 16 / eb; e++) {
                int64_t x0 = (int64_t)coords[0] + c * (16 / eb) + e;
                if (inside && x0 >= 0 && x0 < (int64_t)f.dims[0]) memcpy(data + e * eb, global + offset + x0 * eb, eb);
                else memset(data + e * eb, 0, eb);
            }
            unsigned char* dst = (unsigned char*)generic_address(swizzle_address(base + r * row_bytes + c * 16, span));
            shared_access(t, dst, 16, true, true);
            poison(dst, 16);  // until its phase completes
            x->chunks.push_back(dst);
        }
    }
    m.in_flight.push_back(x);
}

// ----------------------------------------------------------------------------
// wgmma (9.7.15)

namespace {

enum { KIND_FENCE = 1, KIND_COMMIT = 2, KIND_WAIT = 100, KIND_MMA = 1000, KIND_SETMAXNREG = 2000 };

const uint32_t POISON_BITS = 0x7fff7fffu;  // poison() on a 4-byte aligned float: a NaN

float bf16_value(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// the accumulator layout of m64nNk16 (9.7.15.5.1.1): thread t of the warpgroup, register i
int acc_row(int t, int i) { return 16 * (t / 32) + (t % 32) / 4 + 8 * ((i / 2) % 2); }
int acc_col(int t, int i) { return 8 * (i / 4) + 2 * (t % 4) + i % 2; }

// The shared address of bf16 element (r, k) (r: M or N, k: K) of a wgmma operand, from the descriptor's start,
// LBO, SBO and swizzle bytes W (0: none): the canonical layouts of 9.7.15.5.1.2.1.3 (T = 8 bf16 per 16 bytes),
// the swizzle applied to the summed address:
//   K-major, swizzled:  (r % 8) W + (r / 8) SBO + 2 k
//   MN-major, swizzled: 2 (r % (W/2)) + (r / (W/2)) LBO + (k % 8) W + (k / 8) SBO
//   K-major, none:      (r % 8) 16 + (r / 8) SBO + 2 (k % 8) + (k / 8) LBO
//   MN-major, none:     2 (r % 8) + (r / 8) SBO + (k % 8) 16 + (k / 8) LBO
uint32_t operand_address(uint32_t start, uint32_t lbo, uint32_t sbo, int W, bool mn_major, int r, int k) {
    uint32_t logical;
    if (W) logical = mn_major ? start + 2 * (r % (W / 2)) + (r / (W / 2)) * lbo + (k % 8) * W + (k / 8) * sbo
                              : start + (r % 8) * W + (r / 8) * sbo + 2 * k;
    else logical = mn_major ? start + 2 * (r % 8) + (r / 8) * sbo + (k % 8) * 16 + (k / 8) * lbo
                            : start + (r % 8) * 16 + (r / 8) * sbo + 2 * (k % 8) + (k / 8) * lbo;
    return swizzle_address(logical, W);
}

// An operand of `rows` (M or N) x 16 (K) bf16 in shared memory through a matrix descriptor (9.7.15.5.1.2.2),
// element (r, k) into out[r][k], read 16 bytes (8 elements along the contiguous dimension) at a time; each chunk
// read is appended to chunks.
void read_operand(CudaThread& t, uint64_t desc, int rows, bool mn_major, double (*out)[16], std::vector<const void*>& chunks,
                  const char* which) {
    const uint32_t start = (uint32_t)(desc & 0x3fff) << 4, lbo = (uint32_t)((desc >> 16) & 0x3fff) << 4,
                   sbo = (uint32_t)((desc >> 32) & 0x3fff) << 4, base_offset = (uint32_t)((desc >> 49) & 7),
                   mode = (uint32_t)(desc >> 62);
    if (desc & 0x3ff1c000c000c000ull)
        kernel_fatal(&t, "wgmma.mma_async: %s descriptor 0x%016llx sets reserved bits (9.7.15.5.1.2.2)", which, (unsigned long long)desc);
    const int W = mode == 1 ? 128 : mode == 2 ? 64 : mode == 3 ? 32 : 0;
    if (W) {
        if (base_offset) kernel_fatal(&t, "wgmma.mma_async: %s descriptor with a base offset: not emulated", which);
        int row_bits = W == 128 ? 7 : W == 64 ? 6 : 5;
        if ((start >> row_bits) & 7)
            kernel_fatal(&t, "wgmma.mma_async: %s matrix starts at row %u of its %d-byte swizzle pattern (shared 0x%x) while the "
                         "descriptor's base offset is 0 (9.7.15.5.1.2.2)", which, (start >> row_bits) & 7, 8 * W, start);
        if (!mn_major && (start % W) + 32 > (uint32_t)W)
            kernel_fatal(&t, "wgmma.mma_async: %s K-major k-slice (32 bytes at byte %u of a %d-byte row) crosses the swizzle row", which,
                         start % W, W);
    }
    const uint32_t limit = (uint32_t)current_block().launch->dynamic_smem;
    auto read_chunk = [&](uint32_t physical, double* dst, int stride) {
        if (physical + 16 > limit)
            kernel_fatal(&t, "wgmma.mma_async: %s descriptor (start 0x%x, LBO %u, SBO %u) reads shared 0x%x, past the launch's %u bytes of "
                         "dynamic shared memory", which, start, lbo, sbo, physical, limit);
        const void* p = generic_address(physical);
        shared_access(t, p, 16, false);
        chunks.push_back(p);
        uint16_t v[8];
        memcpy(v, p, 16);
        for (int e = 0; e < 8; e++) dst[e * stride] = bf16_value(v[e]);
    };
    double column[8];
    if (!mn_major) {
        for (int r = 0; r < rows; r++)
            for (int kc = 0; kc < 2; kc++) read_chunk(operand_address(start, lbo, sbo, W, false, r, 8 * kc), &out[r][8 * kc], 1);
    } else {
        for (int k = 0; k < 16; k++)
            for (int rc = 0; rc < rows / 8; rc++) {
                read_chunk(operand_address(start, lbo, sbo, W, true, 8 * rc, k), column, 1);
                for (int e = 0; e < 8; e++) out[8 * rc + e][k] = column[e];
            }
    }
}

void complete_fence(Block& b, int g) { state(b).warpgroup[g].fenced = true; }
void complete_commit(Block& b, int g) { state(b).warpgroup[g].next_group++; }

void complete_wait(Block& b, int g) {
    State& s = state(b);
    WarpgroupState& wg = s.warpgroup[g];
    const int pending = s.thread[128 * g].n;  // wait_group's N
    const int newest_retired = wg.next_group - 1 - pending;
    for (int i = 128 * g; i < 128 * (g + 1); i++) {
        ThreadState& ts = s.thread[i];
        size_t kept = 0;
        for (PendingAccumulator& p : ts.accumulators) {
            if (p.group > newest_retired) { ts.accumulators[kept++] = p; continue; }
            for (int r = 0; r < p.regs; r++) {
                uint32_t bits;
                memcpy(&bits, &p.d[r], 4);
                if (bits != POISON_BITS)
                    kernel_fatal(&b.thread[i], "wrote accumulator register %d of a wgmma.mma_async in flight before the wgmma.wait_group "
                                 "that retires it (9.7.15.7.3)", r);
            }
            memcpy(p.d, p.value, sizeof(float) * p.regs);
        }
        ts.accumulators.resize(kept);
        kept = 0;
        for (PendingFragment& f : ts.fragments) {
            if (f.group > newest_retired) { ts.fragments[kept++] = f; continue; }
            if (memcmp(f.a, f.copy, sizeof f.copy))
                kernel_fatal(&b.thread[i], "changed the register A fragment of a wgmma.mma_async in flight before the wgmma.wait_group that "
                             "retires it (9.7.15.7.3)");
        }
        ts.fragments.resize(kept);
    }
    // the operands were read until now: reads of the retired groups seen again by the race tracker (a TMA or a
    // store into them before this wait is a race)
    CudaThread& first = b.thread[128 * g];
    size_t kept = 0;
    for (OperandReads& r : wg.reads) {
        if (r.group > newest_retired) { wg.reads[kept++] = std::move(r); continue; }
        for (const void* p : r.chunks) shared_access(first, p, 16, false);
    }
    wg.reads.resize(kept);
    wg.fenced = false;
}

void complete_mma(Block& b, int g) {
    State& s = state(b);
    WarpgroupState& wg = s.warpgroup[g];
    ThreadState* ts = &s.thread[128 * g];
    CudaThread& first = b.thread[128 * g];
    const ThreadState& op = ts[0];
    for (int i = 1; i < 128; i++)
        if (ts[i].desc_b != op.desc_b || (!op.a && ts[i].desc_a != op.desc_a) || ts[i].scale_d != op.scale_d ||
            ts[i].scale_a != op.scale_a || ts[i].scale_b != op.scale_b || ts[i].trans_a != op.trans_a || ts[i].trans_b != op.trans_b)
            kernel_fatal(&b.thread[128 * g + i], "wgmma.mma_async with operands (descriptors, scale-d, transposes) that differ from "
                         "thread %d's: they must be the same across the warpgroup (9.7.15.5.2)", 128 * g);
    if (!wg.fenced)
        kernel_fatal(&first, "wgmma.mma_async without a wgmma.fence since the warpgroup's last wgmma.wait_group (or start): the fence "
                     "must order its earlier register accesses before the first wgmma.mma_async (9.7.15.7.1)");
    const int n = op.n;
    double A[64][16], B[128][16];  // A (m, k); B stored (n, k): 24 KiB of the fiber's 256 KiB stack
    OperandReads reads;
    reads.group = wg.next_group;
    if (op.a) {
        // register A (9.7.15.5.1.1): a[j / 2] holds elements j, j + 1 (low half first) at row g8 + 8 ((j / 2) % 2),
        // column 2 (t % 4) + j % 2 + 8 (j / 4), g8 = 16 (t / 32) + (t % 32) / 4
        for (int t = 0; t < 128; t++)
            for (int j = 0; j < 8; j++) {
                uint32_t reg = ts[t].a[j / 2];
                uint16_t bits = (uint16_t)(j % 2 ? reg >> 16 : reg & 0xffff);
                A[16 * (t / 32) + (t % 32) / 4 + 8 * ((j / 2) % 2)][2 * (t % 4) + j % 2 + 8 * (j / 4)] = bf16_value(bits);
            }
    } else {
        read_operand(first, op.desc_a, 64, op.trans_a, A, reads.chunks, "the A");
    }
    read_operand(first, op.desc_b, n, op.trans_b, B, reads.chunks, "the B");
    const double sign = (double)(op.scale_a * op.scale_b);
    for (int t = 0; t < 128; t++) {
        ThreadState& th = ts[t];
        const int regs = n / 2;
        PendingAccumulator* p = nullptr;
        for (PendingAccumulator& q : th.accumulators)
            if (q.d == th.d) p = &q;
        if (p && p->regs != regs)
            kernel_fatal(&b.thread[128 * g + t], "wgmma.mma_async of n = %d on accumulator registers in flight for one of n = %d "
                         "(only the same shape is ordered implicitly, 9.7.15.7.1)", n, 2 * p->regs);
        float out[64];
        for (int i = 0; i < regs; i++) {
            int row = acc_row(t, i), col = acc_col(t, i);
            double sum = !op.scale_d ? 0.0 : p ? (double)p->value[i] : (double)th.d[i];
            for (int k = 0; k < 16; k++) sum += sign * A[row][k] * B[col][k];
            out[i] = (float)sum;  // the 16 products are exact; summed in double and rounded once (hardware may differ)
        }
        if (!p) {
            th.accumulators.emplace_back();
            p = &th.accumulators.back();
            p->d = th.d;
            p->regs = regs;
        }
        memcpy(p->value, out, sizeof(float) * regs);
        p->group = wg.next_group;
        poison(th.d, sizeof(float) * regs);  // NaN until the wgmma.wait_group that retires this group
        if (th.a) {
            PendingFragment f;
            f.a = th.a;
            memcpy(f.copy, th.a, sizeof f.copy);
            f.group = wg.next_group;
            th.fragments.push_back(f);
        }
    }
    wg.reads.push_back(std::move(reads));
}

const char* wait_name(int n) {
    static const char* names[] = {"wgmma.wait_group 0", "wgmma.wait_group 1", "wgmma.wait_group 2", "wgmma.wait_group 3",
                                  "wgmma.wait_group 4", "wgmma.wait_group 5", "wgmma.wait_group 6", "wgmma.wait_group 7"};
    return n >= 0 && n < 8 ? names[n] : "wgmma.wait_group N";
}

void complete_setmaxnreg(Block& b, int g) {
    State& s = state(b);
    WarpgroupState& wg = s.warpgroup[g];
    const ThreadState& op = s.thread[128 * g];
    CudaThread& first = b.thread[128 * g];
    if (wg.registers && op.increase && op.registers < wg.registers)
        kernel_fatal(&first, "setmaxnreg.inc %d below the warpgroup's current %d registers (9.7.19.5)", op.registers, wg.registers);
    if (wg.registers && !op.increase && op.registers > wg.registers)
        kernel_fatal(&first, "setmaxnreg.dec %d above the warpgroup's current %d registers (9.7.19.5)", op.registers, wg.registers);
    wg.registers = op.registers;
    int total = 0, groups = b.threads / 128;
    for (int i = 0; i < groups; i++) {
        if (!s.warpgroup[i].registers) return;  // some warpgroup still holds the launch's (unknown here) count
        total += 128 * s.warpgroup[i].registers;
    }
    if (total > 65536)
        kernel_fatal(&first, "setmaxnreg: the block's %d warpgroups would hold %d registers, more than an SM's 65536: setmaxnreg.inc "
                     "waits forever for them (9.7.19.5)", groups, total);
}

}  // namespace

void wgmma_fence() { warpgroup_collective(KIND_FENCE, "wgmma.fence", complete_fence); }
void wgmma_commit_group() { warpgroup_collective(KIND_COMMIT, "wgmma.commit_group", complete_commit); }
void wgmma_wait_group(int pending_groups) {
    CudaThread& t = current_thread();
    if (pending_groups < 0 || pending_groups > 7) kernel_fatal(&t, "wgmma.wait_group %d: N outside [0, 7] is not emulated", pending_groups);
    state(current_block()).thread[t.linear].n = pending_groups;
    warpgroup_collective(KIND_WAIT + pending_groups, wait_name(pending_groups), complete_wait);
}

void wgmma_m64k16_bf16(float* d, int n, const uint32_t* a_regs, uint64_t desc_a, uint64_t desc_b, bool scale_d, int scale_a, int scale_b,
                       bool trans_a, bool trans_b) {
    CudaThread& t = current_thread();
    if (n % 8 || n < 8 || n > 128) kernel_fatal(&t, "wgmma.mma_async m64n%dk16: N must be a multiple of 8 in [8, 128] here", n);
    if ((scale_a != 1 && scale_a != -1) || (scale_b != 1 && scale_b != -1))
        kernel_fatal(&t, "wgmma.mma_async: imm-scale-a/b must be 1 or -1 (9.7.15.5.2)");
    if (a_regs && trans_a) kernel_fatal(&t, "wgmma.mma_async: imm-trans-a applies to an A from shared memory only (9.7.15.5.2)");
    ThreadState& ts = state(current_block()).thread[t.linear];
    ts.d = d;
    ts.n = n;
    ts.a = a_regs;
    ts.desc_a = desc_a;
    ts.desc_b = desc_b;
    ts.scale_d = scale_d;
    ts.scale_a = scale_a;
    ts.scale_b = scale_b;
    ts.trans_a = trans_a;
    ts.trans_b = trans_b;
    static const char* names[] = {"wgmma.mma_async (A from shared memory)", "wgmma.mma_async (A from registers)"};
    warpgroup_collective(KIND_MMA + 2 * n + (a_regs ? 1 : 0), names[a_regs ? 1 : 0], complete_mma);
}

void setmaxnreg(bool increase, int registers) {
    CudaThread& t = current_thread();
    if (registers % 8 || registers < 24 || registers > 256)
        kernel_fatal(&t, "setmaxnreg.%s %d: the count must be a multiple of 8 in [24, 256] (9.7.19.5)", increase ? "inc" : "dec", registers);
    ThreadState& ts = state(current_block()).thread[t.linear];
    ts.increase = increase;
    ts.registers = registers;
    // the kind carries the action and count: threads of one warpgroup executing different ones are reported
    struct Names {
        std::string text[2][33];
        Names() {
            for (int inc = 0; inc < 2; inc++)
                for (int n = 0; n <= 256; n += 8) text[inc][n / 8] = std::string("setmaxnreg.") + (inc ? "inc" : "dec") + ".sync.aligned.u32 " + std::to_string(n);
        }
    };
    static const Names names;  // made once (thread-safe static initialization): blocks run on several workers
    warpgroup_collective(KIND_SETMAXNREG + 2 * registers + (increase ? 1 : 0), names.text[increase][registers / 8].c_str(), complete_setmaxnreg);
}

// the address math above, for tests/hopper_addresses.cpp's cross-check against dev/cuda/hopper_emulator.py
uint32_t wgmma_operand_address(uint32_t start, uint32_t lbo, uint32_t sbo, int swizzle_bytes, bool mn_major, int r, int k) {
    return operand_address(start, lbo, sbo, swizzle_bytes, mn_major, r, k);
}
uint32_t tma_swizzled_address(uint32_t address, int swizzle_bytes) { return swizzle_address(address, swizzle_bytes); }

}  // namespace mst_cpu

// ----------------------------------------------------------------------------
// the driver's entry points, as the runtime hands them out (no libcuda on the CPU device)

extern "C" {
cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** function, unsigned int, unsigned long long,
                                             cudaDriverEntryPointQueryResult* status) {
    if (symbol && !strcmp(symbol, "cuTensorMapEncodeTiled")) {
        *function = (void*)&mst_cpu::encode_tiled;
        if (status) *status = cudaDriverEntryPointSuccess;
        return cudaSuccess;
    }
    *function = nullptr;
    if (status) *status = cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}
cudaError_t cudaGetDriverEntryPoint(const char* symbol, void** function, unsigned long long flags, cudaDriverEntryPointQueryResult* status) {
    return cudaGetDriverEntryPointByVersion(symbol, function, CUDART_VERSION, flags, status);
}
}
