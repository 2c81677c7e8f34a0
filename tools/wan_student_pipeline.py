"""Run a fastlightgen student in diffusers' WanPipeline with its own few-step sampler.

    python tools/wan_student_pipeline.py --student runs/NAME/export/diffusers \
        --pipeline Wan2.1-T2V-1.3B-Diffusers --prompt "a cat runs on grass" --out cat.mp4 \
        [--frames 81 --height 480 --width 832] [--device cuda --dtype bf16] [--seed 0]

The student folder is what the export stage writes: a WanTransformer3DModel (its kept blocks
renumbered) and sampler.json. The pipeline's VAE, text encoder and tokenizer come from
--pipeline; its scheduler is replaced by FlowMatchEulerDiscreteScheduler following sampler.json:
the student's own times (already shifted: shift 1 here), Euler or re-noising steps
(`stochastic_sampling`: predict the clean video, noise it afresh to the next time), and its
guidance scale (1: no CFG, one transformer call per step).

--noise-from FILE (a `fastlightgen sample --text-embeddings` output with `noise`, `text` and
`latents`) starts from that file's noise and prompt embeddings instead of a prompt and checks
that WanPipeline reaches fastlightgen's own latents (Euler students; re-noising draws its
fresh noise differently): it prints the relative difference and exits 1 above --tolerance.
"""
import argparse
import json
import sys
from pathlib import Path

import torch


def scheduler_for(sampler):
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, stochastic_sampling=sampler["kind"] == "renoise"
    )
    times = [float(t) for t in sampler["timesteps"]]
    plain = s.set_timesteps

    def set_timesteps(num_inference_steps=None, device=None, **kw):
        # WanPipeline asks for N steps; the student's grid is fixed (the pipeline adds t = 0).
        return plain(sigmas=times, device=device)

    s.set_timesteps = set_timesteps
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, type=Path)
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--prompt")
    ap.add_argument("--negative-prompt", default=None)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--fps", type=int, default=16)
    ap.add_argument("--noise-from")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()

    from diffusers import WanPipeline, WanTransformer3DModel

    sampler_path = a.student / "sampler.json"
    if not sampler_path.is_file():
        sys.exit(f"wan_student_pipeline: {sampler_path}: missing (the export stage writes it)")
    sampler = json.loads(sampler_path.read_text())
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    student = WanTransformer3DModel.from_pretrained(a.student, torch_dtype=dtype)
    pipe = WanPipeline.from_pretrained(
        a.pipeline, transformer=student, scheduler=scheduler_for(sampler), torch_dtype=dtype
    ).to(a.device)
    g = torch.Generator(device="cpu").manual_seed(a.seed)
    common = dict(num_inference_steps=sampler["steps"], guidance_scale=sampler["guidance_scale"], generator=g)
    if a.noise_from:
        from safetensors.torch import load_file

        ref = load_file(a.noise_from)
        noise, text, want = ref["noise"], ref["text"], ref["latents"]
        got = pipe(prompt_embeds=text.to(a.device, dtype), latents=noise.to(a.device, torch.float32),
                   output_type="latent", **common).frames.float().cpu()
        rel = ((got - want).norm() / want.norm()).item()
        print(json.dumps({"check": "wan_pipeline_vs_fastlightgen", "sampler": sampler["kind"],
                          "steps": sampler["steps"], "relative_l2": rel, "tolerance": a.tolerance}))
        sys.exit(0 if rel <= a.tolerance else 1)
    if not a.prompt or not a.out:
        sys.exit("wan_student_pipeline: give --prompt and --out (or --noise-from)")
    video = pipe(prompt=a.prompt, negative_prompt=a.negative_prompt, num_frames=a.frames, height=a.height,
                 width=a.width, output_type="np", **common).frames[0]
    frames = (video * 255).round().clip(0, 255).astype("uint8")
    sys.path.insert(0, str(Path(__file__).parent))
    from wan_decode import write_video

    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_video(a.out, frames, a.fps, "gif" if a.out.suffix == ".gif" else "mp4")
    print(json.dumps({"video": str(a.out), "frames": int(frames.shape[0]), "steps": sampler["steps"],
                      "sampler": sampler["kind"], "guidance_scale": sampler["guidance_scale"]}))


if __name__ == "__main__":
    main()
