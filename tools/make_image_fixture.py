#!/usr/bin/env python3
"""Fixtures for io/image.hpp and data/transforms.hpp (tests/fixtures/image/).

Everything is computed from small synthetic inputs generated here (seeded
random values and integer patterns), never from ../shared/data, with the
libraries MAM-CLIP's reference pipeline uses: OpenCV (cv2.resize, cv2.remap)
and albumentations (GridDistortion's step normalisation and grid).

Writes:
  files/*.png|jpg|pgm|ppm   small images in every supported layout (PIL / OpenCV encoders)
  decoded.safetensors       what PIL decodes from each file: [C, H, W] float32, alpha dropped
  transforms.safetensors    inputs and OpenCV/albumentations outputs (float32), parameters
                            in the metadata (JSON)
  mias_stats.json           only when ../shared/data/mias/images/mdb001.png exists: its
                            sha256 and the row / column sums of cv2.resize to 1024 x 768
                            (statistics, not pixels: the test recomputes them on the file)

Run with the pinned environment (tools/requirements.txt):
  python tools/make_image_fixture.py
"""
import hashlib
import json
import pathlib

import albumentations
import cv2
import numpy as np
from albumentations.augmentations.geometric import functional as fgeometric
from PIL import Image
from safetensors.numpy import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "image"
FILES = OUT / "files"
MIAS = ROOT.parent / "shared" / "data" / "mias" / "images" / "mdb001.png"

INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "lanczos4": cv2.INTER_LANCZOS4}


def pattern(h, w):
    """The integer test pattern the C++ tests rebuild: ((3x^2 + 5y + 7xy) mod 251), as float32."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    return ((3 * x * x + 5 * y + 7 * x * y) % 251).astype(np.float32)


def chw(a):
    a = np.asarray(a)
    return (a[None] if a.ndim == 2 else np.transpose(a, (2, 0, 1))).astype(np.float32).copy()


def make_files(rng):
    FILES.mkdir(parents=True, exist_ok=True)
    h, w = 17, 23
    g8 = rng.integers(0, 256, (h, w), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    smooth = (8 * x + 5 * y).astype(np.uint8)  # JPEG: smooth content, small codec differences
    smooth_rgb = np.stack([smooth, 255 - smooth, (smooth // 2 + 60).astype(np.uint8)], axis=-1)

    Image.fromarray(g8, "L").save(FILES / "gray8.png")
    Image.fromarray(g16.astype(np.uint16)).save(FILES / "gray16.png")  # mode I;16 -> 16-bit PNG
    cv2.imwrite(str(FILES / "rgb16.png"), np.stack([g16, g16[::-1], g16[:, ::-1]], axis=-1)[..., ::-1])
    Image.fromarray(rgb, "RGB").save(FILES / "rgb8.png")
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA").save(FILES / "rgba8.png")
    Image.fromarray(np.stack([g8, alpha[..., 0]], axis=-1), "LA").save(FILES / "graya8.png")
    pal = Image.fromarray(g8 // 32 * 32, "L").convert("P")
    pal.save(FILES / "palette.png")
    Image.fromarray(smooth, "L").save(FILES / "gray.jpg", quality=95)
    Image.fromarray(smooth_rgb, "RGB").save(FILES / "rgb.jpg", quality=95)
    cv2.imwrite(str(FILES / "gray8.pgm"), g8)
    cv2.imwrite(str(FILES / "gray16.pgm"), g16)
    cv2.imwrite(str(FILES / "rgb.ppm"), rgb[..., ::-1])

    decoded, depth = {}, {}
    for f in sorted(FILES.iterdir()):
        if f.suffix == ".png" and f.stem.endswith("16"):
            a = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)  # PIL has no 16-bit RGB
            a = a if a.ndim == 2 else a[..., ::-1]
        elif f.suffix in (".pgm", ".ppm"):
            a = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            a = a if a.ndim == 2 else a[..., ::-1]
        else:
            im = Image.open(f)
            a = np.array(im.convert("RGB") if im.mode == "P" else im)
        if a.ndim == 3 and a.shape[2] in (2, 4):
            a = a[..., :-1]  # alpha dropped
        if f.stem == "palette":  # a gray palette decodes to 3 equal channels
            a = a[..., :3]
        decoded[f.name] = chw(a)
        depth[f.name] = 16 if a.dtype == np.uint16 else 8
    save_file(decoded, str(OUT / "decoded.safetensors"), metadata={"bit_depth": json.dumps(depth)})
    return decoded


def remap(x, map_x, map_y, exact):
    """cv2.remap, INTER_LINEAR, constant border 0. exact=False reproduces OpenCV 4
    (the reference's opencv-python 4.8), which rounds float map coordinates to
    1/32 pixel: cv2.convertMaps to fixed point, then remap with those maps.
    exact=True is OpenCV 5's remap of float maps (interpolation at the exact point)."""
    if not exact:
        map_x, map_y = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)
    return cv2.remap(x, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def make_transforms(rng):
    t, meta = {}, {}
    # resize: odd ratios down, up and mixed; uint8-valued float inputs so that
    # the same input also goes through OpenCV's fixed-point uint8 path.
    for name, (h, w, oh, ow) in {"down": (37, 53, 20, 31), "up": (13, 7, 40, 21), "mixed": (30, 20, 17, 45)}.items():
        x = rng.integers(0, 256, (h, w)).astype(np.float32)
        t[f"resize_{name}_in"] = x
        for iname, flag in INTERP.items():
            t[f"resize_{name}_{iname}"] = cv2.resize(x, (ow, oh), interpolation=flag)
            t[f"resize_{name}_{iname}_u8"] = cv2.resize(x.astype(np.uint8), (ow, oh), interpolation=flag).astype(
                np.float32)
        meta[f"resize_{name}"] = [oh, ow]
    # 512 x 512 -> 1024 x 768 on the integer pattern: row and column sums plus sampled pixels.
    big = pattern(512, 512)
    idx = np.stack([rng.integers(0, 1024, 600), rng.integers(0, 768, 600)], axis=1)
    t["big_index"] = idx.astype(np.float32)
    for iname in ("linear", "area", "lanczos4"):
        out = cv2.resize(big, (768, 1024), interpolation=INTERP[iname]).astype(np.float64)
        t[f"big_{iname}_rows"] = out.sum(axis=1).astype(np.float32)
        t[f"big_{iname}_cols"] = out.sum(axis=0).astype(np.float32)
        t[f"big_{iname}_samples"] = out[idx[:, 0], idx[:, 1]].astype(np.float32)

    # Downscale as albumentations 1.3.1 computes it on float images: cv2.resize
    # with fx = fy = scale, then back to the input size.
    x = rng.integers(0, 256, (41, 33)).astype(np.float32)
    t["downscale_in"] = x
    combos = {"area_linear": ("area", "linear"), "area_lanczos4": ("area", "lanczos4"),
              "linear_linear": ("linear", "linear")}
    for scale in (0.83, 0.77):
        for cname, (down, up) in combos.items():
            small = cv2.resize(x, None, fx=scale, fy=scale, interpolation=INTERP[down])
            t[f"downscale_{scale}_{cname}"] = cv2.resize(small, (33, 41), interpolation=INTERP[up])
    meta["downscale_scales"] = [0.83, 0.77]

    # GridDistortion(num_steps=5, distort_limit=0.3, normalized=True), border constant 0.
    grid_cases = {"grid_a": (40, 36), "grid_b": (37, 53), "grid_c": (1024, 768)}
    for name, (h, w) in grid_cases.items():
        x = pattern(h, w) if h > 100 else rng.integers(0, 256, (h, w)).astype(np.float32)
        raw_x = list(1 + rng.uniform(-0.3, 0.3, 6))
        raw_y = list(1 + rng.uniform(-0.3, 0.3, 6))
        steps = fgeometric.normalize_grid_distortion_steps((h, w), 5, list(raw_x), list(raw_y))
        map_x, map_y = fgeometric.generate_grid((h, w), steps["steps_x"], steps["steps_y"], 5)
        mx, my = map_x.astype(np.float32), map_y.astype(np.float32)
        out = remap(x, mx, my, exact=False)
        meta[name] = {"shape": [h, w], "raw_x": raw_x, "raw_y": raw_y,
                      "steps_x": [float(v) for v in steps["steps_x"]], "steps_y": [float(v) for v in steps["steps_y"]]}
        if h > 100:
            t[f"{name}_rows"] = out.astype(np.float64).sum(axis=1).astype(np.float32)
            t[f"{name}_cols"] = out.astype(np.float64).sum(axis=0).astype(np.float32)
            gi = np.stack([rng.integers(0, h, 600), rng.integers(0, w, 600)], axis=1)
            t[f"{name}_index"] = gi.astype(np.float32)
            t[f"{name}_samples"] = out[gi[:, 0], gi[:, 1]]
        else:
            t[f"{name}_in"] = x
            t[f"{name}_out"] = out
            t[f"{name}_out_u8"] = remap(x.astype(np.uint8), mx, my, exact=False).astype(np.float32)
            t[f"{name}_out_exact"] = remap(x, mx, my, exact=True)
    t = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()}
    meta["versions"] = {"opencv": cv2.__version__, "albumentations": albumentations.__version__}
    save_file(t, str(OUT / "transforms.safetensors"), metadata={"params": json.dumps(meta)})
    return t


def make_mias_stats():
    if not MIAS.exists():
        print(f"skipped mias_stats.json: {MIAS} is absent")
        return
    data = MIAS.read_bytes()
    img = np.array(Image.open(MIAS)).astype(np.float32)
    out = cv2.resize(img, (768, 1024), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    stats = {"file": "mias/images/mdb001.png", "sha256": hashlib.sha256(data).hexdigest(), "shape": list(img.shape),
             "resize_1024x768_linear_rows": [round(float(v), 3) for v in out.sum(axis=1)],
             "resize_1024x768_linear_cols": [round(float(v), 3) for v in out.sum(axis=0)]}
    (OUT / "mias_stats.json").write_text(json.dumps(stats) + "\n")


def main():
    rng = np.random.default_rng(20240611)
    OUT.mkdir(parents=True, exist_ok=True)
    make_files(rng)
    make_transforms(rng)
    make_mias_stats()
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            print(f"wrote {f.relative_to(ROOT)} ({f.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
