# Sourced by bench/paper.sh and bench/paper-table.sh: when a `make paper` run is done, and
# how a variant is run (`reuse`, `full`). They need `bin` (the fastlightgen binary).
#
# A run directory is done when its eval.json exists and it was made from its config as that
# file is now: each finished run is stamped with its config's sha256. After a change to
# demo-cpu.toml (and `bench/paper_configs.py`), the variants whose configs changed are made
# again from scratch instead of lending stale numbers to the new report. A run from before
# the stamps existed counts as stale.

config_sum() { sha256sum < "$1" | cut -d' ' -f1; }

# run_done CONFIG DIR
run_done() {
  [ -e "$2/eval.json" ] && [ "$(cat "$2/paper-config.sha256" 2>/dev/null)" = "$(config_sum "$1")" ]
}

# fresh_run_dir CONFIG DIR: removes a stale run directory (not done with this config).
fresh_run_dir() {
  if [ -e "$2" ] && ! run_done "$1" "$2"; then
    echo "$2: made from another version of $1; running it again"
    rm -rf "$2"
  fi
}

# stamp_run CONFIG DIR: records that DIR was made from CONFIG as it is now.
stamp_run() { config_sum "$1" > "$2/paper-config.sha256"; }

run_dir() { "$bin" validate --print-run-dir "$1"; }

# reuse CONFIG STAGE...: a variant that shares Stage I (and, without "pruning" among the
# stages, Stage II) with the demo: copy those files from the demo's run and run the stages
# named alone.
reuse() {
  local cfg=$1; shift
  local dir main
  dir=$(run_dir "$cfg")
  main=$(run_dir cluster-configs/demo-cpu.toml)
  if run_done "$cfg" "$dir"; then echo "$dir: done"; return; fi
  fresh_run_dir "$cfg" "$dir"
  mkdir -p "$dir"
  cp "$main/importance.json" "$main/importance.png" "$dir/"
  if [[ " $* " != *" pruning "* ]]; then
    mkdir -p "$dir/pruning"
    cp "$main/pruning/model.safetensors" "$dir/pruning/"
  fi
  local args=()
  for s in "$@"; do args+=(--stage "$s"); done
  "$bin" workers "$cfg" "${args[@]}"
  stamp_run "$cfg" "$dir"
}

# full CONFIG: a variant run from scratch, every stage of its config.
full() {
  local dir; dir=$(run_dir "$1")
  if run_done "$1" "$dir"; then echo "$dir: done"; return; fi
  fresh_run_dir "$1" "$dir"
  "$bin" workers "$1"
  stamp_run "$1" "$dir"
}
