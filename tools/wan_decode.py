"""Decode latent videos with the Wan VAE into mp4 or GIF files.

    python tools/wan_decode.py --latents OUT/latents.safetensors --pipeline WAN_DIFFUSERS_DIR \
        --out videos/ [--format mp4|gif] [--fps 16] [--device cpu|cuda]

--latents is what `fastlightgen sample --text-embeddings` writes (`latents` [N, C, T, H, W],
normalised as Wan's pipeline keeps them); --pipeline a Wan diffusers folder with vae/ (or
--vae the VAE folder). Writes OUT/video-NNNN.mp4 (or .gif) and prints one JSON line.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def write_video(path, frames, fps, fmt):
    """frames: uint8 [T, H, W, 3]."""
    if fmt == "gif":
        from PIL import Image

        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
        return
    import av

    h, w = frames.shape[1:3]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        # yuv420p needs even sides: pad by one pixel where odd.
        s.width, s.height, s.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        for f in frames:
            f = np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(s.encode())


@torch.no_grad()
def decode(vae, latents):
    """Normalised latents [N, C, T, H, W] -> uint8 videos [N, T, H, W, 3]."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    out = []
    for z in latents:
        x = vae.decode(z.unsqueeze(0) * std + mean).sample[0]  # [3, T, H, W] in [-1, 1]
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", required=True)
    ap.add_argument("--pipeline")
    ap.add_argument("--vae")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--format", choices=["mp4", "gif"], default="mp4")
    ap.add_argument("--fps", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    from diffusers import AutoencoderKLWan

    vae_path = a.vae or (a.pipeline and str(Path(a.pipeline) / "vae"))
    if not vae_path:
        sys.exit("wan_decode: give --pipeline or --vae")
    try:
        latents = load_file(a.latents)["latents"].float()
    except Exception as e:  # a missing file or tensor: one line, the file named
        sys.exit(f"wan_decode: {a.latents}: {e}")
    vae = AutoencoderKLWan.from_pretrained(vae_path, torch_dtype=torch.float32).to(a.device).eval()
    if latents.dim() != 5 or latents.shape[1] != vae.config.z_dim:
        sys.exit(f"wan_decode: {a.latents}: latents {list(latents.shape)}; the VAE takes [N, {vae.config.z_dim}, T, H, W]")
    a.out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, v in enumerate(decode(vae, latents.to(a.device))):
        p = a.out / f"video-{i:04d}.{a.format}"
        write_video(p, v, a.fps, a.format)
        files.append(str(p))
    print(json.dumps({"videos": files, "frames": int(v.shape[0]), "size": [int(v.shape[1]), int(v.shape[2])]}))


if __name__ == "__main__":
    main()
