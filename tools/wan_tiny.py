"""Tiny random Wan 2.1 components in diffusers' pipeline layout, for tests and the toy run.

    python tools/wan_tiny.py OUT [--text-dim 32] [--z-dim 4] [--seed 0]

OUT gets what `WanPipeline.from_pretrained(OUT)` loads, at toy size and with random weights:
  vae/           AutoencoderKLWan (z_dim channels, 4x spatial and 2x temporal compression)
  text_encoder/  UMT5EncoderModel (width --text-dim, two layers)
  tokenizer/     a word-level tokenizer over a small vocabulary (no download)
  transformer/   WanTransformer3DModel (2 heads x 16, --blocks blocks) that fits the VAE and encoder
  scheduler/     FlowMatchEulerDiscreteScheduler
  model_index.json
With --clips N also OUT/clips/: N short clips of a coloured square moving over a dark
background (even ones as .mp4, odd ones as folders of PNG frames; one clip too short to
encode) and OUT/clips/captions.jsonl describing them, for `fastlightgen data encode`.
Quality is not the point: every file, shape and hand-off of the real path is.
"""
import argparse
import json
from pathlib import Path

import torch

WORDS = (
    "a the red green blue yellow white black circle square triangle cat dog car bird ball "
    "moves runs flies left right up down slowly quickly on in over under street field sky "
    "water tree house man woman child video of and with is are bright dark low quality "
    "static blurry worst"
).split()


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ), len(vocab)


COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40)}


def clips(out, n, frames, h, w):
    import av
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    lines = []
    names = list(COLOURS)
    for i in range(n):
        colour = names[i % len(names)]
        dx = 1 if i % 2 == 0 else -1
        t = frames if i != n - 1 else 3  # the last clip is too short to encode
        video = np.full((t, h, w, 3), 20, np.uint8)
        side = h // 4
        for f in range(t):
            x = w // 2 - side // 2 + dx * 2 * f
            y = h // 3
            video[f, y:y + side, max(0, x):max(0, x + side)] = COLOURS[colour]
        if i % 2 == 0:
            name = f"clip{i:02d}.mp4"
            with av.open(str(out / name), "w") as c:
                s = c.add_stream("libx264", rate=8)
                s.width, s.height, s.pix_fmt = w, h, "yuv420p"
                s.options = {"crf": "10"}
                for fr in video:
                    c.mux(s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")))
                c.mux(s.encode())
        else:
            name = f"clip{i:02d}"
            (out / name).mkdir(exist_ok=True)
            for f, fr in enumerate(video):
                Image.fromarray(fr).save(out / name / f"{f:04d}.png")
        side_word = "right" if dx > 0 else "left"
        lines.append(json.dumps({"video": name, "caption": f"a {colour} square moves {side_word}"}))
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--text-dim", type=int, default=32)
    ap.add_argument("--z-dim", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--clips", type=int, default=0)
    ap.add_argument("--clip-frames", type=int, default=13)
    ap.add_argument("--clip-size", type=int, nargs=2, default=[40, 56], metavar=("H", "W"))
    a = ap.parse_args()
    if a.clips:
        clips(a.out / "clips", a.clips, a.clip_frames, *a.clip_size)

    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(a.seed)
    tok, vocab = tokenizer()
    tok.save_pretrained(a.out / "tokenizer")
    enc = UMT5EncoderModel(
        UMT5Config(vocab_size=vocab, d_model=a.text_dim, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0)
    ).eval()
    enc.save_pretrained(a.out / "text_encoder")
    g = torch.Generator().manual_seed(a.seed + 1)
    vae = AutoencoderKLWan(
        base_dim=16, z_dim=a.z_dim, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=(0.1 * torch.randn(a.z_dim, generator=g)).tolist(),
        latents_std=(1.0 + 0.2 * torch.rand(a.z_dim, generator=g)).tolist(),
        scale_factor_temporal=2, scale_factor_spatial=4,
    ).eval()
    vae.save_pretrained(a.out / "vae")
    tr = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=a.z_dim,
        out_channels=a.z_dim, text_dim=a.text_dim, freq_dim=32, ffn_dim=64, num_layers=a.blocks,
    ).eval()
    tr.save_pretrained(a.out / "transformer")
    FlowMatchEulerDiscreteScheduler(shift=1.0).save_pretrained(a.out / "scheduler")
    index = {
        "_class_name": "WanPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "transformer_2": [None, None],
        "boundary_ratio": None,
        "expand_timesteps": False,
    }
    (a.out / "model_index.json").write_text(json.dumps(index, indent=2))
    print(json.dumps({"out": str(a.out), "text_dim": a.text_dim, "z_dim": a.z_dim,
                      "vae_compression": {"temporal": 2, "spatial": 4}}))


if __name__ == "__main__":
    main()
