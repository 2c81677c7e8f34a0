#!/usr/bin/env python3
"""Where a sample set loses its motion: for each `fastlightgen sample` directory, how far the
object travels from the first frame to the last (centroid of the lit pixels, the brightest
channel >= 128, the evaluator's threshold), and whether something is lit in every frame.
Moving-shapes objects travel 7 pixels in 8 frames; the evaluator's dynamic degree asks for at
least 3.5 and a detected shape in every frame. A coarse reading next to `eval.json`: it tells
still or slow objects (short travel) from lost or broken ones (a frame with nothing lit).

Usage: .venv/bin/python bench/motion.py SAMPLE_DIR...   (each holding videos.npy)
"""
import sys

import numpy as np

EDGES = [0, 1, 2, 3, 3.5, 4, 5, 6, 7, 9]

for d in sys.argv[1:]:
    v = np.load(d + "/videos.npy")  # [N, T, H, W, 3] uint8
    if v.shape[-1] != 3:
        v = np.moveaxis(v, 2, -1)
    lit = v.max(-1) >= 128
    mass = lit.sum((2, 3))
    n, t, h, w = lit.shape
    ys, xs = np.mgrid[0:h, 0:w]
    cx = (lit * xs).sum((2, 3)) / np.maximum(mass, 1)
    cy = (lit * ys).sum((2, 3)) / np.maximum(mass, 1)
    present = (mass >= 6).all(1)  # a 4x4 object has 16 lit pixels; 6 is a clear remnant
    travel = np.maximum(abs(cx[:, -1] - cx[:, 0]), abs(cy[:, -1] - cy[:, 0]))
    moving = travel >= 3.5
    hist = np.histogram(travel[present], bins=EDGES)[0]
    print(f"{d}: {n} videos; lit in every frame {present.mean():.2f}; travel >= 3.5 px "
          f"{moving.mean():.2f}; both {(present & moving).mean():.2f}; median travel "
          f"{np.median(travel[present]):.1f} px")
    print("  travel (px) " + " ".join(f"[{a},{b}):{c}" for a, b, c in zip(EDGES, EDGES[1:], hist)))
