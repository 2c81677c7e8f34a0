"""Encode videos and captions for a Wan 2.1 model: fastlightgen's latent data set.

    python tools/wan_encode.py data --captions CAPTIONS.jsonl --pipeline WAN_DIFFUSERS_DIR \
        --out DATA_DIR [--frames 81 --height 480 --width 832] [--text-len 512]
    python tools/wan_encode.py prompts --prompts PROMPTS.txt|.jsonl --pipeline DIR --out text.safetensors

(`fastlightgen data encode ...` runs this with the project's Python and then verifies the result.)

data: CAPTIONS.jsonl has one {"video": PATH, "caption": TEXT} per line; PATH is an .mp4 (or any
file PyAV reads) or a folder of frame images (sorted by name), relative to the JSONL's folder.
Each clip is resized (shorter side) and centre-cropped to HEIGHTxWIDTH, its first FRAMES
frames (every --stride-th) are encoded with diffusers' AutoencoderKLWan (the posterior mean) and
normalised as Wan's pipeline expects ((z - latents_mean) / latents_std); each caption with
transformers' UMT5EncoderModel exactly as WanPipeline does (tokens past the caption zeroed,
padded to TEXT_LEN). Written to DATA_DIR: shard-NNNNN.safetensors (`latents` [n, C, T, H, W],
`text` [n, L, D]), dataset.json, and null_text.safetensors: the embedding of the negative
prompt (`data.null_text`), which the Wan teacher was trained and guided with instead of zeros.

Resumable: shards are written whole (temporary file, then rename) and a rerun with the same
inputs and settings skips the shards that exist; other settings are refused (use a new --out).
Clips shorter than FRAMES are skipped and listed in dataset.json's source.skipped.

prompts: one prompt per line (or {"caption": ...} per JSONL line) -> a file whose `text` is
[N, L, D], for `fastlightgen sample --text-embeddings`.

--pipeline is a Wan diffusers folder (vae/, text_encoder/, tokenizer/), e.g.
Wan-AI/Wan2.1-T2V-1.3B-Diffusers; --vae, --text-encoder and --tokenizer override its parts.
"""
import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

FORMAT = "fastlightgen-latents/1"
# Wan 2.1's own negative prompt (its sample scripts' default).
WAN_NEGATIVE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def fail(msg):
    print(f"wan_encode: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg):
    print(f"wan_encode: {msg}", file=sys.stderr, flush=True)


def parts(a):
    base = Path(a.pipeline) if a.pipeline else None

    def pick(explicit, sub):
        if explicit:
            return explicit
        if base is None:
            fail(f"give --pipeline (a Wan diffusers folder) or --{sub.replace('_', '-')}")
        return str(base / sub)

    return pick(getattr(a, "vae", None), "vae"), pick(a.text_encoder, "text_encoder"), pick(a.tokenizer, "tokenizer")


class TextEncoder:
    """Captions -> [L, D] embeddings, as WanPipeline._get_t5_prompt_embeds makes them."""

    def __init__(self, enc_path, tok_path, text_len, device, dtype):
        from transformers import AutoTokenizer, UMT5EncoderModel

        self.tok = AutoTokenizer.from_pretrained(tok_path)
        self.enc = UMT5EncoderModel.from_pretrained(enc_path, torch_dtype=dtype).to(device).eval()
        self.text_len, self.device = text_len, device

    @torch.no_grad()
    def __call__(self, captions):
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        t = self.tok([prompt_clean(c) for c in captions], padding="max_length", max_length=self.text_len,
                     truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = t.input_ids.to(self.device), t.attention_mask.to(self.device)
        h = self.enc(ids, mask).last_hidden_state.float()
        keep = mask.unsqueeze(-1).to(h.dtype)
        return (h * keep).cpu()  # tokens past each caption are zeros, as in the pipeline


def read_frames(path, stride, frames):
    """uint8 frames [T, H, W, 3] (at most the first `frames` after striding)."""
    from PIL import Image

    p = Path(path)
    out = []
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})
        for f in files[::stride][:frames]:
            out.append(np.asarray(Image.open(f).convert("RGB")))
    else:
        import av

        with av.open(str(p)) as c:
            for i, fr in enumerate(c.decode(video=0)):
                if i % stride == 0:
                    out.append(fr.to_ndarray(format="rgb24"))
                if len(out) == frames:
                    break
    if not out:
        raise ValueError("no frames")
    return np.stack(out)


def fit(frames, height, width):
    """Resize the shorter side and centre-crop to height x width; [-1, 1] floats [3, T, H, W]."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # T, 3, h, w
    h, w = x.shape[-2:]
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[:, :, top:top + height, left:left + width].permute(1, 0, 2, 3).clamp(-1, 1)


def lines(path):
    """(line number, line) for every non-empty line of a text file."""
    if not path.is_file():
        fail(f"{path}: no such file")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            yield n, line


def records(path, keys):
    """(line number, the string values of `keys`) for every JSONL record of `path`."""
    want = ", ".join(f'"{k}": TEXT' for k in keys)
    for n, line in lines(path):
        try:
            r = json.loads(line)
            values = tuple(r[k] for k in keys)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            fail(f"{path}:{n}: expected {{{want}}}: {e}")
        if not all(isinstance(v, str) for v in values):
            fail(f"{path}:{n}: {' and '.join(keys)} must be strings")
        yield n, values


def settings_hash(d):
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def cmd_data(a):
    from diffusers import AutoencoderKLWan
    from tqdm import tqdm

    cap_path = Path(a.captions)
    rows = []
    for n, (video, caption) in records(cap_path, ("video", "caption")):
        vp = Path(video) if os.path.isabs(video) else cap_path.parent / video
        if not vp.exists():
            fail(f"{cap_path}:{n}: video {vp}: no such file or folder")
        rows.append((str(vp), caption))
    if not rows:
        fail(f"{cap_path}: no clips")
    device = torch.device(a.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    vae_path, enc_path, tok_path = parts(a)
    vae = AutoencoderKLWan.from_pretrained(vae_path, torch_dtype=torch.float32).to(device).eval()
    st, ss = vae.config.scale_factor_temporal, vae.config.scale_factor_spatial
    if (a.frames - 1) % st or a.height % (ss * 2) or a.width % (ss * 2):
        fail(f"--frames - 1 must be a multiple of {st} and --height/--width of {ss * 2} for this VAE and patch 2")
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(device)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(device)
    text = TextEncoder(enc_path, tok_path, a.text_len, device, dtype)
    settings = {"captions": hashlib.sha256(cap_path.read_bytes()).hexdigest(), "frames": a.frames,
                "height": a.height, "width": a.width, "stride": a.stride, "text_len": a.text_len,
                "shard_size": a.shard_size, "vae": str(vae_path), "text_encoder": str(enc_path),
                "negative_prompt": a.negative_prompt, "dtype": a.dtype}
    key = settings_hash(settings)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    progress_path = out / "encode-progress.json"
    progress = {"settings": key, "shards": {}, "skipped": []}
    if progress_path.exists():
        old = json.loads(progress_path.read_text())
        if old.get("settings") != key:
            fail(f"{out} holds an encoding with other inputs or settings; use a new --out or delete it")
        progress = old
    neg = text([a.negative_prompt])[0]
    save_file({"text": neg.contiguous()}, str(out / "null_text.safetensors"),
              metadata={"prompt": a.negative_prompt})
    save = (lambda t: t.to(torch.bfloat16)) if a.dtype == "bf16" else (lambda t: t.float())
    chunks = [rows[i:i + a.shard_size] for i in range(0, len(rows), a.shard_size)]
    shape = None
    bar = tqdm(total=len(rows), unit="clip", desc="encoding", file=sys.stderr)
    start = time.time()
    for k, chunk in enumerate(chunks):
        name = f"shard-{k:05d}.safetensors"
        done = progress["shards"].get(name)
        if done and (out / name).is_file():
            shape = done["latent_shape"]
            bar.update(len(chunk))
            continue
        lat, txt, skipped = [], [], []
        for video, caption in chunk:
            try:
                fr = read_frames(video, a.stride, a.frames)
            except Exception as e:  # unreadable clip: skipped, named
                skipped.append({"video": video, "why": f"unreadable: {e}"})
                bar.update(1)
                continue
            if len(fr) < a.frames:
                skipped.append({"video": video, "why": f"{len(fr)} frames, fewer than {a.frames}"})
                bar.update(1)
                continue
            x = fit(fr, a.height, a.width).unsqueeze(0).to(device)
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mode()
            lat.append(((z - mean) / std)[0].cpu())
            txt.append(caption)
            bar.update(1)
        if lat:
            latents = torch.stack(lat)
            shape = list(latents.shape[1:])
            emb = torch.cat([text(txt[i:i + 8]) for i in range(0, len(txt), 8)])
            tmp = out / f".{name}.tmp"
            save_file({"latents": save(latents).contiguous(), "text": save(emb).contiguous()}, str(tmp))
            os.replace(tmp, out / name)
        progress["shards"][name] = {"num_samples": len(lat), "latent_shape": shape}
        progress["skipped"] = [s for s in progress["skipped"] if s not in skipped] + skipped
        tmp = out / ".encode-progress.json.tmp"
        tmp.write_text(json.dumps(progress, indent=1))
        os.replace(tmp, progress_path)
        log(f"shard {k + 1}/{len(chunks)}: {len(lat)} clips, {time.time() - start:.1f}s")
    bar.close()
    shards = [{"file": n, "num_samples": s["num_samples"]} for n, s in sorted(progress["shards"].items())
              if s["num_samples"] > 0]
    total = sum(s["num_samples"] for s in shards)
    if total == 0:
        fail(f"no clip could be encoded ({len(progress['skipped'])} skipped); see {progress_path}")
    manifest = {
        "format": FORMAT, "kind": "latents", "num_samples": total, "latent_shape": shape,
        "text_shape": [a.text_len, int(neg.shape[1])], "has_labels": False, "shards": shards,
        "source": {"encoder": "tools/wan_encode.py", "captions": str(cap_path), "frames": a.frames,
                   "height": a.height, "width": a.width, "stride": a.stride, "vae": str(vae_path),
                   "text_encoder": str(enc_path), "latents": "posterior mean, (z - latents_mean) / latents_std",
                   "null_text": "null_text.safetensors", "negative_prompt": a.negative_prompt,
                   "skipped": progress["skipped"]},
    }
    tmp = out / ".dataset.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    os.replace(tmp, out / "dataset.json")
    print(json.dumps({"out": str(out), "clips": total, "skipped": len(progress["skipped"]),
                      "latent_shape": shape, "text_shape": manifest["text_shape"],
                      "seconds": round(time.time() - start, 2)}))


def cmd_prompts(a):
    src = Path(a.prompts)
    if src.suffix == ".jsonl":
        prompts = [caption for _, (caption,) in records(src, ("caption",))]
    else:
        prompts = [line.strip() for _, line in lines(src)]
    if not prompts:
        fail(f"{src}: no prompts")
    _, enc_path, tok_path = parts(a)
    text = TextEncoder(enc_path, tok_path, a.text_len, torch.device(a.device), torch.float32)
    emb = torch.cat([text(prompts[i:i + 8]) for i in range(0, len(prompts), 8)])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({"text": emb.contiguous()}, a.out, metadata={"prompts": json.dumps(prompts, ensure_ascii=False)})
    print(json.dumps({"out": a.out, "prompts": len(prompts), "text_shape": list(emb.shape[1:])}))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="fastlightgen data encode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("data", "prompts"):
        p = sub.add_parser(name)
        p.add_argument("--pipeline", help="a Wan diffusers folder with vae/, text_encoder/, tokenizer/")
        p.add_argument("--text-encoder")
        p.add_argument("--tokenizer")
        p.add_argument("--text-len", type=int, default=512)
        p.add_argument("--device", default="cpu")
        p.add_argument("--out", required=True)
    d = sub.choices["data"]
    d.add_argument("--captions", required=True)
    d.add_argument("--vae")
    d.add_argument("--frames", type=int, default=81)
    d.add_argument("--height", type=int, default=480)
    d.add_argument("--width", type=int, default=832)
    d.add_argument("--stride", type=int, default=1)
    d.add_argument("--shard-size", type=int, default=64)
    d.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
    d.add_argument("--negative-prompt", default=WAN_NEGATIVE)
    sub.choices["prompts"].add_argument("--prompts", required=True)
    a = ap.parse_args(argv)
    for k in ("text_len", "frames", "height", "width", "stride", "shard_size"):
        if getattr(a, k, 1) < 1:
            fail(f"--{k.replace('_', '-')}: must be at least 1")
    cmd_data(a) if a.cmd == "data" else cmd_prompts(a)


if __name__ == "__main__":
    main()
