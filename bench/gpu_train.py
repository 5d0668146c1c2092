"""Train the shipped default U-Net on a synthetic cohort, then measure it (GPU machine).

Runs with numpy, scipy, torch and pydicom only (the GPU machine has no other calcpipe
dependencies). Renders the cohort in parallel on the CPU cores, trains on the GPU, and
evaluates on a held-out cohort from a seed never used for training. Writes to --out:
default.pt (the checkpoint), accuracy.json and train_log.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calcpipe.models.accuracy import evaluate, format_summary
from calcpipe.models.checkpoint import load_checkpoint
from calcpipe.models.segment import UNetSegmenter
from calcpipe.models.train import TrainConfig, data_hash, prepare_study, train
from calcpipe.models.unet import UNetConfig
from calcpipe.synthetic import SIMULATOR, Randomisation, render_study, sample_spec
from calcpipe.synthetic.phantom import render_phantom

TRAIN_SEED, TEST_SEED = 1000, 9001
PHANTOM_SEED = 2000  # bench_accuracy's held-out phantoms come from 9002
CONFIG = TrainConfig(unet=UNetConfig(base=8, depth=4, convs_per_block=1, context=1),
                     model_spacing_mm=1.0, patch=160, batch=64, max_steps=6000,
                     eval_every=250, patience=8)


def _prepared(args: tuple[int, int, bool, int]) -> object:
    seed, index, randomise, matrix = args
    spec = sample_spec(seed, index, matrix=matrix,
                       randomisation=Randomisation.training() if randomise else None)
    rendered = render_study(spec)
    return prepare_study(f"{seed}:{index}", rendered.hu, rendered.labels,
                         rendered.spacing_mm, CONFIG)


def _prepared_phantom(args: tuple[int, int]) -> object:
    seed, index = args
    phantom = render_phantom(seed, index)
    return prepare_study(f"phantom{seed}:{index}", phantom.hu, phantom.labels,
                         phantom.spacing_mm, CONFIG)


def _raw(args: tuple[int, int, int]) -> tuple[object, object, object, float]:
    seed, index, matrix = args
    spec = sample_spec(seed, index, matrix=matrix)
    rendered = render_study(spec)
    return rendered.hu, rendered.labels, rendered.spacing_mm, spec.scanner.kvp


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=150)
    parser.add_argument("--val", type=int, default=25)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--phantoms", type=int, default=0,
                        help="randomised calcium phantoms added to the training set")
    parser.add_argument("--val-phantoms", type=int, default=0,
                        help="randomised calcium phantoms added to the validation set")
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--minutes", type=float,
                        help="stop training after this many minutes (default: the config's)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="gpu_out")
    parser.add_argument("--small", action="store_true", help="tiny CPU smoke run")
    parser.add_argument("--init", help="fine-tune this checkpoint instead of starting afresh")
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--batch", type=int, help="batch size (default: the config's)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the config's)")
    parser.add_argument("--small-lesion-weight", type=float,
                        help="TrainConfig.small_lesion_weight (default: the config's)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        log_lines.append(line)

    global CONFIG
    if args.small:
        CONFIG = TrainConfig(unet=UNetConfig(base=4, depth=3, context=1), patch=64, batch=8,
                             max_steps=20, eval_every=10, model_spacing_mm=2.0)
    changes = {"max_steps": args.steps, "batch": args.batch, "learning_rate": args.lr,
               "max_minutes": args.minutes, "small_lesion_weight": args.small_lesion_weight}
    CONFIG = replace(CONFIG, **{k: v for k, v in changes.items() if v is not None})
    init_state = None
    if args.init:
        init = load_checkpoint(args.init)
        init_state = {k: torch.as_tensor(v) for k, v in init.payload["state_dict"].items()}
        if init.payload["config"] != CONFIG.unet.to_dict():
            parser.error(f"{args.init} has a different architecture: {init.payload['config']}")
    started = time.monotonic()
    n_train = args.train + args.val
    with ProcessPoolExecutor(args.workers) as pool:
        prepared = list(pool.map(_prepared, [(TRAIN_SEED, i, i < args.train, args.matrix)
                                            for i in range(n_train)]))
        phantoms = list(pool.map(_prepared_phantom, [
            (PHANTOM_SEED, i) for i in range(args.phantoms + args.val_phantoms)]))
        test = list(pool.map(_raw, [(TEST_SEED, i, args.matrix) for i in range(args.test)]))
    log(f"rendered {n_train} training/validation studies, {len(phantoms)} phantoms and "
        f"{args.test} test studies in {time.monotonic() - started:.0f} s")
    train_set = prepared[: args.train] + phantoms[: args.phantoms]
    val_set = prepared[args.train :] + phantoms[args.phantoms :]
    prepared += phantoms
    description = {
        "data": f"synthetic cohort seed {TRAIN_SEED}, studies 0-{args.train - 1} with domain "
                f"randomisation (train), {args.train}-{n_train - 1} calibrated (validation), "
                f"matrix {args.matrix}",
        "simulator": SIMULATOR,
        "phantoms": (f"calcpipe.synthetic.phantom seed {PHANTOM_SEED}, phantoms "
                     f"0-{args.phantoms - 1} (train), {args.phantoms}-"
                     f"{args.phantoms + args.val_phantoms - 1} (validation); insert "
                     f"calcium labelled LAD by convention") if phantoms else "none",
        "data_hash": data_hash(prepared),
        "test_cohort": f"seed {TEST_SEED}, {args.test} studies (never used in training)",
    }
    if args.init:
        description["fine_tuned_from"] = f"{init.model_id} sha256 {init.sha256}"
    result = train(train_set, val_set, CONFIG, out / "default.pt", description=description,
                   device=args.device, init_state=init_state, log=log)
    log(f"training: {result['steps']} steps in {result['minutes']:.1f} min, best validation "
        f"coronary Dice {result['best_val_coronary_dice']:.4f}")
    (out / "train_log.txt").write_text("\n".join(log_lines) + "\n")
    if not test:
        return 0
    checkpoint = load_checkpoint(out / "default.pt")
    segmenter = UNetSegmenter(checkpoint, device=args.device, precision="fp32")
    t0 = time.monotonic()
    report = evaluate(segmenter, test)
    seg_seconds = time.monotonic() - t0
    summary = report.summary()
    log("held-out accuracy (fp32):\n" + format_summary(summary))
    timings = {}
    if args.device == "cuda":
        fast = UNetSegmenter(checkpoint, device="cuda", precision="bf16", batch_size=64)
        fast.segment(*test[0][:1], test[0][2])
        torch.cuda.synchronize()
        timed = test[:30]
        t0 = time.monotonic()
        for hu, _, spacing, kvp in timed:
            fast.segment(hu, spacing, kvp=kvp)
        torch.cuda.synchronize()
        elapsed = time.monotonic() - t0
        timings = {"bf16_studies_per_s": len(timed) / elapsed,
                   "gpu": torch.cuda.get_device_name(0)}
        log(f"segmentation on {timings['gpu']}, bf16, one process: "
            f"{timings['bf16_studies_per_s']:.1f} studies/s (includes CPU resampling)")
    (out / "accuracy.json").write_text(json.dumps(
        {"summary": summary, "training": result, "description": description,
         "eval_seconds_fp32": seg_seconds, "timings": timings}, indent=1, default=str))
    (out / "train_log.txt").write_text("\n".join(log_lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
