"""Procedural images that are not CT slices, one generator per kind (noise, stripes, gradients, text,
drawings, logos, a lung cartoon, charts, UI screenshots, synthetic X-ray radiographs and MR slices,
masks, ultrasound, photo-like textures): :mod:`training.gate.non_ct` draws the gate's negatives from them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

WORDS = ("lung", "scan", "patient", "report", "result", "chest", "review", "model", "data", "study", "slice", "page")


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(160, 720)), int(rng.integers(160, 720))


def _colour(rng: np.random.Generator, grey: bool = False) -> tuple[int, int, int]:
    if grey:
        value = int(rng.integers(0, 256))
        return value, value, value
    red, green, blue = (int(v) for v in rng.integers(0, 256, 3))
    return red, green, blue


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _smooth_field(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Gaussian noise blurred to a length ``scale`` (pixels), normalised to 0..1."""
    field = rng.normal(size=(height, width)).astype(np.float32)
    blurred = np.asarray(to_image((field - field.min()) / np.ptp(field)).filter(ImageFilter.GaussianBlur(scale)))
    blurred = blurred.astype(np.float32)
    return (blurred - blurred.min()) / max(float(np.ptp(blurred)), 1.0)


def noise_uniform(rng):
    width, height = _size(rng)
    shape = (height, width, 3) if rng.random() < 0.5 else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def noise_gaussian(rng):
    width, height = _size(rng)
    shape = (height, width, 3) if rng.random() < 0.5 else (height, width)
    pixels = rng.normal(rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3), shape)
    image = to_image(pixels)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 3))) if rng.random() < 0.5 else image


def stripes(rng):
    width, height = _size(rng)
    yy, xx = np.mgrid[0:height, 0:width]
    angle = rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)])
    period = rng.uniform(4, 80)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    pixels = (wave > 0).astype(np.float32) if rng.random() < 0.5 else (wave + 1) / 2
    if rng.random() < 0.5:
        tint = rng.uniform(0, 1, 3)
        return to_image(pixels[..., None] * tint + (1 - pixels[..., None]) * rng.uniform(0, 1, 3))
    return to_image(pixels)


def gradient(rng):
    width, height = _size(rng)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = xx * np.cos(angle) + yy * np.sin(angle)
    else:
        ramp = np.hypot(xx - rng.uniform(0, 1), yy - rng.uniform(0, 1))
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    if rng.random() < 0.6:
        start, end = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        return to_image(ramp[..., None] * end + (1 - ramp[..., None]) * start)
    return to_image(ramp)


def _text_lines(rng, count: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, int(rng.integers(2, 9)))) for _ in range(count)]


def text_page(rng):
    width, height = _size(rng)
    dark = rng.random() < 0.25
    image = Image.new("RGB", (width, height), (20, 20, 20) if dark else (255, 255, 255))
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(10, 32))
    ink = (235, 235, 235) if dark else _colour(rng, grey=rng.random() < 0.7)
    ink = ink if sum(ink) < 500 or dark else (0, 0, 0)
    for row, line in enumerate(_text_lines(rng, height // (size + 4))):
        draw.text((int(rng.integers(2, 30)), 4 + row * (size + 4)), line, fill=ink, font=_font(size))
    return image


def drawing(rng):
    width, height = _size(rng)
    grey = rng.random() < 0.3
    image = Image.new("RGB", (width, height), _colour(rng, grey))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 25))):
        box = sorted(rng.integers(0, width, 2).tolist()) + sorted(rng.integers(0, height, 2).tolist())
        x0, x1, y0, y1 = box
        shape = rng.integers(0, 4)
        fill = _colour(rng, grey)
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline=_colour(rng, grey))
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif shape == 2:
            draw.line((x0, y0, x1, y1), fill=fill, width=int(rng.integers(1, 12)))
        else:
            points = [
                (int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(int(rng.integers(3, 7)))
            ]
            draw.polygon(points, fill=fill)
    return image


def logo(rng):
    side = int(rng.integers(160, 600))
    background = (255, 255, 255) if rng.random() < 0.7 else _colour(rng)
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    colour = _colour(rng)
    margin = side * rng.uniform(0.05, 0.25)
    if rng.random() < 0.5:
        draw.ellipse((margin, margin, side - margin, side - margin), fill=colour)
    else:
        draw.rounded_rectangle((margin, margin, side - margin, side - margin), radius=side // 8, fill=colour)
    inner = margin + side * rng.uniform(0.08, 0.2)
    draw.ellipse((inner, inner, side - inner, side - inner), outline=background, width=int(side * 0.03) + 1)
    letters = "".join(rng.choice(list("LSCTMEDAB"), int(rng.integers(1, 4))))
    draw.text((side / 2, side / 2), letters, fill=background, font=_font(side // 5), anchor="mm")
    return image


def lung_cartoon(rng):
    """A drawing of two lungs and a trachea on a light background (textbook illustration style)."""
    width, height = _size(rng)
    image = Image.new("RGB", (width, height), (255, 255, 255) if rng.random() < 0.7 else _colour(rng))
    draw = ImageDraw.Draw(image)
    fill = _colour(rng, grey=rng.random() < 0.3)
    outline = _colour(rng)
    cx, cy = width / 2, height / 2
    lung_w, lung_h = width * rng.uniform(0.15, 0.25), height * rng.uniform(0.25, 0.4)
    for side in (-1, 1):
        x = cx + side * lung_w * 1.1
        draw.ellipse((x - lung_w, cy - lung_h, x + lung_w, cy + lung_h), fill=fill, outline=outline, width=3)
    draw.rectangle((cx - width * 0.02, cy - lung_h * 1.5, cx + width * 0.02, cy - lung_h * 0.3), fill=outline)
    if rng.random() < 0.5:
        draw.text((cx, height * 0.06), "Lungs", fill=(0, 0, 0), font=_font(max(10, height // 14)), anchor="mm")
    return image


def chart(rng):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(rng.uniform(3, 8), rng.uniform(2.5, 6)), dpi=int(rng.integers(60, 110)))
    kind = rng.integers(0, 6)
    x = np.arange(int(rng.integers(3, 40)))
    if kind == 0:
        axes.bar(x, rng.uniform(0, 10, x.size), color=[_hex(rng) for _ in x])
    elif kind == 1:
        for _ in range(int(rng.integers(1, 4))):
            axes.plot(x, np.cumsum(rng.normal(size=x.size)), marker="o" if rng.random() < 0.3 else None)
    elif kind == 2:
        axes.scatter(rng.normal(size=200), rng.normal(size=200), c=rng.uniform(size=200), s=rng.uniform(4, 40))
    elif kind == 3:
        axes.pie(rng.uniform(1, 5, int(rng.integers(2, 7))), labels=None)
    elif kind == 4:
        epochs = np.arange(1, int(rng.integers(10, 60)))
        axes.plot(epochs, np.exp(-epochs / rng.uniform(5, 20)) + rng.normal(0, 0.02, epochs.size), label="loss")
        axes.plot(epochs, 1 - np.exp(-epochs / rng.uniform(5, 20)), label="accuracy")
        axes.legend()
    else:
        axes.hist(rng.normal(size=500), bins=int(rng.integers(5, 40)))
    axes.set_title(" ".join(rng.choice(WORDS, 3)))
    if rng.random() < 0.2:
        figure.patch.set_facecolor("black")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor=figure.get_facecolor())
    plt.close(figure)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _hex(rng) -> str:
    return "#" + "".join(f"{v:02x}" for v in _colour(rng))


def screenshot(rng):
    """A user interface: title bar, side panel, buttons, text lines, sometimes a dark theme."""
    width, height = int(rng.integers(320, 720)), int(rng.integers(240, 560))
    dark = rng.random() < 0.35
    background = (30, 30, 34) if dark else (245, 245, 245)
    ink = (220, 220, 220) if dark else (30, 30, 30)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    bar = int(rng.integers(20, 40))
    draw.rectangle((0, 0, width, bar), fill=_colour(rng))
    panel = int(width * rng.uniform(0.15, 0.3))
    draw.rectangle((0, bar, panel, height), fill=(50, 50, 56) if dark else (225, 228, 232))
    for row, line in enumerate(_text_lines(rng, 12)):
        draw.text((panel + 10, bar + 10 + row * 18), line, fill=ink, font=_font(12))
        draw.text((8, bar + 10 + row * 22), line.split()[0], fill=ink, font=_font(11))
    for _ in range(int(rng.integers(1, 5))):
        x, y = int(rng.integers(panel, width - 80)), int(rng.integers(bar, height - 30))
        draw.rounded_rectangle((x, y, x + 70, y + 24), radius=5, fill=_colour(rng))
    if rng.random() < 0.4:  # an embedded picture
        x, y = int(rng.integers(panel, width // 2)), int(rng.integers(bar, height // 2))
        patch = _smooth_field(rng, 120, 160, rng.uniform(2, 10))
        image.paste(to_image(patch), (x, y))
    return image


def radiograph(rng):
    """A synthetic frontal chest X-ray: a thorax filling the frame, dark lung fields, ribs, spine, heart."""
    height = int(rng.integers(300, 720))
    width = int(height * rng.uniform(0.8, 1.1))
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    body = (np.abs(xx - 0.5) < 0.42 + 0.05 * yy).astype(np.float32)
    pixels = rng.uniform(0.02, 0.2) + body * rng.uniform(0.45, 0.65)
    for side in (-1, 1):
        lung = ((xx - 0.5 - side * 0.19) / 0.14) ** 2 + ((yy - 0.5) / 0.33) ** 2 < 1
        pixels = np.where(lung, pixels - rng.uniform(0.25, 0.4), pixels)
    for rib in range(10):
        arc = np.abs(yy - (0.2 + rib * 0.065) - 0.08 * (np.abs(xx - 0.5) - 0.2) ** 2 * 10) < 0.012
        pixels = np.where(arc & (np.abs(xx - 0.5) > 0.05) & (np.abs(xx - 0.5) < 0.38), pixels + 0.15, pixels)
    pixels = np.where(np.abs(xx - 0.5) < 0.045, pixels + 0.2, pixels)  # spine and mediastinum
    heart = ((xx - 0.55) / 0.13) ** 2 + ((yy - 0.65) / 0.14) ** 2 < 1
    pixels = np.where(heart, pixels + 0.25, pixels)
    pixels = pixels + (_smooth_field(rng, height, width, 6) - 0.5) * 0.08 + rng.normal(0, 0.01, pixels.shape)
    if rng.random() < 0.3:
        pixels = 1 - pixels  # some viewers show radiographs inverted
    return to_image(pixels).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))


def mr_slice(rng):
    """A synthetic MR slice: a head (scalp, skull, brain, ventricles) or a body with bright fat."""
    side = int(rng.integers(128, 512))
    yy, xx = np.mgrid[0:side, 0:side] / side
    radius = ((xx - 0.5) / rng.uniform(0.32, 0.42)) ** 2 + ((yy - 0.5) / rng.uniform(0.38, 0.46)) ** 2
    texture = _smooth_field(rng, side, side, rng.uniform(1, 4))
    pixels = np.zeros((side, side), np.float32)
    if rng.random() < 0.6:  # head: bright scalp, dark skull, grey brain with texture, ventricles
        pixels = np.where(radius < 1, rng.uniform(0.6, 0.9), pixels)
        pixels = np.where(radius < 0.85, 0.08, pixels)
        pixels = np.where(radius < 0.75, 0.35 + 0.3 * texture, pixels)
        ventricle = ((xx - 0.5) / 0.08) ** 2 + ((yy - 0.48) / 0.15) ** 2 < 1
        pixels = np.where(ventricle, rng.choice([0.1, 0.9]), pixels)
    else:  # body: subcutaneous fat bright, organs of many greys, no air-filled lungs
        pixels = np.where(radius < 1, rng.uniform(0.6, 0.95), pixels)
        pixels = np.where(radius < rng.uniform(0.7, 0.9), 0.25 + 0.3 * texture, pixels)
        for _ in range(int(rng.integers(2, 8))):  # liver, kidneys, spleen, spine, vessels
            cx, cy = rng.uniform(0.3, 0.7, 2)
            organ = ((xx - cx) / rng.uniform(0.03, 0.18)) ** 2 + ((yy - cy) / rng.uniform(0.03, 0.15)) ** 2 < 1
            pixels = np.where(organ & (radius < 0.7), rng.uniform(0.05, 0.95), pixels)
    pixels = pixels + rng.normal(0, rng.uniform(0.005, 0.04), pixels.shape)
    return to_image(pixels).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))


def mask(rng):
    """A segmentation mask or binary drawing: a few white regions on black."""
    width, height = _size(rng)
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    levels = [255] if rng.random() < 0.7 else rng.integers(40, 256, 4).tolist()
    for _ in range(int(rng.integers(1, 6))):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        rx, ry = rng.uniform(0.05, 0.3) * width, rng.uniform(0.05, 0.3) * height
        points = [
            (cx + rx * rng.uniform(0.6, 1.0) * np.cos(a), cy + ry * rng.uniform(0.6, 1.0) * np.sin(a))
            for a in np.linspace(0, 2 * np.pi, int(rng.integers(5, 14)), endpoint=False)
        ]
        draw.polygon(points, fill=int(rng.choice(levels)))
    return image


def sparse_points(rng):
    """Bright dots and blobs on black: star fields, fluorescence microscopy."""
    width, height = _size(rng)
    channels = 3 if rng.random() < 0.5 else 1
    pixels = np.zeros((height, width, channels), np.float32)
    count = int(rng.integers(20, 800))
    ys, xs = rng.integers(0, height, count), rng.integers(0, width, count)
    pixels[ys, xs] = rng.uniform(0.3, 1.0, (count, channels))
    image = to_image(pixels[..., 0] if channels == 1 else pixels).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3)))
    stretched = np.asarray(image, dtype=np.float32) / 255.0
    stretched = np.clip(stretched / max(float(stretched.max()), 1e-6) * rng.uniform(1, 4), 0, 1)
    return to_image(stretched + rng.normal(0, rng.uniform(0, 0.03), stretched.shape))


def ultrasound(rng):
    """A synthetic ultrasound frame: a speckled fan on black, labels, sometimes a colour Doppler box."""
    width, height = int(rng.integers(320, 800)), int(rng.integers(240, 600))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    apex_x, apex_y = width / 2, height * rng.uniform(-0.1, 0.08)
    depth = np.hypot(xx - apex_x, yy - apex_y)
    angle = np.arctan2(xx - apex_x, yy - apex_y)
    spread, reach = rng.uniform(0.4, 0.8), height * rng.uniform(0.75, 0.95)
    fan = (np.abs(angle) < spread) & (depth < reach) & (depth > height * 0.05)
    speckle = rng.rayleigh(0.3, (height, width)).astype(np.float32)
    tissue = _smooth_field(rng, height, width, rng.uniform(4, 15))
    pixels = np.where(fan, np.clip(speckle * (0.3 + tissue) * np.exp(-depth / (reach * 1.5)), 0, 1), 0.0)
    image = to_image(pixels).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))).convert("RGB")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(_text_lines(rng, 4)):
        draw.text((6, 6 + row * 14), line, fill=(230, 230, 230), font=_font(11))
    if rng.random() < 0.5:  # colour Doppler
        x, y = int(width * rng.uniform(0.35, 0.5)), int(height * rng.uniform(0.3, 0.5))
        for _ in range(int(rng.integers(3, 12))):
            cx, cy = x + int(rng.integers(0, 80)), y + int(rng.integers(0, 60))
            r = int(rng.integers(3, 14))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(220, 40, 20) if rng.random() < 0.5 else (30, 80, 230))
    return image if rng.random() < 0.6 else image.convert("L")


def photo_like(rng):
    """Smooth multi-scale textures with a few blurred objects: a stand-in for photographs."""
    width, height = _size(rng)
    channels = 3 if rng.random() < 0.6 else 1
    layers = []
    for _ in range(channels):
        field = sum(
            _smooth_field(rng, height, width, scale) * weight for scale, weight in ((30, 0.6), (6, 0.3), (1, 0.1))
        )
        layers.append(field)
    pixels = np.stack(layers, axis=-1) if channels == 3 else layers[0]
    image = to_image(pixels * rng.uniform(0.5, 1.0) + rng.uniform(0, 0.4))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 6))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        radius = int(rng.integers(10, max(11, min(width, height) // 3)))
        fill = _colour(rng, grey=channels == 1)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill[0] if channels == 1 else fill)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3)))
