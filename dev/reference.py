#!/usr/bin/env python3
"""Golden outputs for the mst CPU reference and GPU trainer: an independent PyTorch Llama 3.

Regenerate (from the repository root, fp32 on the CPU, torch 1.13 or newer):
    python3 dev/reference.py   # writes golden/test-tiny.safetensors and golden/test-tiny-docmask.safetensors

The model is written here from the Llama 3 definition (Hugging Face transformers' LlamaForCausalLM),
not from the C++ code, so that the two implementations check each other:
rotate-half RoPE with Llama 3.1 frequency scaling, grouped-query attention by repeating kv heads,
RMSNorm x * rsqrt(mean(x^2) + eps) * weight, SwiGLU MLP, untied LM head, cross-entropy with
ignore_index=-1, torch.optim.AdamW (weight decay on 2-D tensors only), clip_grad_norm_.
Attention is written by hand (torch 1.13 has no scaled_dot_product_attention).

The file holds every parameter under its Hugging Face name, "inputs" and "targets" (I32 [B,T]),
"logits" (F32 [B,T,V]), "loss" (F32 [1]), "grad." + name for every parameter gradient of the first
step, and "losses" (F32 [10]): the loss before each of 10 AdamW steps on the same batch.
test-tiny-docmask.safetensors holds the same with document masking (tokens attend only within their
document; a document starts at each "bos" (I32 [1]) token and at position 0).
"""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F

# test-tiny, stated here independently of llama_config.h
VOCAB = 504          # not a multiple of 64
D_MODEL = 128
N_LAYER = 2
N_HEAD = 2
N_KV_HEAD = 1        # 2 query heads per kv head
HEAD_DIM = D_MODEL // N_HEAD  # 64
FFN = 232            # not a multiple of 64
ROPE_THETA = 500000.0
NORM_EPS = 1e-5
ROPE_FACTOR = 8.0
ROPE_LOW_FREQ_FACTOR = 1.0
ROPE_HIGH_FREQ_FACTOR = 4.0
ROPE_ORIGINAL_MAX_POSITION = 64  # small, so the smooth band falls inside the head's frequencies

B, T = 2, 37         # T odd and prime: no mini-sequence count divides it
SEED = 1234
TRAIN_STEPS = 10
LR, BETAS, ADAM_EPS, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-3, (0.9, 0.95), 1e-8, 0.1, 1.0

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden", "test-tiny.safetensors")
OUTPUT_DOCMASK = os.path.join(os.path.dirname(OUTPUT), "test-tiny-docmask.safetensors")
DOC_BOS = 3          # test-tiny has no <|begin_of_text|> (128000): this token starts a document


def parameter_shapes():
    """Hugging Face names and shapes, in the order of the C++ parameter layout."""
    q_dim, kv_dim = N_HEAD * HEAD_DIM, N_KV_HEAD * HEAD_DIM
    shapes = [("model.embed_tokens.weight", (VOCAB, D_MODEL))]
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (D_MODEL,)),
            (p + "self_attn.q_proj.weight", (q_dim, D_MODEL)),
            (p + "self_attn.k_proj.weight", (kv_dim, D_MODEL)),
            (p + "self_attn.v_proj.weight", (kv_dim, D_MODEL)),
            (p + "self_attn.o_proj.weight", (D_MODEL, q_dim)),
            (p + "post_attention_layernorm.weight", (D_MODEL,)),
            (p + "mlp.gate_proj.weight", (FFN, D_MODEL)),
            (p + "mlp.up_proj.weight", (FFN, D_MODEL)),
            (p + "mlp.down_proj.weight", (D_MODEL, FFN)),
        ]
    shapes += [("model.norm.weight", (D_MODEL,)), ("lm_head.weight", (VOCAB, D_MODEL))]
    return shapes


def bf16_representable(x):
    """Round to the nearest bfloat16 and back, so a bf16 copy of the weights is the same model."""
    return x.to(torch.bfloat16).to(torch.float32)


def initial_parameters(generator):
    params = {}
    for name, shape in parameter_shapes():
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        value = 1.0 + 0.1 * noise if len(shape) == 1 else 0.02 * noise
        params[name] = bf16_representable(value).requires_grad_(True)
    return params


def llama3_inverse_frequencies():
    """theta^(-2i/d), then Llama 3.1 scaling as in transformers' _compute_llama3_parameters:
    long wavelengths (> original/low) divided by factor, short ones (< original/high) kept,
    the band between interpolated with smooth = (original/wavelen - low) / (high - low)."""
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    low_freq_wavelen = ROPE_ORIGINAL_MAX_POSITION / ROPE_LOW_FREQ_FACTOR
    high_freq_wavelen = ROPE_ORIGINAL_MAX_POSITION / ROPE_HIGH_FREQ_FACTOR
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / ROPE_FACTOR, inv_freq)
    smooth = (ROPE_ORIGINAL_MAX_POSITION / wavelen - ROPE_LOW_FREQ_FACTOR) / (ROPE_HIGH_FREQ_FACTOR - ROPE_LOW_FREQ_FACTOR)
    smoothed = (1 - smooth) * scaled / ROPE_FACTOR + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_cos_sin(seq_len):
    """cos, sin of shape (T, head_dim): angles in float64, the frequencies repeated for both halves."""
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), llama3_inverse_frequencies())
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat([-x2, x1], dim=-1)


def rms_norm(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * weight


def attention(x, p, prefix, cos, sin, hidden):
    batch, seq_len, _ = x.shape
    # (B, heads, T, head_dim)
    q = (x @ p[prefix + "q_proj.weight"].t()).view(batch, seq_len, N_HEAD, HEAD_DIM).transpose(1, 2)
    k = (x @ p[prefix + "k_proj.weight"].t()).view(batch, seq_len, N_KV_HEAD, HEAD_DIM).transpose(1, 2)
    v = (x @ p[prefix + "v_proj.weight"].t()).view(batch, seq_len, N_KV_HEAD, HEAD_DIM).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    # grouped-query attention: query head h reads kv head h // (N_HEAD / N_KV_HEAD)
    k = k.repeat_interleave(N_HEAD // N_KV_HEAD, dim=1)
    v = v.repeat_interleave(N_HEAD // N_KV_HEAD, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
    scores = scores.masked_fill(hidden, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    out = out.transpose(1, 2).reshape(batch, seq_len, N_HEAD * HEAD_DIM)
    return out @ p[prefix + "o_proj.weight"].t()


def mlp(x, p, prefix):
    gate = x @ p[prefix + "gate_proj.weight"].t()
    up = x @ p[prefix + "up_proj.weight"].t()
    return (F.silu(gate) * up) @ p[prefix + "down_proj.weight"].t()


def hidden_keys(inputs, bos):
    """(B or 1, 1, T, T) True where query t must not see key s: the future, and with bos not None other
    documents (a document starts at each bos token and at position 0; positions keep counting)."""
    seq_len = inputs.shape[1]
    hidden = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool), diagonal=1)[None, None]
    if bos is None:
        return hidden
    starts = inputs == bos
    starts[:, 0] = True
    document = torch.cumsum(starts.long(), dim=1)  # (B, T) document index of each token
    return hidden | (document[:, None, :, None] != document[:, None, None, :])


def forward(p, inputs, bos=None):
    cos, sin = rope_cos_sin(inputs.shape[1])
    hidden = hidden_keys(inputs, bos)
    x = p["model.embed_tokens.weight"][inputs.long()]
    for i in range(N_LAYER):
        pre = f"model.layers.{i}."
        x = x + attention(rms_norm(x, p[pre + "input_layernorm.weight"]), p, pre + "self_attn.", cos, sin, hidden)
        x = x + mlp(rms_norm(x, p[pre + "post_attention_layernorm.weight"]), p, pre + "mlp.")
    return rms_norm(x, p["model.norm.weight"]) @ p["lm_head.weight"].t()


def loss_of(logits, targets):
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1).long(), ignore_index=-1)


def write_safetensors(path, tensors):
    """safetensors by hand: u64 little-endian header length, JSON header, then the raw data."""
    dtype_names = {torch.float32: "F32", torch.int32: "I32"}
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        data = tensor.detach().contiguous().numpy().tobytes()
        header[name] = {"dtype": dtype_names[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)


def golden_case(inputs, targets, bos=None):
    """The initial parameters, inputs, targets, the first step's logits, loss and gradients, and the losses
    of TRAIN_STEPS AdamW steps on the batch; bos: document masking at that token."""
    params = initial_parameters(torch.Generator().manual_seed(SEED))
    out = {name: value.detach().clone() for name, value in params.items()}
    out["inputs"], out["targets"] = inputs, targets
    if bos is not None:
        out["bos"] = torch.tensor([bos], dtype=torch.int32)

    decay = [v for v in params.values() if v.dim() >= 2]
    no_decay = [v for v in params.values() if v.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=LR, betas=BETAS, eps=ADAM_EPS)
    losses = []
    for step in range(TRAIN_STEPS):
        optimizer.zero_grad()
        logits = forward(params, inputs, bos)
        loss = loss_of(logits, targets)
        loss.backward()
        if step == 0:
            out["logits"] = logits.detach().clone()
            out["loss"] = loss.detach().reshape(1).clone()
            for name, value in params.items():
                out["grad." + name] = value.grad.detach().clone()
        torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_GRAD_NORM)
        optimizer.step()
        losses.append(loss.item())
        print(f"step {step + 1:2d} loss {loss.item():.6f}")
    out["losses"] = torch.tensor(losses, dtype=torch.float32)
    return out


def write(path, out):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_safetensors(path, out)
    print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path)} bytes)")


def main():
    print("regenerate with: python3 dev/reference.py (from the repository root; torch 1.13+, CPU)")
    generator = torch.Generator().manual_seed(SEED)
    initial_parameters(generator)  # the same draws as before, so test-tiny.safetensors keeps its bytes
    tokens = torch.randint(0, VOCAB, (B, T + 1), generator=generator, dtype=torch.int32)
    inputs, targets = tokens[:, :T].contiguous(), tokens[:, 1:].clone()
    for b, t in [(0, 0), (0, 17), (1, 5), (1, T - 1)]:  # ignored targets, the last position included
        targets[b, t] = -1
    write(OUTPUT, golden_case(inputs, targets))

    # document masking: the same batch with bos tokens at fixed positions (row 1's first token is not bos:
    # position 0 starts a document anyway), DOC_BOS absent elsewhere
    doc_inputs = inputs.clone()
    doc_inputs[doc_inputs == DOC_BOS] = DOC_BOS + 1
    for b, t in [(0, 0), (0, 9), (0, 10), (0, 30), (1, 13), (1, T - 1)]:
        doc_inputs[b, t] = DOC_BOS
    write(OUTPUT_DOCMASK, golden_case(doc_inputs, targets, DOC_BOS))


if __name__ == "__main__":
    main()
