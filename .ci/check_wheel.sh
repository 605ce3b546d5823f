#!/usr/bin/env bash
# The library as a user installs it: build the wheel from this checkout, install it into a fresh virtualenv, and run
# the CLI and the Python API with the built-in checkpoint from a folder outside the checkout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1

python3 -m venv "$work/venv"
bin="$work/venv/bin"
"$bin/pip" install --quiet --upgrade pip
"$bin/pip" wheel --quiet --no-deps --wheel-dir "$work/dist" "$root"
"$bin/pip" install --quiet -c "$root/constraints-cpu.txt" "$work"/dist/llava_batch-*.whl
echo "check_wheel: installed $(cd "$work/dist" && ls llava_batch-*.whl)"

cd "$work"  # outside the checkout: nothing can be imported from the repository's folders
"$bin/python" - <<'PY'
import importlib.util
import pathlib
import sysconfig

site = pathlib.Path(sysconfig.get_paths()["purelib"])
stray = [name for name in ("pipeline", "jobs", "operators", "training", "models") if (site / name).exists()]
assert not stray, f"site-packages holds top-level {stray}: only llava_batch may be installed"
package = pathlib.Path(importlib.util.find_spec("llava_batch").origin).parent
assert package.parent == site, package
for family in ("llava", "llava_next", "vipllava", "llava_interleave"):
    assert (package / "models" / family / "model.safetensors").is_file(), f"builtin:{family} missing"
print("check_wheel: one top-level package, built-in checkpoints inside")
PY

# Shape images whose true captions are known (the demo's), so the captions themselves are checked.
"$bin/python" - <<'PY'
import json
from pathlib import Path

from llava_batch.jobs.demo import write_demo_images

prompt, expected = write_demo_images(Path("images"))
Path("truth.json").write_text(json.dumps({"prompt": prompt, "expected": expected}))
PY
prompt=$("$bin/python" -c "import json; print(json.load(open('truth.json'))['prompt'])")
"$bin/llava-batch" caption --input images --output captions --model builtin:llava --max-new-tokens 16 \
    --prompt "$prompt" --limit 4 >caption.log 2>&1 || { cat caption.log; exit 1; }
"$bin/python" - <<'PY'
import json

import pyarrow.parquet as pq

expected = json.load(open("truth.json"))["expected"]
rows = pq.read_table("captions").to_pylist()
assert len(rows) == 4 and all(row["error"] is None for row in rows), rows
correct = sum(row["generated_text"] == expected[row["id"]] for row in rows)
assert correct >= 3, [(row["id"], row["generated_text"], expected[row["id"]]) for row in rows]
print(f"check_wheel: llava-batch caption --model builtin:llava: {correct} of {len(rows)} captions true")
PY

"$bin/python" - <<'PY'
import json
import pathlib

import ray

import llava_batch

truth = json.load(open("truth.json"))
images = sorted(pathlib.Path("images").glob("*.png"))[:4]
processor = llava_batch.build_processor(model="builtin:llava", prompt=truth["prompt"], max_new_tokens=16)
rows = processor(ray.data.from_items([{"name": p.name, "image": p.read_bytes()} for p in images])).take_all()
assert sorted(row["name"] for row in rows) == [p.name for p in images], rows
correct = sum(row["error"] is None and row["generated_text"] == truth["expected"][row["name"]] for row in rows)
assert correct >= 3, rows
print(f"check_wheel: llava_batch.build_processor(...)(dataset): {correct} of {len(rows)} captions true")
PY
