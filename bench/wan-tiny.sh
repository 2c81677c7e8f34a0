#!/usr/bin/env bash
# The real Wan path at toy size (cluster-configs/wan-tiny-cpu.toml): tiny random Wan
# components -> `fastlightgen data encode` -> validate -> Stage I-III + export on 2 MPI ranks
# under the coordinator -> the student sampled by fastlightgen and by diffusers' WanPipeline
# (which must agree) -> decoded to mp4 and GIF. A few minutes on 2 cores; nothing downloaded.
#
#   bench/wan-tiny.sh            in the repository (writes runs/wan-tiny-inputs, runs/wan-tiny)
#   (cd /tmp/x && /repo/bench/wan-tiny.sh)   anywhere else: paths are relative to the cwd
#
# Each step prints what it made; the last line is one JSON summary. Rerunning resumes (the
# encoding and the run continue); `rm -rf runs/wan-tiny runs/wan-tiny-inputs` starts over.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
FLG=$REPO/target/release/fastlightgen
PY=${FLG_PYTHON:-$REPO/.venv/bin/python}
CFG=$REPO/cluster-configs/wan-tiny-cpu.toml
IN=runs/wan-tiny-inputs
RUN=runs/wan-tiny
t0=$(date +%s)
step() { echo "== wan-tiny: $* ($(( $(date +%s) - t0 )) s)"; }

step "tiny random Wan components and 12 clips"
if [ ! -f "$IN/pipeline/model_index.json" ]; then
  "$PY" "$REPO/tools/wan_tiny.py" "$IN/pipeline" --clips 12 --text-dim 32 --z-dim 4 --blocks 6
fi

step "encode the clips (VAE latents, umT5 embeddings, the negative prompt's embedding)"
"$FLG" data encode data --captions "$IN/pipeline/clips/captions.jsonl" --pipeline "$IN/pipeline" \
  --out "$IN/data" --frames 9 --height 32 --width 48 --text-len 16 --shard-size 4 --dtype bf16

step "validate (headers of the diffusers transformer, the data, the null prompt)"
"$FLG" validate "$CFG"

step "Stage I-III and export on 2 ranks"
"$FLG" run "$CFG"
test -f "$RUN/export/diffusers/config.json" && test -f "$RUN/export/diffusers/sampler.json"

step "the student sampled by fastlightgen from two encoded prompts"
printf 'a red square moves left\na blue square moves right\n' > "$IN/prompts.txt"
"$FLG" data encode prompts --prompts "$IN/prompts.txt" --pipeline "$IN/pipeline" \
  --out "$IN/prompts.safetensors" --text-len 16
"$FLG" sample --model "$RUN/export/student.safetensors" --text-embeddings "$IN/prompts.safetensors" \
  --latent 4,5,8,12 --out "$RUN/samples-latent"

step "the exported diffusers student in WanPipeline from the same noise and prompts"
check=$("$PY" "$REPO/tools/wan_student_pipeline.py" --student "$RUN/export/diffusers" \
  --pipeline "$IN/pipeline" --noise-from "$RUN/samples-latent/latents.safetensors" 2>/dev/null | tail -1)
echo "$check"

step "decode to mp4; a GIF straight from WanPipeline"
"$PY" "$REPO/tools/wan_decode.py" --latents "$RUN/samples-latent/latents.safetensors" \
  --pipeline "$IN/pipeline" --out "$RUN/videos" 2>/dev/null | tail -1
"$PY" "$REPO/tools/wan_student_pipeline.py" --student "$RUN/export/diffusers" --pipeline "$IN/pipeline" \
  --prompt "a green square moves left" --frames 9 --height 32 --width 48 --out "$RUN/videos/pipeline.gif" \
  2>/dev/null | tail -1
test -s "$RUN/videos/video-0000.mp4" && test -s "$RUN/videos/pipeline.gif"
echo "{\"wan_tiny\": \"ok\", \"seconds\": $(( $(date +%s) - t0 )), \"pipeline_check\": $check}"
