// test_parallel: the CPU reference split across MPI ranks (mst/reference_parallel.h) against the one-rank
// reference (mst/llama_reference.h), and the collectives of mst/comm.h. Run with 4 ranks:
//   OMP_NUM_THREADS=1 mpirun --oversubscribe -np 4 ./test_parallel
// Configurations of P = 2 ranks run in two groups of 2 side by side. A check passes only if it passes on
// every rank; rank 0 alone prints failures and the closing line.
// Seen to fail under deliberate bugs, then restored: RoPE by local instead of global positions (every
// Ulysses check fails), a replicated KV head's gradient overwritten instead of summed (the loss, gradient
// and weight checks of exactly the three splits with replication fail).
#include <cstdio>
#include <random>

#include "mst/reference_parallel.h"
#include "tests/test_util.h"

static Comm world;

// the check on every rank; counted (and printed) once, by rank 0
static bool check_all(bool ok, const char* name) {
    double failures = comm_sum_scalar(world, ok ? 0.0 : 1.0);
    if (world.rank == 0) check(failures == 0, name);
    return failures == 0;
}

// ----------------------------------------------------------------------------
// the collectives

static void test_collectives() {
    int P = world.size, r = world.rank;
    size_t count = 3;
    // all-to-all: element i of the block from q to r is 1000 q + 10 r + i
    std::vector<float> send(P * count), recv(P * count);
    for (int j = 0; j < P; j++)
        for (size_t i = 0; i < count; i++) send[j * count + i] = 1000.f * r + 10.f * j + i;
    comm_all_to_all(world, send.data(), recv.data(), count, COMM_F32);
    bool ok = true;
    for (int q = 0; q < P; q++)
        for (size_t i = 0; i < count; i++) ok &= recv[q * count + i] == 1000.f * q + 10.f * r + i;
    check_all(ok, "MPI all-to-all: block j of rank q arrives as block q on rank j");

    std::vector<float> mine = {(float)r, 2.f * r, 3.f * r}, gathered(P * count);
    comm_all_gather(world, mine.data(), gathered.data(), count, COMM_F32);
    ok = true;
    for (int q = 0; q < P; q++)
        for (size_t i = 0; i < count; i++) ok &= gathered[q * count + i] == (i + 1.f) * q;
    check_all(ok, "MPI all-gather");

    // fixed order: rank q contributes c[q]; in float ((1e8 + 1) - 1e8) + 1 = 1, another order gives 0 or 2
    const float c[4] = {1e8f, 1.f, -1e8f, 1.f};
    float left_to_right = c[0];
    for (int q = 1; q < P; q++) left_to_right += c[q % 4];
    float x = c[r % 4], sum = -1.f;
    comm_all_reduce(world, &x, &sum, 1, COMM_F32);
    check_all(sum == left_to_right, "MPI all-reduce sums in rank order, the same bits on every rank");
    std::vector<float> blocks(P, c[r % 4]);
    float part = -1.f;
    comm_reduce_scatter(world, blocks.data(), &part, 1, COMM_F32);
    check_all(part == left_to_right, "MPI reduce-scatter sums in rank order");

    double value = r == 1 ? 42.5 : 0.0;
    comm_broadcast(world, &value, 1, COMM_F64, 1);
    check_all(value == 42.5, "MPI broadcast from rank 1");

    Comm single = comm_single();
    float a[3] = {1, 2, 3}, b[3] = {0, 0, 0};
    comm_all_to_all(single, a, b, 3, COMM_F32);
    bool single_ok = b[0] == 1 && b[2] == 3;
    comm_all_reduce(single, a, a, 3, COMM_F32);
    single_ok &= a[1] == 2 && comm_sum_scalar(single, 2.5) == 2.5;
    check_all(single_ok, "single-rank backend: copies, nothing in place");
}

// ----------------------------------------------------------------------------
// the model split across ranks

static void fill_normal(std::vector<float>& x, std::mt19937& rng, float std) {
    std::normal_distribution<float> normal(0.f, std);
    for (float& v : x) v = normal(rng);
}

static ReferenceModel random_model(const ModelConfig& config, unsigned seed) {
    ReferenceModel m = reference_model(config);
    std::mt19937 rng(seed);
    fill_normal(m.params, rng, 0.05f);
    for (const ParameterTensor& t : parameter_tensors(config))
        if (t.rows == 1)  // norm weights around 1
            for (size_t i = 0; i < t.cols; i++) m.params[t.offset + i] += 1.f;
    return m;
}

// largest |a - b| over [begin, end) of each tensor, relative to the tensor's largest |b|; the worst tensor
static double worst_relative_error(const ModelConfig& config, const float* a, const float* b, size_t begin, size_t end,
                                   const float* reference_full) {
    double worst = 0.0;
    for (const ParameterTensor& t : parameter_tensors(config)) {
        size_t count = t.rows * t.cols, from = std::max(begin, t.offset), to = std::min(end, t.offset + count);
        double scale = 0.0, diff = 0.0;
        for (size_t i = 0; i < count; i++) scale = std::max(scale, (double)fabsf(reference_full[t.offset + i]));
        for (size_t i = from; i < to; i++) {
            double d = fabs((double)a[i - begin] - b[i]);
            diff = std::isnan(d) ? INFINITY : std::max(diff, d);
        }
        if (to > from) worst = std::max(worst, scale > 0 ? diff / scale : diff);
    }
    return worst;
}

struct Case {
    const char* name;
    ModelConfig config;
    int S, D, B, T;
};

// Tolerances. Where only data moves (forward logits: every token's arithmetic is the one-rank arithmetic,
// in the same order) and in ZeRO-1's sharded AdamW given the same gradient: equal bits. Where a sum is
// split (a weight gradient summed over ranks' tokens, a replicated KV head's dk and dv summed over the
// ranks that share it, the norm over shards) the order of fp32 additions changes: each order is within
// (n - 1) u sum|terms| of the exact sum (u = 6e-8), and attention's dk, dv terms cancel (softmax
// gradients), so sum|terms| can be tens of times the result. Measured worst, relative to each tensor's
// largest gradient: 1.3e-5 (test-heads, S = 4, replicated KV), 1e-6 to 5e-6 elsewhere; weights after 3
// AdamW steps (lr 1e-3) differ by at most 9e-6. The tolerances, 1e-4 for gradients (test_reference's for
// the golden gradients) and 1e-4 for weights (a tenth of one lr-sized update), leave room for other
// compilers and thread counts; a real error (a head or position mixed up, a lost contribution) is of the
// order of the gradient itself, and a perturbation of 10 x the tolerance is shown to fail below.
static const double GRAD_TOLERANCE = 1e-4, WEIGHT_TOLERANCE = 1e-4, LOSS_TOLERANCE = 1e-6;

static void run_case(const Case& c) {
    int P = c.S * c.D;
    Comm group = comm_split(world, world.rank / P, world.rank % P);
    ParallelRanks p = parallel_ranks(group, c.S, c.config);
    char name[256];
    auto label = [&](const char* what) {
        snprintf(name, sizeof(name), "%s (S=%d D=%d B=%d T=%d): %s", c.name, c.S, c.D, c.B, c.T, what);
        return name;
    };

    // a batch with some ignored targets (never all of one rank's)
    std::mt19937 rng(1234);
    std::vector<int> inputs((size_t)c.B * c.T), targets((size_t)c.B * c.T);
    for (size_t i = 0; i < inputs.size(); i++) {
        inputs[i] = rng() % c.config.vocab_size;
        targets[i] = (i % 7 == 3) ? -1 : (int)(rng() % c.config.vocab_size);
    }
    std::vector<int> local_inputs, local_targets;
    parallel_local_batch(p, inputs.data(), targets.data(), c.B, c.T, local_inputs, local_targets);
    ReferenceModel one = random_model(c.config, 7), split = random_model(c.config, 7);
    size_t total = one.layout.total, begin = shard_begin(p, total), end = shard_end(p, total);

    // forward: each rank's logits are bitwise the one-rank logits of its tokens
    int V = c.config.vocab_size, Bl = c.B / c.D, Tl = mini_sequence_length(c.T, c.S);
    std::vector<float> logits_one((size_t)c.B * c.T * V), logits_split((size_t)Bl * Tl * V);
    reference_forward_logits(one, inputs.data(), c.B, c.T, logits_one.data());
    parallel_forward_logits(split, p, c.B, c.T, local_inputs.data(), logits_split.data());
    bool same = true;
    for (int b = 0; b < Bl; b++)
        for (int t = 0; t < Tl; t++) {
            int position = p.sp_rank * Tl + t;
            if (position >= c.T) continue;
            const float* x = &logits_split[((size_t)b * Tl + t) * V];
            const float* y = &logits_one[((size_t)(p.dp_rank * Bl + b) * c.T + position) * V];
            same &= memcmp(x, y, V * sizeof(float)) == 0;
        }
    check_all(same, label("logits bitwise equal to one rank"));

    // 3 training steps: loss, summed gradients, weights
    ReferenceOptions plain, mst;
    mst.mlp_chunks = 3;
    mst.lmhead_chunks = 2;
    mst.recompute = true;
    double worst_loss = 0.0, worst_grad = 0.0;
    std::vector<float> grad_shard;
    for (int step = 0; step < 3; step++) {
        float loss_one = reference_forward_backward(one, inputs.data(), targets.data(), c.B, c.T, plain);
        float loss_split = parallel_forward_backward(split, p, local_inputs.data(), local_targets.data(), c.B, c.T,
                                                     step % 2 ? plain : mst);
        worst_loss = std::max(worst_loss, fabs((double)loss_split - loss_one) / fabs((double)loss_one));
        if (std::isnan(loss_split)) worst_loss = INFINITY;
        parallel_reduce_gradients(split, p, grad_shard);
        worst_grad = std::max(worst_grad, worst_relative_error(c.config, grad_shard.data(), one.grads.data(), begin, end,
                                                               one.grads.data()));
        if (step == 0) {  // the comparison rejects one gradient element off by 10 x the tolerance
            std::vector<float> bad = grad_shard;
            size_t i = bad.size() / 2;
            if (begin + i < end) bad[i] += 10 * GRAD_TOLERANCE * fabsf(one.grads[begin + i]) + 1e-3f;
            bool caught = begin + i >= end ||
                          worst_relative_error(c.config, bad.data(), one.grads.data(), begin, end, one.grads.data()) >
                              GRAD_TOLERANCE;
            check_all(caught, label("the gradient comparison rejects one perturbed element"));
        }
        reference_clip_gradients(one, 1.0f);
        parallel_clip_gradients(p, grad_shard, 1.0f);
        reference_adamw_step(one, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f);
        parallel_adamw_step(split, p, grad_shard, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f);
    }
    check_all(worst_loss <= LOSS_TOLERANCE, label("3 losses equal one rank's within 1e-6"));
    check_all(worst_grad <= GRAD_TOLERANCE, label("summed gradients equal one rank's within 1e-4"));
    double worst_weight = 0.0;
    for (size_t i = 0; i < total; i++) {
        double d = fabs((double)split.params[i] - one.params[i]);
        worst_weight = std::isnan(d) ? INFINITY : std::max(worst_weight, d);
    }
    check_all(worst_weight <= WEIGHT_TOLERANCE, label("weights after 3 steps equal one rank's within 1e-4"));
    if (world.rank == 0)
        printf("%s (S=%d D=%d T=%d): loss %.1e, gradients %.1e, weights %.1e\n", c.name, c.S, c.D, c.T, worst_loss,
               worst_grad, worst_weight);

    // ZeRO-1 alone moves data: from the same clipped gradient, the sharded step gives the same bits
    std::copy(one.params.begin(), one.params.end(), split.params.begin());
    for (size_t i = begin; i < end; i++) {
        p.adam_m[i - begin] = one.adam_m[i];
        p.adam_v[i - begin] = one.adam_v[i];
        grad_shard[i - begin] = one.grads[i];
    }
    reference_adamw_step(one, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f);
    parallel_adamw_step(split, p, grad_shard, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f);
    check_all(memcmp(split.params.data(), one.params.data(), total * sizeof(float)) == 0,
              label("ZeRO-1 AdamW step from the same gradient: weights bitwise equal"));
    comm_free(p.sp_group);
    comm_free(group);
}

static ModelConfig config_named(const char* name) {
    ModelConfig c;
    find_model_config(name, &c);
    return c;
}

int main(int argc, char** argv) {
    world = comm_init_mpi(&argc, &argv);
    if (world.size != 4) {
        if (world.rank == 0) fprintf(stderr, "error: test_parallel: run with 4 ranks (mpirun -np 4), got %d\n", world.size);
        MPI_Finalize();
        return 1;
    }
    test_collectives();

    // test-tiny: 2 query heads, 1 KV head (replicated at S = 2). "test-heads": 4 query heads, 2 KV heads
    // (split at S = 2, replicated at S = 4), head_dim 32. T = 13 is split unevenly (padding) by 2 and 4.
    ModelConfig tiny = config_named("test-tiny"), heads = tiny;
    snprintf(heads.name, sizeof(heads.name), "test-heads");
    heads.vocab_size = 301;
    heads.n_head = 4;
    heads.n_kv_head = 2;
    heads.ffn_dim = 200;
    const Case cases[] = {
        {"test-tiny", tiny, 2, 1, 4, 13},   // Ulysses, KV replicated, uneven T
        {"test-tiny", tiny, 1, 2, 4, 13},   // ZeRO-1 data parallel
        {"test-tiny", tiny, 2, 2, 4, 13},   // both
        {"test-tiny", tiny, 1, 4, 4, 16},
        {"test-heads", heads, 4, 1, 2, 13}, // Ulysses over 4, KV replicated, 3 padding slots
        {"test-heads", heads, 2, 1, 2, 16}, // KV heads split, even T
        {"test-heads", heads, 2, 2, 2, 13},
    };
    for (const Case& c : cases) {
        std::string problem = ulysses_problem(c.config, c.S);
        if (!problem.empty()) { fprintf(stderr, "error: %s: %s\n", c.name, problem.c_str()); return 1; }
        run_case(c);
    }
    check_all(ulysses_problem(tiny, 4) != "" && ulysses_problem(heads, 3) != "" && ulysses_problem(heads, 4) == "",
              "ulysses_problem refuses heads that --sp cannot split");

    int status = 0;
    if (world.rank == 0) status = test_summary();
    comm_mpi_check(MPI_Bcast(&status, 1, MPI_INT, 0, world.mpi), "MPI_Bcast");
    MPI_Finalize();
    return status;
}
