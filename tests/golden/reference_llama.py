#!/usr/bin/env python3
"""Independent reference forward pass for lowbit's golden tests (llm.c style).

Written from the Hugging Face Llama/Qwen2 definitions (rotate_half RoPE, repeat_kv GQA, RMSNorm,
SwiGLU), sharing no code with lowbit. Writes, for each model, a fixture of input tokens and fp32
logits that tests/nn/test_golden.cpp compares against lowbit's forward pass.

Also builds a tiny synthetic qwen2-style checkpoint (q/k/v biases, llama3 rope scaling, untied
head, BF16 weights) so that code paths the shared models do not exercise are checked too.

Run with Debian's python3-torch:  /usr/bin/python3 tests/golden/reference_llama.py
Fixture layout (little-endian): b"LBGOLD01", u32 B, u32 T, u32 V, i32 tokens[B*T], f32 logits[B*T*V].
"""
import json, math, os, struct, sys
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ASSETS = os.path.join(ROOT, "..", "shared", "assets", "models")
OUT = os.path.join(ROOT, "tests", "fixtures", "golden")

DTYPES = {"F32": np.float32, "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = blob[base + b:base + e]
        if info["dtype"] == "BF16":
            u16 = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = u16.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=DTYPES[info["dtype"]]).astype(np.float32)
        out[name] = torch.from_numpy(arr.copy()).reshape(info["shape"]).double()
    return out


def inv_freq(cfg):
    d = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    base = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        out = []
        for f in inv.tolist():
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(f)
            elif wavelen > old / lo:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
        inv = torch.tensor(out, dtype=torch.float64)
    return inv


def forward(cfg, W, tokens):
    """Plain float64 forward pass. tokens: LongTensor [B, T]. Returns logits [B, T, V]."""
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    d = cfg.get("head_dim", H // nh)
    eps = cfg["rms_norm_eps"]
    B, T = tokens.shape

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def lin(x, name):
        y = x @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    def rotate_half(x):
        return torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1)

    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq(cfg))
    ang = torch.cat([ang, ang], -1)
    cos, sin = ang.cos(), ang.sin()
    mask = torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), 1)

    x = W["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj").view(B, T, nh, d).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(B, T, nkv, d).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(B, T, nkv, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(nh // nkv, dim=1)  # HF repeat_kv
        v = v.repeat_interleave(nh // nkv, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, -1)
        o = (att @ v).transpose(1, 2).reshape(B, T, nh * d)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(torch.nn.functional.silu(g) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, W["model.norm.weight"])
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return x @ head.T


def write_fixture(path, tokens, logits):
    B, T, V = logits.shape
    with open(path, "wb") as f:
        f.write(b"LBGOLD01")
        f.write(struct.pack("<III", B, T, V))
        f.write(tokens.to(torch.int32).numpy().tobytes())
        f.write(logits.to(torch.float32).numpy().tobytes())
    print(f"wrote {path}: B={B} T={T} V={V}")


def write_safetensors(path, tensors, dtype):
    header, chunks, off = {}, [], 0
    for name, t in tensors.items():
        if dtype == "BF16":
            u32 = t.to(torch.float32).numpy().view(np.uint32)
            raw = ((u32 + 0x7FFF + ((u32 >> 16) & 1)) >> 16).astype(np.uint16).tobytes()  # RNE
        else:
            raw = t.to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    hj = json.dumps(header).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(chunks))


def make_tiny_qwen2(dirname):
    """A random qwen2-style model exercising biases, llama3 RoPE scaling and an untied head."""
    g = torch.Generator().manual_seed(1234)
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 48,
           "intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": 6,
           "num_key_value_heads": 2, "vocab_size": 96, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "tie_word_embeddings": False,
           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
           "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}
    H, I, V, nh, nkv = 48, 80, 96, 6, 2
    d = H // nh
    W = {"model.embed_tokens.weight": torch.randn(V, H, generator=g),
         "model.norm.weight": 1 + 0.1 * torch.randn(H, generator=g),
         "lm_head.weight": torch.randn(V, H, generator=g) / math.sqrt(H)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (nh * d, H), "self_attn.k_proj": (nkv * d, H),
                  "self_attn.v_proj": (nkv * d, H), "self_attn.o_proj": (H, nh * d),
                  "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}
        for n, s in shapes.items():
            W[p + n + ".weight"] = torch.randn(*s, generator=g) / math.sqrt(s[1])
        for n in ("q_proj", "k_proj", "v_proj"):
            W[p + f"self_attn.{n}.bias"] = 0.5 * torch.randn(shapes["self_attn." + n][0], generator=g)
        W[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(H, generator=g)
        W[p + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(H, generator=g)
    os.makedirs(dirname, exist_ok=True)
    with open(os.path.join(dirname, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    write_safetensors(os.path.join(dirname, "model.safetensors"), W, "BF16")
    return cfg


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    cases = [("stories260K", os.path.join(ASSETS, "stories260K"), 2, 40),
             ("gutenberg-6m", os.path.join(ASSETS, "gutenberg-6m"), 1, 24)]
    tiny = os.path.join(OUT, "tiny-qwen2")
    make_tiny_qwen2(tiny)
    cases.append(("tiny-qwen2", tiny, 2, 48))  # 48 positions > original context 16: scaling matters
    for name, d, B, T in cases:
        cfg = json.load(open(os.path.join(d, "config.json")))
        W = read_safetensors(os.path.join(d, "model.safetensors"))
        tokens = torch.randint(3, cfg["vocab_size"], (B, T), generator=g)
        tokens[:, 0] = 1  # BOS
        with torch.no_grad():
            logits = forward(cfg, W, tokens)
        write_fixture(os.path.join(OUT, f"{name}.bin"), tokens, logits)


if __name__ == "__main__":
    sys.exit(main())
