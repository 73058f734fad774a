"""Train ``builtin:tiny-dit``, the small class-conditional DiT that ships with cachec.

cachec needs a real, trained diffusion transformer to compile and to measure
its caching on: the step-to-step similarity of features that caching exploits
only exists in a trained denoiser. Nothing can be downloaded, so this script
trains one from a seed, on 2 CPU cores, in about twelve minutes, on the procedural shapes
of ``tools/tiny_dit_data.py``.

The model is a stock ``diffusers.DiTTransformer2DModel`` in pixel space (16x16
RGB in [-1, 1], patch size 2, adaLN-Zero, one class embedding per class plus the
null class for classifier-free guidance). The schedule is the DiT papers':
1000-step linear-beta DDPM training with epsilon prediction, sampled with DDIM.
The loss is the standard epsilon MSE, the optimiser AdamW with a short warm-up
and cosine decay, and the shipped weights are an exponential moving average.

Every random draw comes from ``--seed`` (weights init, data stream, timesteps,
noise, label dropout) and the thread count is fixed, so a rerun on the same
machine gives bit-identical weights.

    python tools/train_tiny_dit.py --seed 0 --steps 2200 --batch-size 64 --out cachec/builtin/tiny_dit
"""

import argparse
import copy
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler
from tqdm import tqdm

# Run as a script, tools/ (eval_tiny_dit) is on sys.path but the repository root (cachec) is not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval_tiny_dit import evaluate, fit_judge, format_table, init_model
from tiny_dit_data import CLASS_NAMES, NUM_CLASSES, make_shapes

MODEL_CONFIG = {
    "sample_size": 16,
    "in_channels": 3,
    "out_channels": 3,  # epsilon only: no learned variance
    "patch_size": 2,
    "num_layers": 6,
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "norm_type": "ada_norm_zero",
    "num_embeds_ada_norm": NUM_CLASSES,  # the embedding table has one more row: the null class
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "clip_sample": True,  # the data lives in [-1, 1]
}
CLASS_DROPOUT = 0.1  # probability of training a sample on the null class (classifier-free guidance)
# beta2 = 0.95 instead of 0.999: with only a few thousand steps the second-moment
# estimate must follow the quickly changing gradients (measured: clearly better samples).
ADAM_BETAS = (0.9, 0.95)


def ema_decay(step: int, max_decay: float) -> float:
    """EMA decay with warm-up, ``(1 + step) / (10 + step)`` capped at ``max_decay``, as diffusers' EMAModel.

    A short run cannot afford a long-memory average of its early, poor weights.
    """
    return min(max_decay, (1 + step) / (10 + step))


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def batch_seed(seed: int, step: int) -> int:
    """The data seed of one training step: independent streams per (seed, step)."""
    return int(np.random.SeedSequence((seed, step)).generate_state(1)[0])


def train(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """Train from ``args.seed``; returns (untrained init, EMA model, training record)."""
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    np.random.seed(args.seed)  # the script's own draws use seeded generators; this covers any library that doesn't

    model = init_model(MODEL_CONFIG, args.seed)
    untrained = copy.deepcopy(model).eval()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    # diffusers drops labels inside every block's own embedding, independently
    # per block; classifier-free guidance wants one consistent null label per
    # sample, so the dropout is done here instead, before the forward pass.
    for module in model.modules():
        if isinstance(module, diffusers.models.embeddings.LabelEmbedding):
            module.dropout_prob = 0.0
    model.train()

    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=ADAM_BETAS, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)

    losses = []
    start = time.perf_counter()
    progress = tqdm(range(args.steps), desc="train tiny-dit", dynamic_ncols=True)
    for step in progress:
        images, labels = make_shapes(args.batch_size, batch_seed(args.seed, step), MODEL_CONFIG["sample_size"])
        drop = torch.rand(args.batch_size, generator=generator) < CLASS_DROPOUT
        labels = torch.where(drop, NUM_CLASSES, labels)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=generator)
        noise = torch.randn(images.shape, generator=generator)
        noisy = scheduler.add_noise(images, noise, timesteps)

        prediction = model(hidden_states=noisy, timestep=timesteps, class_labels=labels, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(prediction, noise)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        decay = ema_decay(step, args.ema_decay)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 1.0 - decay)

        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            progress.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
    wall = time.perf_counter() - start

    record = {
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_schedule": f"linear warm-up {args.warmup} steps, cosine decay to 0",
        "optimizer": f"AdamW(betas={ADAM_BETAS}, weight_decay=0), grad-norm clip 1.0",
        "ema_decay": args.ema_decay,
        "class_dropout": CLASS_DROPOUT,
        "threads": args.threads,
        "final_loss": float(np.mean(losses[-100:])),
        "final_loss_note": "mean epsilon-MSE of the last 100 training steps",
        "loss_per_100_steps": [round(float(np.mean(losses[i : i + 100])), 5) for i in range(0, len(losses), 100)],
        "train_wall_time_s": round(wall, 1),
        "classes": list(CLASS_NAMES),
        "null_class_id": NUM_CLASSES,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
    }
    return untrained, ema, record


def save(out: Path, model: torch.nn.Module, record: dict) -> None:
    """Write the checkpoint to a temporary directory next to ``out``, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp / "scheduler")
    (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    # mkdtemp (and safetensors) create owner-only files; the checkpoint is package data.
    tmp.chmod(0o755)
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    if out.exists():
        old = out.with_name(f".{out.name}-old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=6e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="maximum EMA decay")
    parser.add_argument("--threads", type=int, default=2, help="torch threads; results are bit-exact for a fixed count")
    parser.add_argument("--out", type=Path, default=Path("cachec/builtin/tiny_dit"))
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation (quick reproducibility checks)")
    args = parser.parse_args()

    untrained, model, record = train(args)
    if not args.no_eval:
        start = time.perf_counter()
        judge = fit_judge(MODEL_CONFIG["sample_size"])
        scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
        results = {"trained": evaluate(model, scheduler, judge), "untrained": evaluate(untrained, scheduler, judge)}
        record["evaluation"] = results
        record["eval_wall_time_s"] = round(time.perf_counter() - start, 1)
        print(f"judge accuracy on held-out real images: {judge.real_accuracy:.3f}")
        print(format_table(results))
    save(args.out, model, record)
    print(f"final loss {record['final_loss']:.4f}, training {record['train_wall_time_s']:.0f} s, wrote {args.out}")


if __name__ == "__main__":
    main()
