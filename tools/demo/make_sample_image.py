#!/usr/bin/env python3
"""Renders the demo's sample image: a synthetic street scene (sky, buildings, trees, sidewalks, road with lane
markings, cars, poles, a traffic sign, pedestrians) as an 8-bit RGB PNG, 1024x512, deterministic.

    /usr/bin/python3 tools/demo/make_sample_image.py --out tools/demo/street.png

Only numpy and zlib: the PNG is encoded here, so no imaging library is needed.
"""
import argparse
import struct
import zlib

import numpy as np

W, H = 1024, 512


def write_png(path, rgb):
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))  # filter type 0 per row

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def render(seed=7):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.zeros((H, W, 3), np.float32)
    horizon = 230
    # sky: vertical gradient
    t = (yy / horizon)[..., None]
    img[:] = (1 - t) * np.array([110, 160, 225]) + t * np.array([200, 220, 240])
    # buildings along the horizon
    x = 0
    while x < W:
        bw = rng.integers(60, 160)
        top = rng.integers(40, 170)
        color = rng.integers(90, 190, 3) * np.array([1.0, 0.95, 0.9])
        img[top:horizon + 40, x:x + bw] = color
        for wy in range(top + 12, horizon + 20, 24):  # windows
            for wx in range(x + 8, x + bw - 14, 20):
                img[wy:wy + 12, wx:wx + 10] = color * 0.55
        x += bw + rng.integers(0, 12)
    # trees: green blobs with trunks
    for cx in rng.integers(20, W - 20, 9):
        cy = rng.integers(150, 210)
        r = rng.integers(25, 45)
        blob = (xx - cx) ** 2 + ((yy - cy) * 1.2) ** 2 < r ** 2
        noise = rng.normal(0, 12, (H, W, 1))
        img[blob] = (np.array([60, 120, 50]) + noise)[blob]
        img[cy:cy + 70, cx - 4:cx + 4] = [90, 70, 50]
    # ground: sidewalks and the road as a perspective trapezoid
    ground = yy >= horizon + 40
    img[ground] = [170, 165, 160]
    vanish_x, road_top = W / 2, horizon + 40
    half = (yy - road_top) / (H - road_top) * (W * 0.62) + 20
    road = ground & (np.abs(xx - vanish_x) < half)
    img[road] = [85, 85, 90]
    # lane markings: dashes along the centre, growing with depth
    for k in range(8):
        y0 = road_top + (H - road_top) * (k / 8) ** 1.4
        y1 = road_top + (H - road_top) * ((k + 0.5) / 8) ** 1.4
        width = 2 + 10 * (y0 - road_top) / (H - road_top)
        band = (yy >= y0) & (yy < y1) & (np.abs(xx - vanish_x) < width)
        img[band] = [235, 235, 225]
    # cars: boxes with windows and wheels, larger when nearer
    for cx, cy, s in ((330, 330, 1.0), (690, 360, 1.35), (470, 300, 0.7)):
        w, h = int(110 * s), int(50 * s)
        body = rng.integers(40, 220, 3)
        x0, y0 = int(cx - w / 2), int(cy - h)
        img[y0:y0 + h, x0:x0 + w] = body
        img[y0 - int(22 * s):y0, x0 + int(18 * s):x0 + w - int(18 * s)] = body * 0.8
        img[y0 - int(18 * s):y0 - int(4 * s), x0 + int(24 * s):x0 + w - int(24 * s)] = [150, 190, 210]
        for wx in (x0 + int(20 * s), x0 + w - int(20 * s)):
            wheel = (xx - wx) ** 2 + (yy - (y0 + h)) ** 2 < (11 * s) ** 2
            img[wheel] = [25, 25, 25]
    # poles, a traffic sign and pedestrians on the sidewalks
    for px in (150, 880):
        img[120:horizon + 120, px:px + 6] = [110, 110, 115]
    img[150:185, 872:904] = [240, 200, 40]
    for px, py in ((95, 400), (930, 430)):
        img[py - 70:py - 20, px - 9:px + 9] = rng.integers(30, 200, 3)  # torso
        img[py - 20:py, px - 8:px - 2] = [50, 50, 70]  # legs
        img[py - 20:py, px + 2:px + 8] = [50, 50, 70]
        head = (xx - px) ** 2 + (yy - (py - 80)) ** 2 < 81
        img[head] = [220, 180, 150]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    write_png(args.out, render())
    print(f"wrote {args.out} ({W}x{H})")


if __name__ == "__main__":
    main()
