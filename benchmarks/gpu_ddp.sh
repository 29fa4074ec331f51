#!/usr/bin/env bash
# DDP on every GPU of this machine (one when it has one): throughput and accuracy of configs/cnn.yaml.
#   benchmarks/gpu_ddp.sh [DATA_DIR] [EPOCHS]    (defaults: ../shared/data, 2)
set -euo pipefail
data_dir=${1:-../shared/data}
epochs=${2:-2}
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 1 ]; then echo "no GPU found" >&2; exit 1; fi
out=$(mktemp -d)
python -m lit_nnopt fit --config configs/cnn.yaml --data.data_dir "$data_dir" \
  --trainer.accelerator gpu --trainer.devices "$gpus" --trainer.strategy ddp \
  --trainer.max_epochs "$epochs" --trainer.logger false --trainer.default_root_dir "$out" > "$out/fit.log" 2>&1
python - "$out" "$gpus" <<'PY'
import glob, json, sys
import torch, lightning
out, gpus = sys.argv[1], int(sys.argv[2])
summary = json.load(open(glob.glob(f"{out}/**/summary.json", recursive=True)[0]))
times = [row["elapsed_seconds"] for row in summary["history"]]
per_epoch = [b - a for a, b in zip(times, times[1:])] or times
print(f"{gpus} x {torch.cuda.get_device_name()}: {48000 / min(per_epoch):.0f} training images/s "
      f"(best epoch after the first, validation included), val_acc {summary['final']['val_acc']:.4f} "
      f"after {summary['epochs_run']} epochs; torch {torch.__version__}, lightning {lightning.__version__}")
PY
