"""The diffusers side of fastlightgen's interop tests (tests/tests/integration/interop.rs).

    diffusers_wan.py make DIR      a tiny random WanTransformer3DModel saved sharded in DIR/model
                                   (and in fp16 in DIR/model16), inputs and diffusers' output in
                                   DIR/io.safetensors
    diffusers_wan.py check OUT REF [--dtype f32|bf16] [--keep 0,2]
                                   OUT (a folder fastlightgen wrote) loads strictly in diffusers;
                                   every tensor equals REF's (blocks --keep of REF, renumbered),
                                   bit for bit after casting REF to --dtype; with every block
                                   kept, the forward on DIR's inputs equals REF's

Nothing is downloaded; CPU, float32. Exits 1 with the reason on any mismatch.
"""
import copy
import json
import sys
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

# H != W, an odd number of frames, two heads, three blocks: small, not square, Wan-shaped.
CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=24,
    freq_dim=32,
    ffn_dim=48,
    num_layers=3,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)


def fail(msg):
    print(f"diffusers_wan.py: {msg}", file=sys.stderr)
    sys.exit(1)


def randomise(model):
    """Random values everywhere, norms, biases and scale-shift tables included, so that a
    swapped or dropped tensor shows in the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias") or "scale_shift_table" in name:
                v = 0.1 * torch.randn(p.shape, generator=g)
            else:
                fan_in = max(1, p[0].numel())
                v = torch.randn(p.shape, generator=g) / fan_in**0.5
            p.copy_(v)


def forward(model, io):
    with torch.no_grad():
        return model(
            hidden_states=io["x"],
            timestep=io["t"] * 1000.0,
            encoder_hidden_states=io["text"],
            return_dict=False,
        )[0]


def make(out):
    out = Path(out)
    model = WanTransformer3DModel(**CONFIG).eval()
    randomise(model)
    # Small shards so that the folder has several files and an index, as Wan-AI's have.
    model.save_pretrained(out / "model", max_shard_size="40KB", safe_serialization=True)
    copy.deepcopy(model).to(torch.float16).save_pretrained(out / "model16", safe_serialization=True)
    shards = sorted((out / "model").glob("*.safetensors"))
    if len(shards) < 2 or not list((out / "model").glob("*.index.json")):
        fail(f"expected a sharded folder, got {[s.name for s in shards]}")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 5, 6, 8, generator=g)
    t = torch.tensor([0.7, 0.25])
    text = torch.randn(2, 7, 24, generator=g)
    text[1, 4:] = 0.0  # zero-padded prompt, as Wan's pipeline pads to 512 tokens
    io = {"x": x, "t": t, "text": text}
    io["out"] = forward(model, io).contiguous()
    save_file(io, str(out / "io.safetensors"))
    print(json.dumps({"shards": len(shards), "params": sum(p.numel() for p in model.parameters())}))


def check(out, ref, dtype="f32", keep=None):
    kind = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    reference = WanTransformer3DModel.from_pretrained(ref)
    model, info = WanTransformer3DModel.from_pretrained(out, output_loading_info=True, torch_dtype=kind)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(k):
            fail(f"{out}: {k}: {info[k]}")
    keep = list(range(reference.config.num_layers)) if keep is None else keep
    if model.config.num_layers != len(keep):
        fail(f"{out}: num_layers {model.config.num_layers}, expected {len(keep)}")
    ref_sd = reference.state_dict()
    got = model.state_dict()
    expected = {}
    for name, t in ref_sd.items():
        if name.startswith("blocks."):
            b, rest = name.split(".", 2)[1:]
            if int(b) not in keep:
                continue
            name = f"blocks.{keep.index(int(b))}.{rest}"
        expected[name] = t.to(kind)
    if set(expected) != set(got):
        fail(f"{out}: keys differ: {sorted(set(expected) ^ set(got))[:8]}")
    for name, t in expected.items():
        # diffusers keeps some modules in f32 (scale-shift tables, norms): compare in `kind`.
        if not torch.equal(got[name].to(kind), t):
            fail(f"{out}: {name} differs from the reference ({got[name].dtype})")
    # Every file on disk holds the dtype asked for.
    for f in Path(out).glob("*.safetensors"):
        for name, t in load_file(str(f)).items():
            if t.dtype != kind:
                fail(f"{f}: {name} is {t.dtype}, expected {kind}")
    if len(keep) == reference.config.num_layers and dtype == "f32":
        io = load_file(str(Path(ref).parent / "io.safetensors"))
        if not torch.equal(forward(model.eval(), io), io["out"]):
            fail(f"{out}: the forward differs from the reference model's")
    print(json.dumps({"checked": out, "tensors": len(got), "dtype": dtype, "blocks": keep}))


def main(argv):
    if len(argv) >= 2 and argv[0] == "make":
        return make(argv[1])
    if len(argv) >= 3 and argv[0] == "check":
        dtype, keep = "f32", None
        rest = argv[3:]
        while rest:
            if rest[0] == "--dtype":
                dtype, rest = rest[1], rest[2:]
            elif rest[0] == "--keep":
                keep, rest = [int(b) for b in rest[1].split(",")], rest[2:]
            else:
                fail(f"unknown argument {rest[0]}")
        return check(argv[1], argv[2], dtype, keep)
    print(__doc__, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
