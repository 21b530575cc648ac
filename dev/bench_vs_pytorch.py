#!/usr/bin/env python3
"""dev/bench_vs_pytorch.py: our trainer against Hugging Face transformers on the same card, in one run.

For each model (llama3.2-1b, llama3-8b) and sequence length (T = 8192, 32768, 60000; B = 1, random
tokens, weights built from the config: nothing is downloaded) under one memory budget (80 GiB:
--gpu-mem 80 for ours, torch.cuda.set_per_process_memory_fraction for PyTorch):
  ours        ./train_llama --random-tokens (mini-sequences, recomputation, fused AdamW with bf16 state)
  plain       LlamaForCausalLM (SDPA attention, bf16 weights), model(input_ids, labels=...).loss
  ckpt        the same with gradient checkpointing (non-reentrant)
  ckpt+mst    gradient checkpointing plus the MLP and the LM head + loss over mini-sequences of the sizes
              ours uses (2^30 / (6F) and 2^30 / (2V) tokens), each chunk recomputed in backward: the
              Mini-Sequence Transformer method written in PyTorch
The PyTorch baselines step AdamW (bf16 weights, so bf16 state; fused where the build has it). Where that
runs out of memory they run forward + backward only, and the table marks them as an upper bound for
PyTorch. Each PyTorch variant runs in its own process (one model build, T ascending); once a variant runs
out of memory even without the optimizer, the longer T are recorded as OOM without running.

Sizing (about 5 minutes of an H100/H200): 1 warm-up step, then 2 timed steps at T <= 8192 and 1 above;
a shared deadline (--budget, default 330 s) skips what is left when it is spent (marked in the table).
Output: a markdown table on stdout and in --out (tokens/s, peak memory, ratio ours / best PyTorch).

Run through dev/bench_vs_pytorch.sh (which builds train_llama). --help works without torch.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

GIB = 1 << 30
MINI_SEQUENCE_BYTES = 1 << 30  # mst/memory_plan.h's automatic rule: 1 GiB of MLP hidden or logits per chunk

# the shapes of mst/llama_config.h's llama3.2-1b and llama3-8b
MODELS = {
    "llama3.2-1b": dict(vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, intermediate_size=8192, tie_word_embeddings=True,
                        rope_theta=500000.0, rms_norm_eps=1e-5),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, intermediate_size=14336, tie_word_embeddings=False,
                      rope_theta=500000.0, rms_norm_eps=1e-5),
}
VARIANTS = ["ckpt+mst", "ckpt", "plain"]  # the likeliest to fit first


def timed_steps(T):
    return 2 if T <= 8192 else 1


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="llama3.2-1b,llama3-8b", help="comma-separated, from: " + ", ".join(MODELS))
    p.add_argument("--T", default="8192,32768,60000", help="comma-separated sequence lengths (B = 1)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="PyTorch variants: " + ", ".join(VARIANTS))
    p.add_argument("--budget-gib", type=float, default=80.0, help="memory budget for both (default 80)")
    p.add_argument("--budget", type=float, default=330.0, help="seconds for the whole run (default 330)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--trainer", default="./train_llama", help="our trainer (default ./train_llama)")
    p.add_argument("--out", default="dev/bench_vs_pytorch.md", help="the table is written here too")
    p.add_argument("--skip-ours", action="store_true", help="only the PyTorch baselines")
    p.add_argument("--skip-pytorch", action="store_true", help="only our trainer")
    # internal: one PyTorch variant of one model over the T list, one RESULT line per T
    p.add_argument("--worker", metavar="VARIANT", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    a = p.parse_args()
    try:
        a.T = [int(t) for t in a.T.split(",")]
    except ValueError:
        p.error("--T: a comma-separated list of integers, got %r" % a.T)
    a.models = a.models.split(",")
    a.variants = a.variants.split(",")
    for m in a.models:
        if m not in MODELS:
            p.error("--models: unknown model %r (known: %s)" % (m, ", ".join(MODELS)))
    for v in a.variants + ([a.worker] if a.worker else []):
        if v not in VARIANTS:
            p.error("--variants: unknown variant %r (known: %s)" % (v, ", ".join(VARIANTS)))
    if any(t <= 0 for t in a.T) or a.warmup < 0 or a.budget_gib <= 0:
        p.error("--T, --warmup and --budget-gib must be positive")
    return a


# ----------------------------------------------------------------------------
# PyTorch worker (imports torch only here)

def pytorch_worker(a):
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    model_name = a.models[0]
    shape = MODELS[model_name]
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, a.budget_gib * GIB / total))
    config = LlamaConfig(**shape, max_position_embeddings=max(8192, max(a.T)), use_cache=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.train()
    if a.worker != "plain":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    V, C, Fdim = shape["vocab_size"], shape["hidden_size"], shape["intermediate_size"]

    class Chunked(torch.autograd.Function):
        """fn over sequence chunks of x (B, T, ...), keeping no chunk's intermediates: each chunk is
        recomputed in backward (the MST authors' scheme). Outputs concatenated, or summed (a loss)."""

        @staticmethod
        def forward(ctx, x, fn, chunk, summed):
            ctx.fn, ctx.chunk, ctx.summed = fn, chunk, summed
            ctx.save_for_backward(x)
            with torch.no_grad():
                outs = [fn(x[:, s:s + chunk], s) for s in range(0, x.shape[1], chunk)]
            return sum(outs) if summed else torch.cat(outs, dim=1)

        @staticmethod
        def backward(ctx, dout):
            (x,) = ctx.saved_tensors
            dx = torch.empty_like(x)
            for s in range(0, x.shape[1], ctx.chunk):
                with torch.enable_grad():
                    part = x[:, s:s + ctx.chunk].detach().requires_grad_()
                    y = ctx.fn(part, s)
                torch.autograd.backward(y, dout if ctx.summed else dout[:, s:s + ctx.chunk])
                dx[:, s:s + ctx.chunk] = part.grad
            return dx, None, None, None

    mlp_chunk = max(1, MINI_SEQUENCE_BYTES // (6 * Fdim))
    lm_chunk = max(1, MINI_SEQUENCE_BYTES // (2 * V))
    if a.worker == "ckpt+mst":
        for layer in model.model.layers:
            plain_mlp = layer.mlp.forward
            layer.mlp.forward = lambda h, f=plain_mlp: Chunked.apply(h, lambda part, s: f(part), mlp_chunk, False)

    def loss_of(tokens, T):
        inputs, targets = tokens[:, :T], tokens[:, 1:]
        if a.worker != "ckpt+mst":
            return model(input_ids=inputs, labels=tokens[:, :T]).loss  # transformers shifts the labels itself
        hidden = model.model(input_ids=inputs).last_hidden_state

        def chunk_loss(part, s):
            logits = model.lm_head(part).float()
            return F.cross_entropy(logits.view(-1, V), targets[:, s:s + part.shape[1]].reshape(-1), reduction="sum")
        return Chunked.apply(hidden, chunk_loss, lm_chunk, True) / T

    def make_optimizer():
        kw = dict(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        try:
            return torch.optim.AdamW(model.parameters(), fused=True, **kw)
        except (TypeError, RuntimeError):
            return torch.optim.AdamW(model.parameters(), **kw)

    def measure(T, with_optimizer):
        optimizer = make_optimizer() if with_optimizer else None
        tokens = torch.randint(0, V, (1, T + 1), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(a.warmup + timed_steps(T)):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = loss_of(tokens, T)
            loss.backward()
            if optimizer:
                optimizer.step()
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if step >= a.warmup:
                times.append(time.perf_counter() - t0)
            del loss
        times.sort()
        return dict(tok_s=T / times[len(times) // 2], peak_gib=torch.cuda.max_memory_reserved() / GIB,
                    optimizer=with_optimizer)

    def release():
        model.zero_grad(set_to_none=True)
        import gc
        gc.collect()
        torch.cuda.empty_cache()

    versions = "torch %s, transformers %s" % (torch.__version__, transformers.__version__)
    with_optimizer, oom_at = True, None
    for T in a.T:
        row = dict(model=model_name, variant=a.worker, T=T, versions=versions, card=torch.cuda.get_device_name(0))
        if oom_at is not None:
            row.update(status="oom", note="implied by T=%d" % oom_at)
        elif a.deadline and time.time() > a.deadline:
            row.update(status="skipped", note="time budget spent")
        else:
            while True:
                failed = None
                try:
                    row.update(measure(T, with_optimizer), status="ok")
                except torch.cuda.OutOfMemoryError:
                    failed = "oom"
                except RuntimeError as e:  # e.g. a kernel refusing the size
                    failed = "error: " + str(e).splitlines()[0][:80]
                release()  # outside the except block: the traceback's tensors are gone
                if failed is None:
                    break
                if failed == "oom" and with_optimizer:
                    with_optimizer = False  # retry forward + backward only: an upper bound for PyTorch
                    continue
                row.update(status="oom" if failed == "oom" else "error", note=failed)
                if failed == "oom":
                    oom_at = T
                break
        print("RESULT " + json.dumps(row), flush=True)


# ----------------------------------------------------------------------------
# driver

def run_ours(a, model, T, deadline):
    left = deadline - time.time()
    row = dict(model=model, variant="ours", T=T)
    if left < 20:
        return dict(row, status="skipped", note="time budget spent")
    steps = a.warmup + timed_steps(T)
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as log:
        cmd = [a.trainer, "-e", model, "-B", "1", "-T", str(T), "--random-tokens", "-n", str(steps),
               "--gpu-mem", "%g" % a.budget_gib, "-L", log.name]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            return dict(row, status="skipped", note="time budget spent")
        records = [json.loads(line) for line in open(log.name) if line.startswith("{\"step\"")]
    if r.returncode != 0 or len(records) < steps:
        last = (r.stderr.strip().splitlines() or ["exit status %d" % r.returncode])[-1]
        return dict(row, status="no fit" if "fit" in last else "error", note=last[:100])
    timed = sorted(rec["tok_per_s"] for rec in records[a.warmup:])
    return dict(row, status="ok", optimizer=True, tok_s=timed[len(timed) // 2],
                peak_gib=max(rec["gpu_mem_gib"] for rec in records))


def run_pytorch(a, model, variant, deadline):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--models", model,
           "--T", ",".join(map(str, a.T)), "--budget-gib", str(a.budget_gib), "--warmup", str(a.warmup),
           "--deadline", str(deadline)]
    rows = []
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, deadline - time.time() + 30))
        out, err = r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        out, err = e.stdout or "", "killed at the time budget"
        out = out.decode() if isinstance(out, bytes) else out
    for line in out.splitlines():
        if line.startswith("RESULT "):
            rows.append(json.loads(line[7:]))
    done = {row["T"] for row in rows}
    for T in a.T:
        if T not in done:
            last = (err.strip().splitlines() or ["no result"])[-1]
            rows.append(dict(model=model, variant=variant, T=T, status="error", note=last[:100]))
    return rows


def cell(row):
    if row is None:
        return "-"
    if row["status"] == "ok":
        text = "%.0f tok/s, %.1f GiB" % (row["tok_s"], row["peak_gib"])
        return text if row.get("optimizer") else text + " (fwd+bwd only: upper bound)"
    if row["status"] == "no fit":
        return "does not fit (plan)"
    if row["status"] == "oom":
        return "OOM" + (" (%s)" % row["note"] if row.get("note", "").startswith("implied") else "")
    return "%s: %s" % (row["status"], row.get("note", ""))


def table(a, rows):
    find = {(r["model"], r["variant"], r["T"]): r for r in rows}
    info = next((r for r in rows if "card" in r), {})
    lines = ["# ours vs transformers, %s, %s" % (info.get("card", "card unknown"), time.strftime("%Y-%m-%d")),
             "",
             "B=1, random tokens, %g GiB budget each; %s; %d warm-up step(s), median of the timed ones. "
             "Peak memory: ours, the card's used memory (cudaMemGetInfo); PyTorch, max_memory_reserved. "
             "PyTorch steps AdamW with bf16 state unless marked fwd+bwd only (then an upper bound)."
             % (a.budget_gib, info.get("versions", "PyTorch not run"), a.warmup),
             "",
             "| model | T | ours | " + " | ".join("PyTorch " + v for v in a.variants) + " | ours / best PyTorch |",
             "|---|---|---|" + "---|" * len(a.variants) + "---|"]
    for model in a.models:
        for T in a.T:
            ours = find.get((model, "ours", T))
            torch_rows = [find.get((model, v, T)) for v in a.variants]
            fitted = [r for r in torch_rows if r and r["status"] == "ok"]
            with_opt = [r for r in fitted if r.get("optimizer")]
            best = max(with_opt or fitted, key=lambda r: r["tok_s"]) if fitted else None
            if ours and ours["status"] == "ok" and best:
                ratio = "%.2fx%s" % (ours["tok_s"] / best["tok_s"], "" if with_opt else " (vs upper bound)")
            elif ours and ours["status"] == "ok" and not a.skip_pytorch:
                ratio = "no PyTorch variant fits"
            else:
                ratio = "-"
            lines.append("| %s | %d | %s | %s | %s |" % (model, T, cell(ours), " | ".join(map(cell, torch_rows)), ratio))
    return "\n".join(lines) + "\n"


def main():
    a = parse_args()
    if a.worker:
        return pytorch_worker(a)
    deadline = time.time() + a.budget
    if not a.skip_ours and not os.access(a.trainer, os.X_OK):
        sys.exit("error: --trainer: %s is not an executable (make train_llama)" % a.trainer)
    rows = []
    for model in a.models:
        if not a.skip_ours:
            for T in a.T:
                rows.append(run_ours(a, model, T, deadline))
                print("ours", model, T, cell(rows[-1]), flush=True)
        if not a.skip_pytorch:
            for v in a.variants:
                for row in run_pytorch(a, model, v, deadline):
                    rows.append(row)
                    print("PyTorch", v, model, row["T"], cell(row), flush=True)
    text = table(a, rows)
    print()
    print(text)
    with open(a.out, "w") as f:
        f.write(text)
    print("written to", a.out)


if __name__ == "__main__":
    main()
