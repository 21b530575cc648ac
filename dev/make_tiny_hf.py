#!/usr/bin/env python3
"""Tiny Hugging Face Llama directories for test_checkpoint, written by hand (json + struct, no torch,
no transformers, no network).

    python3 dev/make_tiny_hf.py [OUTPUT_DIR]     # default golden/tiny_hf; the outputs are committed

OUTPUT_DIR/bf16      untied, bf16, Llama 3.1 RoPE scaling, classic config.json (transformers 4 field names)
OUTPUT_DIR/sharded   the same weights in two shards listed by model.safetensors.index.json
OUTPUT_DIR/f32_tied  tied embeddings, fp32, no RoPE scaling, transformers 5 config.json (rope_parameters)

The safetensors files are laid out exactly as safetensors.h's SafetensorsWriter lays them out (compact
JSON header, "__metadata__" first, tensors in our parameter order, padded with spaces to 8 bytes), so
import followed by export must reproduce model.safetensors byte for byte.
"""
import json
import os
import random
import struct
import sys

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 96, 32, 2, 4, 2, 48
HEAD_DIM = HIDDEN // HEADS


def parameter_shapes(tied):
    """Hugging Face names and shapes in the order of llama_config.h's parameter_tensors()."""
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    shapes = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", [HIDDEN]), (p + "self_attn.q_proj.weight", [q, HIDDEN]),
                   (p + "self_attn.k_proj.weight", [kv, HIDDEN]), (p + "self_attn.v_proj.weight", [kv, HIDDEN]),
                   (p + "self_attn.o_proj.weight", [HIDDEN, q]), (p + "post_attention_layernorm.weight", [HIDDEN]),
                   (p + "mlp.gate_proj.weight", [FFN, HIDDEN]), (p + "mlp.up_proj.weight", [FFN, HIDDEN]),
                   (p + "mlp.down_proj.weight", [HIDDEN, FFN])]
    shapes.append(("model.norm.weight", [HIDDEN]))
    if not tied:
        shapes.append(("lm_head.weight", [VOCAB, HIDDEN]))
    return shapes


def float_to_bf16_bits(x):
    """Round an fp32 to the nearest bf16, ties to even (as safetensors.h's float_to_bf16)."""
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


def tensor_bytes(shape, dtype, rng):
    count = 1
    for d in shape:
        count *= d
    # norms near 1, matrices of std 0.3 (large enough that the logits differ visibly between tokens)
    values = [1.0 + 0.1 * rng.gauss(0, 1) if len(shape) == 1 else 0.3 * rng.gauss(0, 1) for _ in range(count)]
    if dtype == "BF16":
        return struct.pack(f"<{count}H", *[float_to_bf16_bits(v) for v in values])
    return struct.pack(f"<{count}f", *values)


def write_safetensors(path, tensors):
    """tensors: [(name, dtype, shape, bytes)] in file order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors))


def config(tied, dtype, rope_scaling, transformers5):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB, "hidden_size": HIDDEN,
         "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
         "head_dim": HEAD_DIM, "intermediate_size": FFN, "hidden_act": "silu", "attention_bias": False,
         "mlp_bias": False, "max_position_embeddings": 128, "rms_norm_eps": 1e-05, "tie_word_embeddings": tied}
    torch_dtype = {"BF16": "bfloat16", "F32": "float32"}[dtype]
    if transformers5:
        c["dtype"] = torch_dtype
        c["rope_parameters"] = dict(rope_scaling or {"rope_type": "default"}, rope_theta=10000.0)
    else:
        c["torch_dtype"] = torch_dtype
        c["rope_theta"] = 500000.0
        c["rope_scaling"] = rope_scaling
    return c


def write_model(directory, tied, dtype, rope_scaling, transformers5, shards, seed):
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(seed)
    tensors = [(name, dtype, shape, tensor_bytes(shape, dtype, rng)) for name, shape in parameter_shapes(tied)]
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config(tied, dtype, rope_scaling, transformers5), f, indent=2)
    if shards == 1:
        write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
        return
    per_shard = (len(tensors) + shards - 1) // shards
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = tensors[s * per_shard:(s + 1) * per_shard]
        write_safetensors(os.path.join(directory, name), part)
        weight_map.update({t[0]: name for t in part})
    index = {"metadata": {"total_size": sum(len(t[3]) for t in tensors)}, "weight_map": weight_map}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden", "tiny_hf")
    llama31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    write_model(os.path.join(root, "bf16"), False, "BF16", llama31, False, 1, seed=6)
    write_model(os.path.join(root, "sharded"), False, "BF16", llama31, False, 2, seed=6)
    write_model(os.path.join(root, "f32_tied"), True, "F32", None, True, 1, seed=7)
    print(f"wrote {root}/bf16, {root}/sharded, {root}/f32_tied")


if __name__ == "__main__":
    main()
