"""`make bench`: what the harness costs over a bare framework loop, and what prefix caching saves.

For each model: training and inference images/s through the harness (`ImageModel.fit` /
`predict` on raw dB images: channel building, standardising, angle input, per-epoch validation)
against a bare loop of the same framework on the same architecture, batch size and images
(already converted to network tensors, plain BCE); and the epoch time of the `head` and `top:K`
policies on raw images against cached prefix features. Random init everywhere (speed does not
depend on the weights). Each comparison runs its two sides alternately and reports the median
per-pair ratio, which holds up on a shared, noisy CPU better than absolute times. Written into
docs/benchmarks.md between markers (other sections of that file are kept). Figures, never a test.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from competition.bench.doc import replace_section
from competition.console import console, progress, table
from competition.models.base import ImageModel
from competition.models.registry import create_model, list_models, load_model_config
from competition.models.schema import ModelInputs
from competition.training.augment import Augmenter
from competition.training.profiles import load_profile

BATCH, PREDICT_BATCH, N_VALID, TOP_K = 32, 64, 16, 2
START, END = "<!-- trainer-bench:start -->", "<!-- trainer-bench:end -->"


def wall(fn: Callable[[], Any]) -> Callable[[], float]:
    """`fn` made to return its own wall time."""

    def timed() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return timed


def paired_seconds(a: Callable[[], float], b: Callable[[], float], repeats: int, warm_up: bool = True) -> tuple[float, float, float]:
    """Median seconds of `a` and `b` (each returns its own time), run alternately, and the median of b/a per pair.

    Alternating keeps the two under the same load on a shared CPU; the per-pair ratio is the
    figure to trust, the absolute times move with the machine's load.
    """
    if warm_up:
        a()
        b()
    pairs = [(a(), b()) for _ in range(repeats)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs), statistics.median(tb / ta for ta, tb in pairs)


def bench_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAR-like dB images (HH ~ -20, HV ~ -26), angles and labels."""
    rng = np.random.default_rng(seed)
    x = np.stack([rng.normal(-20.7, 5.2, (n, 75, 75)), rng.normal(-26.3, 3.4, (n, 75, 75))], axis=-1).astype(np.float32)
    return x, rng.uniform(30, 46, n), (rng.random(n) < 0.5).astype(np.float32)


def _network_tensor(x: np.ndarray) -> np.ndarray:
    """What a bare loop would precompute once: HH, HV, mean, standardised, N x 75 x 75 x 3."""
    three = np.concatenate([x, x.mean(axis=-1, keepdims=True)], axis=-1)
    return ((three - three.mean(axis=(0, 1, 2))) / three.std(axis=(0, 1, 2))).astype(np.float32)


def bare_timm(architecture: str, x: np.ndarray, y: np.ndarray) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train one epoch, predict all) of a plain PyTorch loop over `x` with timm's network."""
    import timm
    import torch

    net = timm.create_model(architecture, pretrained=False, num_classes=1, in_chans=3)
    # NHWC storage seen as N x C x H x W (channels_last), as the harness's permute gives it: on this CPU about twice
    # as fast as contiguous NCHW, so the two sides differ by the harness's work only, not by memory layout.
    xt, yt = torch.from_numpy(_network_tensor(x)).permute(0, 3, 1, 2), torch.from_numpy(y)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    order = np.random.default_rng(0).permutation(len(x))

    def train() -> None:
        net.train()
        for i in range(0, len(order), BATCH):
            idx = torch.from_numpy(order[i : i + BATCH])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[idx]).squeeze(1), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def predict() -> None:
        net.eval()
        with torch.no_grad():
            for i in range(0, len(xt), PREDICT_BATCH):
                torch.sigmoid(net(xt[i : i + PREDICT_BATCH]))

    return train, predict


def bare_keras(x: np.ndarray, y: np.ndarray) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train one epoch, predict all) with Keras's own fit/predict on VGG16 + a pooled sigmoid output."""
    import torch  # noqa: F401 - torch and torchvision before TensorFlow in one process (docs/weights.md)
    import torchvision  # noqa: F401

    # isort: split
    import keras

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(75, 75, 3))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalMaxPooling2D()(vgg.output))
    net = keras.Model(vgg.input, out)
    net.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9, nesterov=True), loss="binary_crossentropy")
    xn = _network_tensor(x)
    return (lambda: net.fit(xn, y, batch_size=BATCH, epochs=1, shuffle=True, verbose=0)), (lambda: net.predict(xn, batch_size=PREDICT_BATCH, verbose=0))


def harness_model(name: str, policy: str, x: np.ndarray, angle: np.ndarray) -> ImageModel:
    model = create_model(name, weights="none")
    model.prepare(x, angle)
    model.apply_policy(policy)
    return model


def _valid(train: ModelInputs) -> ModelInputs:
    return ModelInputs(train.x[:N_VALID], train.angle[:N_VALID], train.y[:N_VALID], train.is_features)  # type: ignore[index]


def epoch_seconds(model: ImageModel, train: ModelInputs, epochs: int = 3) -> Callable[[], float]:
    """Median time between epoch ends in an `epochs`-epoch `fit`: one epoch as training pays it, without fit's setup."""
    valid = _valid(train)

    def measure() -> float:
        ends: list[float] = []
        model.fit(train, valid, epochs=epochs, batch_size=BATCH, seed=0, on_epoch=lambda *_: ends.append(time.perf_counter()))
        return statistics.median(np.diff(ends))

    return measure


def augment_ms(profile: str, repeats: int) -> float:
    """Milliseconds to augment one batch with a profile's augmentation (numpy only)."""
    x, _, _ = bench_images(BATCH)
    aug, rng, rows = Augmenter(load_profile(profile).profile.augment), np.random.default_rng(0), np.arange(BATCH)
    aug(x, rows, rng)
    times = []
    for _ in range(max(repeats, 5)):
        t = time.perf_counter()
        aug(x, rows, rng)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def bench_model(name: str, n: int, repeats: int) -> dict[str, Any]:
    """All figures of one model."""
    cfg = load_model_config(name)
    x, angle, y = bench_images(n)
    images = ModelInputs(x, angle, y)
    row: dict[str, Any] = {"model": name, "n": n}
    model = harness_model(name, "all", x, angle)
    bare_train, bare_predict = bare_keras(x, y) if cfg.framework == "keras" else bare_timm(cfg.architecture, x, y)
    bare_train()  # warm-up; the harness side times epochs after its first
    harness, bare, ratio = paired_seconds(epoch_seconds(model, images), wall(bare_train), repeats, warm_up=False)
    row["train"] = {"harness": n / harness, "bare": n / bare, "ratio": ratio}
    harness, bare, ratio = paired_seconds(wall(lambda: model.predict(ModelInputs(x, angle), PREDICT_BATCH)), wall(bare_predict), repeats)
    row["predict"] = {"harness": n / harness, "bare": n / bare, "ratio": ratio}
    for policy in ("head", f"top:{TOP_K}"):
        model = harness_model(name, policy, x, angle)
        start = time.perf_counter()
        features = model.prefix_features(x, PREDICT_BATCH)
        build = time.perf_counter() - start
        cached_fit, plain_fit = epoch_seconds(model, ModelInputs(features, angle, y, is_features=True)), epoch_seconds(model, images)
        cached, uncached, speedup = paired_seconds(cached_fit, plain_fit, repeats, warm_up=False)
        row[policy] = {"frozen": model.frozen_prefix(), "uncached_s": uncached, "cached_s": cached, "speedup": speedup, "build_s": build}
    return row


def machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}; python {platform.python_version()}, torch {torch.__version__}"


def markdown(rows: Sequence[dict[str, Any]], augment: dict[str, float], n: int, repeats: int, command: str) -> str:
    """The trainer section of docs/benchmarks.md."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        START,
        "## Trainer: harness vs bare loop, prefix caching",
        "",
        f"Command: `{command}` ({when}). Machine: {machine()}.",
        f"{n} random SAR-like 75x75 images, batch {BATCH} (predict {PREDICT_BATCH}), random init; each pair of figures is measured",
        f"alternately ({repeats} pairs after a warm-up each) and the ratio is the median of the per-pair ratios. The CPU is shared",
        "with other work, so absolute images/s move with its load; the ratios are the figures to read.",
        "",
        "Throughput (images/s). Harness = one epoch of `ImageModel.fit` (policy `all`; the median time between epoch ends",
        f"of a 3-epoch fit, so it includes the per-epoch validation pass over {N_VALID} images and the best-weights snapshot)",
        "and `predict`, on raw dB images; bare = the framework's own loop (one epoch / one pass) on tensors prepared",
        "beforehand: no channel building or standardising, no angle input, no validation, no snapshot.",
        "",
        "| model | train harness | train bare | harness/bare | predict harness | predict bare | harness/bare |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        t, p = r["train"], r["predict"]
        lines.append(f"| {r['model']} | {t['harness']:.1f} | {t['bare']:.1f} | {t['ratio']:.2f} | {p['harness']:.1f} | {p['bare']:.1f} | {p['ratio']:.2f} |")
    lines += [
        "",
        "Epoch time (s) inside a 3-epoch `fit` (median time between epoch ends: the epoch, its validation pass and the",
        "best-weights snapshot) on raw images vs on cached prefix features. Cache build = one prefix pass over the",
        "images for one view; a run pays it once per view for all folds, seeds and epochs.",
        "",
        "| model | policy | frozen blocks | epoch uncached | epoch cached | speedup | cache build |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        for policy in ("head", f"top:{TOP_K}"):
            p = r[policy]
            lines.append(
                f"| {r['model']} | {policy} | {p['frozen']} | {p['uncached_s']:.2f} | {p['cached_s']:.3f} | {p['speedup']:.1f}x | {p['build_s']:.2f} |"
            )
    lines += [
        "",
        f"Augmentation cost per batch of {BATCH} (numpy, vectorised): " + ", ".join(f"`{name}` profile {ms:.1f} ms" for name, ms in augment.items()) + ".",
        "",
        "Targets: harness throughput >= 0.9 of the bare loop; prefix caching >= 10x faster per epoch for `head`.",
        f"A cached epoch has a fixed part (the validation pass and the best-weights snapshot), so with {n} images the `head`",
        "speedup is understated; a fold of the real data holds about 1,280 training images (see the full run below).",
        END,
    ]
    return "\n".join(lines) + "\n"


def run_bench(models: Sequence[str] | None, *, n: int, repeats: int, output: Path) -> list[dict[str, Any]]:
    """Measure every model, print the tables, write the section into `output`."""
    import torch  # noqa: F401 - torch before TensorFlow in one process

    names = list(models or [n for n in list_models() if load_model_config(n).framework != "probe"])  # a linear probe has no epochs to time
    rows = []
    with progress() as bar:
        task = bar.add_task("bench", total=len(names))
        for name in names:
            bar.update(task, description=f"bench {name}")
            rows.append(bench_model(name, n, repeats))
            bar.advance(task)
    augment = {name: augment_ms(name, repeats) for name in ("cpu", "gpu")}
    console.print(
        table(
            "harness / bare loop (images/s), prefix caching",
            ["model", "train", "bare", "ratio", "predict", "bare", "ratio", "head speedup"],
            [
                (
                    r["model"],
                    r["train"]["harness"],
                    r["train"]["bare"],
                    r["train"]["ratio"],
                    r["predict"]["harness"],
                    r["predict"]["bare"],
                    r["predict"]["ratio"],
                    r["head"]["speedup"],
                )
                for r in rows
            ],
        )
    )
    command = "competition bench" + ("" if models is None else " " + " ".join(names)) + f" --n {n} --repeats {repeats}"
    replace_section(output, START, END, markdown(rows, augment, n, repeats, command))
    console.print(f"[green]wrote[/] {output}")
    return rows
