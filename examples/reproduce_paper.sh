#!/usr/bin/env bash
# The paper's grid (arXiv 2404.03323, Table 1): CIFAR-10, CIFAR-100, CUB-200, ImageNet, Places365 ×
# Sparse-CBM (gumbel), l1-CBM, contrastive-CBM, cos3 (Label-free-style), plus CMS, zero-shot CLIP and a
# linear probe, all on the same caches and official splits. Writes one results table.
#
#   examples/reproduce_paper.sh            real run: ViT-L/14 (openai) weights + datasets under $CBMCTL_DATA
#   examples/reproduce_paper.sh --smoke    the same grid end-to-end here, on tiny generated datasets in the
#                                          real on-disk formats with a tiny random-weight model (minutes, CPU)
#
# Environment: OUT (default reproduce-out), CBMCTL_DATA (real run), SEEDS (a list like 0,1,2 or a count;
# default 3 seeds, smoke: 1), DATASETS (default "cifar10 cifar100 cub imagenet places365"),
# DEVICE (default auto), CBMCTL (default: the cbmctl on PATH, else python -m cbmctl).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-reproduce-out}
cbmctl=${CBMCTL:-$(command -v cbmctl || echo "python -m cbmctl")}
device=${DEVICE:-auto}
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
mkdir -p "$out"

if [ "$smoke" = 1 ]; then
    seeds=${SEEDS:-1}
    model=(--model "$here/configs/tiny-clip.json" --pretrained none)
    epochs=(--epochs 3)
    python -m cbmctl.datasets.synthetic "$out/data" > "$out/datasets.tsv"
    data() { awk -v n="$1" '$1 == n { print $2 }' "$out/datasets.tsv"; }
else
    seeds=${SEEDS:-3}
    model=(--model ViT-L-14 --pretrained openai)
    epochs=()
    data() { echo "$1"; }  # known names, looked up under $CBMCTL_DATA
fi

datasets=${DATASETS:-cifar10 cifar100 cub imagenet places365}
for dataset in $datasets; do
    echo "== $dataset" >&2
    cache="$out/cache/$dataset.h5"
    $cbmctl embed "$(data $dataset)" --cache "$cache" "${model[@]}" --device "$device" --quiet >&2
    $cbmctl train "$cache" --concepts "$dataset" --compare gumbel,l1,contrastive,cos3,linear-probe,zero-shot \
        --seeds "$seeds" "${epochs[@]}" --device "$device" --out "$out/runs/$dataset" --quiet --json \
        > "$out/$dataset-train.json"
    $cbmctl cms "$cache" --concepts "$dataset" --no-random-control --json > "$out/$dataset-cms.json"
done

python - "$out" $datasets <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
datasets = sys.argv[2:]
table = {}
for name in datasets:
    for row in json.loads((out / f"{name}-train.json").read_text())["rows"]:
        top1 = row["top1"]
        half = "" if top1["ci_high"] is None else f" ± {100 * (top1['ci_high'] - top1['mean']):.2f}"
        table.setdefault(row["method"], {})[name] = f"{100 * top1['mean']:.2f}{half}"
    cms = {r["method"]: r["top1"] for r in json.loads((out / f"{name}-cms.json").read_text())["rows"]}
    table.setdefault("CMS (cos)", {})[name] = f"{100 * cms['CMS cos']:.2f}"
lines = ["| method | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
for method, cells in table.items():
    lines.append(f"| {method} | " + " | ".join(cells.get(d, "-") for d in datasets) + " |")
text = "Top-1 (%) on the official test splits (± half-width of the 95 % interval over seeds)\n\n" + "\n".join(lines) + "\n"
(out / "results.md").write_text(text)
print(text)
PY
