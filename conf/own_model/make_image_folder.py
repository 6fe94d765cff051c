"""Write scikit-learn's bundled digits as an ImageFolder tree of PNG files:
`FOLDER/digit_<label>/<index>.png`, 8x8 greyscale, real images with no download.

    python conf/own_model/make_image_folder.py data/digits-png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main(folder: str) -> None:
    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = Path(folder, f"digit_{label}", f"{i}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        image = (pixels * 255 / 16).round().clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
        Image.fromarray(image, mode="L").save(path)
    print(f"wrote {len(digits.target)} images in {len(set(digits.target))} class folders "
          f"under {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/digits-png")
