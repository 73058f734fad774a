"""Evaluate ``builtin:tiny-dit``: show that its samples look like its training data and an untrained model's do not.

A diffusion model is "trained" when its samples follow the data distribution,
so the evaluation samples the model and compares the samples with fresh real
images from ``tools/tiny_dit_data.py``. The judge is a small CNN classifier fit here, on
real images only (it never sees a sample), from a fixed seed:

* class accuracy -- the fraction of class-conditional samples the judge assigns
  to the class they were conditioned on (chance is 1 / NUM_CLASSES); it checks
  that the model draws the right shape in the right colour family;
* Fréchet distance -- between Gaussians fit to the judge's penultimate-layer
  features of the samples and of real images (the FID recipe with a judge that
  knows this data instead of Inception); it checks that the samples' spread of
  shapes, sizes, positions and colours matches the data's. A finite sample set
  has a non-zero distance even from real data, so the same distance for fresh
  real images of the same count is reported as the floor.

Sampling is a plain diffusers loop (DDIM, eta = 0, 50 steps by default, no
classifier-free guidance unless asked), kept here rather than borrowed from
cachec so that the evaluation does not depend on the code it helps to test.

    python tools/eval_tiny_dit.py --model cachec/builtin/tiny_dit [--grid /tmp/samples.png]

evaluates the shipped checkpoint and, as the baseline, the same architecture
initialised from the same seed without training.
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel
from torch import nn

# Run as a script from a checkout, the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_dit_data import CLASS_NAMES, NUM_CLASSES, make_shapes  # beside this script (tools/)

# Data seeds of the evaluation; the training stream derives its seeds with
# numpy.random.SeedSequence, so these fixed sets are independent of it.
JUDGE_TRAIN_SEED = 10_001
JUDGE_TEST_SEED = 10_002
REFERENCE_SEED = 10_003
FLOOR_SEED = 10_004


class JudgeNet(nn.Module):
    """Small CNN classifier of the shapes data; ``features`` is its penultimate layer."""

    def __init__(self, num_classes: int = NUM_CLASSES, feature_dim: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.LazyLinear(feature_dim),
            nn.GELU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@torch.no_grad()
def judge_features(net: JudgeNet, images: torch.Tensor) -> np.ndarray:
    """Penultimate-layer features of ``images`` as float64 numpy, for the Fréchet distance."""
    return torch.cat([net.features(chunk) for chunk in images.split(512)]).double().numpy()


@torch.no_grad()
def judge_predict(net: JudgeNet, images: torch.Tensor) -> torch.Tensor:
    """Predicted class of each image."""
    return torch.cat([net(chunk).argmax(1) for chunk in images.split(512)])


@dataclass
class Judge:
    """The fitted classifier, its held-out accuracy on real data, and real-feature statistics."""

    net: JudgeNet
    size: int
    real_accuracy: float
    reference_mean: np.ndarray
    reference_cov: np.ndarray

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return judge_predict(self.net, images)

    def frechet_distance(self, images: torch.Tensor) -> float:
        feats = judge_features(self.net, images)
        return frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), self.reference_mean, self.reference_cov)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2).

    ``tr(sqrt(cov1 cov2))`` is the sum of the square roots of the eigenvalues of
    ``sqrt(cov1) cov2 sqrt(cov1)``, a symmetric PSD matrix, which avoids scipy
    and the complex round-off of a general matrix square root.
    """
    vals, vecs = np.linalg.eigh(cov1)
    sqrt1 = (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(sqrt1 @ cov2 @ sqrt1)
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2.0 * np.sqrt(np.clip(cross, 0.0, None)).sum()
    )


def fit_judge(size: int = 16, n_train: int = 20_000, steps: int = 600, n_reference: int = 2_000) -> Judge:
    """Fit the judge on real images from fixed seeds; deterministic, about 30 s on 2 CPU cores."""
    images, labels = make_shapes(n_train, JUDGE_TRAIN_SEED, size)
    generator = torch.Generator().manual_seed(JUDGE_TRAIN_SEED)
    torch.manual_seed(JUDGE_TRAIN_SEED)  # LazyLinear and the default inits draw from the global RNG
    net = JudgeNet()
    net(images[:1])  # materialise LazyLinear before the optimiser sees the parameters
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for _ in range(steps):
        batch = torch.randint(0, n_train, (128,), generator=generator)
        loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()

    test_images, test_labels = make_shapes(2_000, JUDGE_TEST_SEED, size)
    accuracy = float((judge_predict(net, test_images) == test_labels).float().mean())
    reference = judge_features(net, make_shapes(n_reference, REFERENCE_SEED, size)[0])
    return Judge(net, size, accuracy, reference.mean(0), np.cov(reference, rowvar=False))


@torch.no_grad()
def sample(
    model: DiTTransformer2DModel,
    scheduler: DDIMScheduler,
    labels: torch.Tensor,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Class-conditional DDIM (eta = 0) samples in [-1, 1], shape (len(labels), C, H, W).

    With ``guidance_scale != 1`` the prediction is classifier-free guided against
    the null class ``model.config.num_embeds_ada_norm``.
    """
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), config.in_channels, config.sample_size, config.sample_size, generator=generator)
    null = torch.full_like(labels, config.num_embeds_ada_norm)
    scheduler.set_timesteps(num_inference_steps)
    for t in scheduler.timesteps:
        if guidance_scale == 1.0:
            eps = model(hidden_states=x, timestep=t.expand(len(x)), class_labels=labels, return_dict=False)[0]
        else:
            both = model(
                hidden_states=torch.cat([x, x]),
                timestep=t.expand(2 * len(x)),
                class_labels=torch.cat([labels, null]),
                return_dict=False,
            )[0]
            cond, uncond = both.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        x = scheduler.step(eps, t, x, eta=0.0, return_dict=False)[0]
    return x.clamp(-1.0, 1.0)


def evaluate(
    model: DiTTransformer2DModel,
    scheduler: DDIMScheduler,
    judge: Judge | None = None,
    samples_per_class: int = 32,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
) -> dict:
    """Class accuracy and Fréchet distance of ``model``'s samples, plus the real-data references.

    Pass a ``judge`` from :func:`fit_judge` to evaluate several models against the
    same judge without refitting it.
    """
    judge = judge or fit_judge(model.config.sample_size)
    model.eval()
    labels = torch.arange(NUM_CLASSES).repeat_interleave(samples_per_class)
    images = sample(model, scheduler, labels, num_inference_steps, guidance_scale, seed)
    predicted = judge.predict(images)
    per_class = [(predicted[labels == c] == c).float().mean().item() for c in range(NUM_CLASSES)]
    real_floor = judge.frechet_distance(make_shapes(len(labels), FLOOR_SEED, judge.size)[0])
    return {
        "class_accuracy": float((predicted == labels).float().mean()),
        "per_class_accuracy": dict(zip(CLASS_NAMES, per_class, strict=True)),
        "frechet_distance": judge.frechet_distance(images),
        "real_data_frechet_floor": real_floor,
        "judge_accuracy_on_real": judge.real_accuracy,
        "num_samples": len(labels),
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "sampling_seed": seed,
    }


def init_model(config: dict, seed: int) -> DiTTransformer2DModel:
    """A freshly initialised DiT; the training script starts from exactly this, so it is also the untrained baseline."""
    torch.manual_seed(seed)
    return DiTTransformer2DModel.from_config(config)


def format_table(results: dict[str, dict]) -> str:
    """A short text table of the headline numbers, one row per evaluated model."""
    lines = [f"{'model':<10} {'class acc':>9} {'Fréchet':>9} {'real floor':>10}"]
    for name, r in results.items():
        lines.append(
            f"{name:<10} {r['class_accuracy']:>9.3f} {r['frechet_distance']:>9.2f} {r['real_data_frechet_floor']:>10.2f}"
        )
    return "\n".join(lines)


def save_grid(images: torch.Tensor, path: str, columns: int) -> None:
    """Write images in [-1, 1] as a PNG grid, ``columns`` per row, magnified 4x."""
    from PIL import Image

    tiles = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    tiles = np.pad(tiles, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cachec/builtin/tiny_dit", help="directory written by train_tiny_dit.py")
    parser.add_argument("--samples-per-class", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50, help="DDIM inference steps")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="1.0 = no classifier-free guidance")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grid", help="also write a PNG grid of trained samples (one row per class) here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = DiTTransformer2DModel.from_pretrained(args.model)
    scheduler = DDIMScheduler.from_pretrained(args.model, subfolder="scheduler")
    training = json.loads((Path(args.model) / "training.json").read_text())
    judge = fit_judge(model.config.sample_size)
    kwargs = {
        "samples_per_class": args.samples_per_class,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
    }
    results = {
        "trained": evaluate(model, scheduler, judge, **kwargs),
        "untrained": evaluate(init_model(model.config, training["seed"]), scheduler, judge, **kwargs),
    }
    print(f"judge accuracy on held-out real images: {judge.real_accuracy:.3f} (chance {1 / NUM_CLASSES:.3f})")
    print(format_table(results))
    if args.grid:
        labels = torch.arange(NUM_CLASSES).repeat_interleave(12)
        save_grid(sample(model, scheduler, labels, args.steps, args.guidance_scale, args.seed), args.grid, 12)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
