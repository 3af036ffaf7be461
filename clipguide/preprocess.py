"""Image preprocessing on tensors (differentiable, batched, no PIL) plus a PIL/file entry point.

The tensor path resizes the shorter side to the model's input size with antialiased bicubic
interpolation, centre-crops, and normalises with the model's mean and std. Guidance calls it on
every step, so it never leaves torch."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def check_images(images: torch.Tensor, name: str = "images", value_range: tuple[float, float] | None = None,
                 ) -> torch.Tensor:
    """Validate an image tensor and return it as float (B, 3, H, W).

    Accepts (3, H, W) or (B, 3, H, W); float in `value_range` (default [0, 1], checked only for
    obviously wrong ranges) or uint8 in [0, 255]; one-channel images are repeated to RGB."""
    if not torch.is_tensor(images):
        raise InputError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}; "
                         "for PIL images or files use clipguide.preprocess.load_image")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise InputError(f"{name} must have shape (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    c = images.shape[1]
    if c == 1:
        images = images.expand(-1, 3, -1, -1)
    elif c == 4:
        raise InputError(f"{name} has 4 channels (RGBA?); pass RGB, e.g. images[:, :3], "
                         "or composite the alpha onto a background first")
    elif c != 3:
        if images.shape[-1] in (1, 3, 4):
            raise InputError(f"{name} has shape {tuple(images.shape)}, which looks channels-last (B, H, W, C); "
                             "use images.permute(0, 3, 1, 2)")
        raise InputError(f"{name} must have 3 channels (RGB), got {c} in shape {tuple(images.shape)}")
    if images.shape[-1] < 1 or images.shape[-2] < 1:
        raise InputError(f"{name} is empty: shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif images.dtype == torch.bool or not (images.is_floating_point()):
        raise InputError(f"{name} must be float in [0, 1] or uint8 in [0, 255], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise InputError(f"{name} contains NaN or Inf values")
    if value_range is not None:
        lo, hi = value_range
        images = (images - lo) / (hi - lo)
    return images


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` (bicubic, antialiased) and crop the centre square: (B,3,H,W) -> (B,3,S,S)."""
    H, W = images.shape[-2:]
    if (H, W) != (size, size):
        # shorter side -> size, longer side scaled and truncated (the convention of the released models)
        nh, nw = (size, int(size * W / H)) if H <= W else (int(size * H / W), size)
        if (nh, nw) != (H, W):
            images = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False,
                                   antialias=nh < H or nw < W)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        images = images[..., top:top + size, left:left + size]
    return images


class Preprocess(nn.Module):
    """Tensor preprocessing for one model: check, resize + centre crop, normalise."""

    def __init__(self, image_size: int, mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD):
        super().__init__()
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    def forward(self, images, value_range: tuple[float, float] | None = None) -> torch.Tensor:
        """Tensor (B,3,H,W)/(3,H,W) in [0,1] (or `value_range`), uint8, PIL image, path, or a list of those."""
        if not torch.is_tensor(images):
            images = load_images(images)
        images = check_images(images, value_range=value_range)
        return self.normalize(resize_center_crop(images, self.image_size))

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}"


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image of any mode (RGB, RGBA, L, P, I;16, ...) -> float (3, H, W) in [0, 1]."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float32)
        arr = arr / (65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0)
        t = torch.from_numpy(np.clip(arr, 0, 1)).unsqueeze(0).expand(3, -1, -1).contiguous()
        return t
    if mode == "F":
        arr = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
        return torch.from_numpy(arr).unsqueeze(0).expand(3, -1, -1).contiguous()
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(bg, rgba)
    image = image.convert("RGB")
    arr = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def load_image(source) -> torch.Tensor:
    """A path or PIL image -> float (3, H, W) in [0, 1]. Transparent areas are composited on white."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return pil_to_tensor(im)
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"{path} is not a readable image ({e}); use PNG, JPEG, WebP, BMP or TIFF") from None
    return pil_to_tensor(source)


def load_images(sources) -> torch.Tensor:
    """One or several paths / PIL images, each resized later; returns (B, 3, H, W) when sizes agree."""
    if isinstance(sources, (list, tuple)):
        tensors = [load_image(s) for s in sources]
        if len({t.shape for t in tensors}) > 1:
            raise InputError("images of different sizes: preprocess them one at a time "
                             "(model.preprocess(image) for each) and concatenate the results")
        return torch.stack(tensors)
    return load_image(sources).unsqueeze(0)


def tensor_to_pil(image: torch.Tensor):
    """A (3, H, W) or (1, 3, H, W) tensor in [0, 1] as an 8-bit RGB PIL image (values rounded)."""
    from PIL import Image

    image = check_images(image.detach().cpu())[0].clamp(0, 1)
    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8))


def save_image(image: torch.Tensor, path: str | Path, pnginfo: dict[str, str] | None = None) -> Path:
    """Write a (3, H, W) or (1, 3, H, W) tensor in [0, 1] as an image, atomically; PNG text chunks from `pnginfo`."""
    from PIL import PngImagePlugin

    from .atomic import atomic_path

    picture = tensor_to_pil(image)
    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"cannot write {path}: use a .png, .jpg or .webp file name")
    kwargs = {}
    if pnginfo and fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for k, v in pnginfo.items():
            info.add_itxt(k, str(v))
        kwargs["pnginfo"] = info
    with atomic_path(path, suffix=path.suffix) as tmp:
        picture.save(tmp, format=fmt, **kwargs)
    return path

