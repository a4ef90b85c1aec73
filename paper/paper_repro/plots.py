"""Figure 3 (PSNR and SSIM against the latent sparsity s, one line per bit width, one row per m)
and Figure 4 (a grid of reconstructions, one row per bit width, PSNR/SSIM under each image)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from paper_repro.plan import BITS, DCS, SDLSS
from paper_repro.recon_images import ReconImages
from paper_repro.tables import Results


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the training machine
    import matplotlib.pyplot as plt

    return plt


def figure3(results: Results, path: Path, label: str = "MNIST") -> bool:
    """Write the Figure-3 PNG; False (and nothing written) when no SDLSS record exists yet."""
    ms = [m for m in results.measurements()
          if any(results.get(label, SDLSS, b, m, s) for b in BITS for s in results.sparsities(m))]
    if not ms:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(ms), 2, figsize=(10, 3.6 * len(ms)), squeeze=False)
    for row, m in zip(axes, ms, strict=True):
        for ax, metric, title in zip(row, ("psnr", "ssim"), ("PSNR (dB)", "SSIM"), strict=True):
            for b in BITS:
                pts = [(s, getattr(r, metric)) for s in results.sparsities(m)
                       if (r := results.get(label, SDLSS, b, m, s)) is not None]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    # one colour per bit width in every panel, whichever widths are present
                    ax.plot(xs, ys, marker="o", color=f"C{BITS.index(b)}", label=f"{b}-bit SDLSS")
            dcs = results.get(label, DCS, 32, m, None)
            if dcs is not None:
                ax.axhline(getattr(dcs, metric), color="k", ls="--", lw=1,
                           label="32-bit DCS (no s)")
            ax.set_xlabel("latent sparsity s")
            ax.set_ylabel(title)
            ax.set_title(f"{label}, m = {m}")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _show(img: np.ndarray) -> np.ndarray:
    """[C, H, W] in [-1, 1] to what imshow takes ([H, W] grey or [H, W, 3] colour) in [0, 1]."""
    x = np.clip((img + 1) / 2, 0, 1)
    return x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0))


def figure4(rows: Sequence[tuple[str, ReconImages]], path: Path, title: str) -> bool:
    """Write a grid: first row the originals, then one row per ``(name, images)``; under each
    reconstruction its PSNR and SSIM. False when there is nothing to draw."""
    rows = [(name, imgs) for name, imgs in rows if imgs is not None and len(imgs.x_hat)]
    if not rows:
        return False
    plt = _pyplot()
    k = min(len(imgs.x_hat) for _, imgs in rows)
    truth = rows[0][1].truth[:k]
    fig, axes = plt.subplots(len(rows) + 1, k, figsize=(1.3 * k + 1.2, 1.55 * (len(rows) + 1)),
                             squeeze=False)
    grey = truth.shape[1] == 1
    for j in range(k):
        axes[0][j].imshow(_show(truth[j]), cmap="gray" if grey else None, vmin=0, vmax=1)
    axes[0][0].set_ylabel("original", fontsize=8)
    for i, (name, imgs) in enumerate(rows, 1):
        for j in range(k):
            ax = axes[i][j]
            ax.imshow(_show(imgs.x_hat[j]), cmap="gray" if grey else None, vmin=0, vmax=1)
            ax.set_xlabel(f"{imgs.psnr[j]:.2f}, {imgs.ssim[j]:.3f}", fontsize=6, labelpad=1)
        axes[i][0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def eval_curves(curves: Sequence[tuple[str, dict[int, float], dict[int, float]]], path: Path,
                title: str, epochs: int) -> bool:
    """Eval PSNR and SSIM against epochs, one line per ``(name, psnr by epoch, ssim by epoch)``,
    all runs on one pair of axes whose epoch axis runs to the target ``epochs`` (so a partial
    run shows how far it has come). False (nothing written) when no run has a point yet."""
    curves = [c for c in curves if c[1] or c[2]]
    if not curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, psnr_by_epoch, ssim_by_epoch) in enumerate(curves):
        for ax, points in zip(axes, (psnr_by_epoch, ssim_by_epoch), strict=True):
            if points:
                xs = sorted(points)
                ax.plot(xs, [points[e] for e in xs], marker="o", color=f"C{i}", label=name)
    for ax, ylabel in zip(axes, ("eval PSNR (dB)", "eval SSIM"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        last = max(epochs, *(e for c in curves for e in c[1] | c[2]))
        ax.set_xlim(0.5, last + 0.5)
        ax.set_xticks(range(1, last + 1))
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
