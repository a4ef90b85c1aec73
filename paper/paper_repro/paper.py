"""What the paper (Q-GEN, ICCV workshop) and the SDLSS authors report: the numbers our measured
results are compared against. Nothing here is measured by this repository."""

from __future__ import annotations

# Table 1 of the paper: (PSNR dB, SSIM) per data set and column.
TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "CIFAR10": {"1-bit SDLSS": (22.07, 0.6787), "2-bit SDLSS": (22.29, 0.6961),
                "3-bit SDLSS": (22.51, 0.7036), "4-bit SDLSS": (22.57, 0.7060),
                "32-bit SDLSS": (22.84, 0.7259), "32-bit DCS": (22.60, 0.7094)},
    "SVHN": {"1-bit SDLSS": (31.71, 0.9213), "2-bit SDLSS": (32.06, 0.9201),
             "3-bit SDLSS": (33.26, 0.9370), "4-bit SDLSS": (33.65, 0.9414),
             "32-bit SDLSS": (34.01, 0.9549), "32-bit DCS": (34.63, 0.9501)},
    "STL10": {"1-bit SDLSS": (20.65, 0.5543), "2-bit SDLSS": (21.24, 0.5996),
              "3-bit SDLSS": (21.45, 0.6051), "4-bit SDLSS": (21.63, 0.6279),
              "32-bit SDLSS": (22.04, 0.6723), "32-bit DCS": (23.16, 0.7136)},
}

# Section 4 on colour: "from as low as 0.27 dB in the case of 4-bit models to about 2.3 dB in
# the 1-bit case" (32-bit SDLSS minus k-bit SDLSS, over CIFAR10/SVHN/STL10).
COLOUR_GAP_4BIT_DB = 0.27
COLOUR_GAP_1BIT_DB = 2.3

# Section 4 on MNIST (Figure 3): 1-bit trades "~2 dB PSNR and ~0.07 SSIM" against 32-bit;
# 3- and 4-bit are "comparable to that of the 32-bit model for s < 100".
MNIST_GAP_1BIT_DB = 2.0
MNIST_GAP_1BIT_SSIM = 0.07

# The SDLSS authors' (Killedar et al., ref. [15]) 32-bit SDLSS on MNIST at m = 25, s = 100.
SDLSS_MNIST_M25_S100_DB = 21.3

PAPER = ("N. K. K. Reddy, V. Killedar, C. S. Seelamantula, \"Quantized Generative Models for "
         "Solving Inverse Problems\", ICCV workshops (CVF open access)")
