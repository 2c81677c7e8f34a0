"""The tiny DiT's training step written in plain PyTorch, for the speed comparison with the
Rust step (`fastlightgen bench train-step`, which runs this script in the same run).

Same architecture (Wan 2.1-style: patch Conv3d, text MLP, sinusoidal time MLP -> 6-way adaLN,
blocks of q/k-RMSNorm self-attention with 3-D RoPE, cross-attention, GELU(tanh) FFN, modulated
head), same sizes, same flow-matching loss with 10% prompt dropout, AdamW and gradient
clipping, same libtorch (the torch wheel the Rust build links). Prints one JSON line.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim, grid):
    c = head_dim // 2
    parts = [c - 2 * (c // 3), c // 3, c // 3]
    f, h, w = grid

    def angles(n, width):
        inv = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) / width * -math.log(10000.0))
        return torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]

    af = angles(f, 2 * parts[0]).view(f, 1, 1, -1).expand(f, h, w, -1)
    ah = angles(h, 2 * parts[1]).view(1, h, 1, -1).expand(f, h, w, -1)
    aw = angles(w, 2 * parts[2]).view(1, 1, w, -1).expand(f, h, w, -1)
    a = torch.cat([af, ah, aw], -1).reshape(f * h * w, 1, c)
    return a.cos().float(), a.sin().float()


def rope(x, cos, sin):
    b, n, heads, d = x.shape
    p = x.view(b, n, heads, d // 2, 2)
    x0, x1 = p[..., 0], p[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).view(b, n, heads, d)


class Attention(nn.Module):
    def __init__(self, dim, heads, eps):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x, ctx, rot=None):
        b, s, d = x.shape
        hd = d // self.heads
        q = self.norm_q(self.q(x)).view(b, s, self.heads, hd)
        k = self.norm_k(self.k(ctx)).view(b, ctx.shape[1], self.heads, hd)
        v = self.v(ctx).view(b, ctx.shape[1], self.heads, hd)
        if rot is not None:
            q, k = rope(q, *rot), rope(k, *rot)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(out.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, dim, heads, ffn, eps):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.self_attn = Attention(dim, heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = Attention(dim, heads, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(approximate="tanh"), nn.Linear(ffn, dim))

    def forward(self, x, e0, ctx, rot):
        e = (self.modulation + e0).chunk(6, dim=1)
        d = x.shape[-1]
        h = F.layer_norm(x, (d,), eps=self.eps) * (1 + e[1]) + e[0]
        x = x + self.self_attn(h, h, rot) * e[2]
        x = x + self.cross_attn(self.norm3(x), ctx)
        h = F.layer_norm(x, (d,), eps=self.eps) * (1 + e[4]) + e[3]
        return x + self.ffn(h) * e[5]


class DiT(nn.Module):
    def __init__(self, dim, blocks, heads, ffn, freq, text_dim, ch, patch, eps=1e-6):
        super().__init__()
        self.dim, self.freq, self.patch, self.ch, self.heads, self.eps = dim, freq, patch, ch, heads, eps
        self.patch_embedding = nn.Conv3d(ch, dim, patch, stride=patch)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(Block(dim, heads, ffn, eps) for _ in range(blocks))
        self.head_modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.head = nn.Linear(dim, ch * math.prod(patch))

    def forward(self, x, t, text):
        p = self.patch_embedding(x)
        b, d, f, h, w = p.shape
        tokens = p.flatten(2).transpose(1, 2)
        half = self.freq // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float64) / half * -math.log(10000.0))
        args = (t.double() * 1000.0)[:, None] * freqs[None]
        e = self.time_embedding(torch.cat([args.cos(), args.sin()], 1).float())
        e0 = self.time_projection(e).unflatten(1, (6, self.dim))
        ctx = self.text_embedding(text)
        rot = rope_tables(self.dim // self.heads, (f, h, w))
        for blk in self.blocks:
            tokens = blk(tokens, e0, ctx, rot)
        m = (self.head_modulation + e[:, None]).chunk(2, dim=1)
        out = self.head(F.layer_norm(tokens, (d,), eps=self.eps) * (1 + m[1]) + m[0])
        pt, ph, pw = self.patch
        out = out.view(b, f, h, w, pt, ph, pw, self.ch).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, self.ch, f * pt, h * ph, w * pw)


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("dim", 96), ("blocks", 10), ("heads", 4), ("ffn", 384), ("freq", 64), ("text-dim", 32),
                          ("text-len", 4), ("channels", 3), ("frames", 8), ("size", 16), ("batch", 32),
                          ("steps", 30), ("warmup", 5), ("threads", 0)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--patch", type=int, nargs=3, default=[1, 4, 4])
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = DiT(a.dim, a.blocks, a.heads, a.ffn, a.freq, a.text_dim, a.channels, tuple(a.patch))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    x0 = torch.rand(a.batch, a.channels, a.frames, a.size, a.size) * 2 - 1
    text = torch.randn(a.batch, a.text_len, a.text_dim)

    def step():
        keep = (torch.rand(a.batch) >= 0.1).float().view(-1, 1, 1)
        t = torch.rand(a.batch)
        eps = torch.randn_like(x0)
        xt = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps
        loss = F.mse_loss(model(xt, t, text * keep), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "params": params, "steps": a.steps, "batch": a.batch, "seconds": seconds,
                      "samples_per_s": a.steps * a.batch / seconds}))


if __name__ == "__main__":
    main()
