#!/usr/bin/env python3
"""Checks our Hugging Face import and export against transformers' LlamaForCausalLM.

    make mst_hf && python3 dev/hf_check.py [--dir HF_DIR ...]

Needs torch and transformers (4.4x or 5.x); fp32 on the CPU, or the GPU if there is one (the
comparisons are in fp32 either way). Checks, each printed as PASS/FAIL with its max |difference|:
  1. our export of the golden test-tiny model (fp32 and bf16) loads in transformers, and its logits on
     the golden inputs equal ours (`mst_hf logits`, the CPU reference) and the golden logits;
  2. tiny random transformers models (untied with Llama 3.1 RoPE scaling in bf16, tied without scaling in
     fp32, sharded) saved with save_pretrained import into ours with equal logits, and greedy generation
     (our KV cache vs transformers' generate) picks the same tokens;
  3. every --dir (e.g. the trainer's --export after a few steps) gives equal logits in both.
Exits 1 if any check fails.
"""
import argparse
import inspect
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MST_HF = os.path.join(ROOT, "mst_hf")
GOLDEN = os.path.join(ROOT, "golden", "test-tiny.safetensors")
TOLERANCE = 1e-4  # fp32 logits of two implementations; relative to max(1, max |logit|)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
failures = []


def report(name, ok, detail):
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def mst_hf(*args):
    result = subprocess.run([MST_HF] + [str(a) for a in args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"mst_hf {' '.join(map(str, args))}: {result.stderr.strip()}")
    return result.stdout


def our_logits(directory, tokens):
    with tempfile.NamedTemporaryFile(suffix=".bin") as out:
        mst_hf("logits", directory, out.name, *tokens)
        data = bytearray(open(out.name, "rb").read())
    return torch.frombuffer(data, dtype=torch.float32).view(len(tokens), -1)


def load(directory):
    # transformers 5 renamed torch_dtype to dtype; eager attention: plain fp32 softmax
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = LlamaForCausalLM.from_pretrained(directory, attn_implementation="eager", **{key: torch.float32})
    return model.to(DEVICE).eval()


def their_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens], device=DEVICE)).logits[0].float().cpu()


def compare(name, ours, theirs):
    error = (ours - theirs).abs().max().item()
    scale = max(1.0, theirs.abs().max().item())
    report(name, error <= TOLERANCE * scale, f"max |difference| {error:.3g} (logits up to {scale:.3g})")


def compare_greedy(name, directory, model, prompt, n):
    ours = [int(t) for t in mst_hf("generate", directory, n, *prompt).split()]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt], device=DEVICE), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    theirs = out[0, len(prompt):].tolist()
    report(name, ours == theirs, f"ours {ours}, transformers {theirs}")


def check_golden_export(work):
    from safetensors.torch import load_file
    golden = load_file(GOLDEN)
    for dtype in ("F32", "BF16"):
        directory = os.path.join(work, f"golden_{dtype}")
        mst_hf("convert", GOLDEN, directory, dtype, "test-tiny")
        model = load(directory)
        for row, tokens in enumerate(golden["inputs"].tolist()):
            theirs = their_logits(model, tokens)
            compare(f"our {dtype} export of test-tiny, sequence {row}: transformers vs ours", our_logits(directory, tokens), theirs)
            compare(f"our {dtype} export of test-tiny, sequence {row}: transformers vs golden", golden["logits"][row], theirs)


def tiny_config(tied, scaled):
    rope_scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16} if scaled else None
    fields = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=tied, max_position_embeddings=256)
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:  # transformers 5
        fields["rope_parameters"] = dict(rope_scaling or {"rope_type": "default"}, rope_theta=500000.0)
    else:
        fields.update(rope_theta=500000.0, rope_scaling=rope_scaling)
    return LlamaConfig(**fields)


def check_transformers_models(work):
    torch.manual_seed(0)
    prompt = [5, 17, 250, 3, 99, 42, 7, 1, 200, 64, 128, 33, 2, 81, 150, 9, 11, 299, 0, 47, 19, 23, 77]  # past 16
    for name, tied, scaled, dtype, shard in [("untied, Llama 3.1 RoPE, bf16", False, True, torch.bfloat16, None),
                                             ("tied, no RoPE scaling, fp32", True, False, torch.float32, None),
                                             ("untied, sharded, fp32", False, True, torch.float32, "40KB")]:
        model = LlamaForCausalLM(tiny_config(tied, scaled))
        with torch.no_grad():  # larger than the default init, so logits differ clearly between tokens
            for p in model.parameters():
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if p.dim() == 1 else 0.2 * torch.randn_like(p))
        directory = os.path.join(work, name.replace(",", "").replace(" ", "_"))
        model.to(dtype).save_pretrained(directory, **({"max_shard_size": shard} if shard else {}))
        reloaded = load(directory)
        compare(f"transformers model ({name}) imported: logits", our_logits(directory, prompt), their_logits(reloaded, prompt))
        compare_greedy(f"transformers model ({name}) imported: greedy generation", directory, reloaded, prompt[:5], 12)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", action="append", default=[], help="a Hugging Face directory to compare (repeatable)")
    args = parser.parse_args()
    if not os.path.exists(MST_HF):
        subprocess.run(["make", "-C", ROOT, "mst_hf"], check=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {DEVICE}")
    with tempfile.TemporaryDirectory() as work:
        check_golden_export(work)
        check_transformers_models(work)
    for directory in args.dir:
        model = load(directory)
        tokens = [t % model.config.vocab_size for t in (128000, 9906, 1917, 0, 578, 4062, 14198, 39935, 13)]
        compare(f"{directory}: logits", our_logits(directory, tokens), their_logits(model, tokens))
    print(f"{'FAIL' if failures else 'PASS'}: {len(failures)} check(s) failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
