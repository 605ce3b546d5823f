"""`make demo`: caption a handful of generated sample images with the built-in trained LLaVA-1.5 model.

Everything is local: images written to OUT/demo-images, a private Ray, Parquet in OUT/captions. The sample
images come with their true answers, so the printed rows can be checked by eye (or by the last column).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pyarrow.parquet as pq

from llava_batch.jobs.caption import CaptionConfig, run_caption
from llava_batch.pipeline.run.ray_cluster import shutdown
from llava_batch.training.shapes import samples

DEMO_IMAGES = 12
DEMO_SEED = 2026


def write_demo_images(folder: Path) -> tuple[str, dict[str, str]]:
    """Writes the images; returns the task's prompt and the expected answer per file name."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    demo_samples = samples("llava", "heldout", DEMO_IMAGES, seed=DEMO_SEED)
    for index, sample in enumerate(demo_samples):
        name = f"sample-{index:02d}.png"
        sample.images[0].save(folder / name)
        expected[name] = sample.answer
    return demo_samples[0].prompt, expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out", help="folder for the images and the Parquet output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    out = Path(args.out).resolve()
    prompt, expected = write_demo_images(out / "demo-images")
    config = CaptionConfig(
        input=str(out / "demo-images"),
        output=str(out / "captions"),
        model="builtin:llava",
        prompt=prompt,
        max_new_tokens=16,
        batch_size=4,
        gpus_per_replica=0,
        overwrite=True,
    )
    try:
        result = run_caption(config)
    finally:
        shutdown()

    # The run's summary first, then the truth table: the table is the demo's point, so it ends the screen.
    print(result.summary)
    rows = sorted(pq.read_table(out / "captions").to_pylist(), key=lambda row: row["id"])
    correct = sum(row["generated_text"] == expected[row["id"]] for row in rows)
    print()
    print(f"prompt: {prompt!r}   model: {config.model}")
    print(f"{'image':<16} {'generated_text':<30} {'true answer':<30} ok")
    for row in rows:
        mark = "yes" if row["generated_text"] == expected[row["id"]] else "NO"
        print(
            f"{row['id']:<16} {row['generated_text'] or row['error']!s:<30} {expected[row['id']]:<30} {mark}"
        )
    print(f"\n{correct}/{len(rows)} captions match the true answer; open {out / 'demo-images'} to look.")
    return 0 if rows and len(rows) == len(expected) else 1


if __name__ == "__main__":
    sys.exit(main())
