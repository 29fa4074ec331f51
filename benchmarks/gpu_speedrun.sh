#!/usr/bin/env bash
# Time to 99% MNIST test accuracy on one GPU with configs/speedrun.yaml, the mean over seeds.
#   benchmarks/gpu_speedrun.sh [DATA_DIR] [SEEDS...]    (defaults: ../shared/data, seeds 0-4)
# Prints per seed the training seconds (fit wall time: setup, torch.compile, training and
# validation included) and the test accuracy; then the means, the GPU and library versions.
set -euo pipefail
data_dir=${1:-../shared/data}
shift || true
seeds=${*:-0 1 2 3 4}
out=$(mktemp -d)
for seed in $seeds; do
  python -m lit_nnopt fit --config configs/speedrun.yaml --data.data_dir "$data_dir" \
    --seed_everything "$seed" --trainer.default_root_dir "$out/$seed" > "$out/$seed.log" 2>&1
  best=$(python -c "import json,glob; print(json.load(open(glob.glob('$out/$seed/**/summary.json', recursive=True)[0]))['best_checkpoint'])")
  python -m lit_nnopt test --config configs/speedrun.yaml --data.data_dir "$data_dir" \
    --ckpt_path "$best" --trainer.default_root_dir "$out/$seed-test" > "$out/$seed-test.log" 2>&1
done
python - "$out" $seeds <<'PY'
import glob, json, statistics, sys
import torch, lightning
out, seeds = sys.argv[1], sys.argv[2:]
rows = []
for seed in seeds:
    fit = json.load(open(glob.glob(f"{out}/{seed}/**/summary.json", recursive=True)[0]))
    test = json.load(open(glob.glob(f"{out}/{seed}-test/**/summary.json", recursive=True)[0]))
    rows.append((fit["wall_seconds"], test["final"]["test_acc"]))
    print(f"seed {seed}: fit {rows[-1][0]:.2f} s, test_acc {rows[-1][1]:.4f}")
print(f"mean over {len(rows)} seeds: fit {statistics.mean(r[0] for r in rows):.2f} s, "
      f"test_acc {statistics.mean(r[1] for r in rows):.4f}, min test_acc {min(r[1] for r in rows):.4f}")
print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, lightning {lightning.__version__}")
PY
