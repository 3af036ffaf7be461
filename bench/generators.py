"""Seconds per guided step and peak memory of every generator family, guided by the bundled default
model with 16 cutouts at 64 px. Each family runs the network it would use: the bundled one when the
installation has it, otherwise a random network of the size the project plans to bundle (the time of
a step does not depend on the weights). Medians over steps after a warm-up; memory is the peak RSS of
a fresh process running that family alone.

    python bench/generators.py                   # all families, 20 steps each
    python bench/generators.py --family vqgan --steps 50
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_of  # noqa: E402

FAMILIES = ("pixels", "fourier", "grade", "vqgan", "stylegan", "diffusion")

# what one family's process runs; prints one JSON line
_RUN = r'''
import json, statistics, time, tempfile, torch
import clipguide
from clipguide.generators import build_generator, BUNDLED, ASSETS
from clipguide.guide import CLIPLoss, Cutouts

family, steps = {family!r}, {steps}
torch.manual_seed(0)
model = clipguide.load("default")
size = model.config.vision.image_size
network, source = None, "none"
if family in BUNDLED and (ASSETS / BUNDLED[family]).exists():
    network, source = None, "bundled"
elif family == "vqgan":
    from clipguide.generators.vqgan import VQGAN, VQGANConfig, DDConfig
    network = VQGAN(VQGANConfig(embed_dim=32, n_embed=512, ddconfig=DDConfig(
        ch=64, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=64, z_channels=32))).eval()
    source = "random, planned bundled size"
elif family == "stylegan":
    from clipguide.generators.stylegan import StyleGAN2Config, StyleGAN2Generator
    network = StyleGAN2Generator(StyleGAN2Config(size=64, style_dim=128, n_mlp=4, channel_max=128,
                                                 channel_multiplier=1))
    source = "random, planned bundled size"
elif family == "diffusion":
    import diffusers
    from clipguide.generators.diffusion import DiffusionModel
    unet = diffusers.UNet2DModel(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    network = DiffusionModel(unet=unet.eval().requires_grad_(False), scheduler=diffusers.DDIMScheduler())
    source = "random, planned bundled size"
init = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) if family == "grade" else None
gen = build_generator(family, size=None if family == "stylegan" else size, seed=0, network=network, init=init,
                      **({{"sample_steps": steps + 3}} if family == "diffusion" else {{}}))
gen.condition("a gothic church")          # a text-conditional network draws the prompt (the others ignore it)
loss = CLIPLoss(model, "a gothic church", cutouts=Cutouts(size=size, n=16))
times = []
last = [time.perf_counter()]
def tick(info):
    now = time.perf_counter()
    times.append(now - last[0])
    last[0] = now
gen.run(loss, steps=steps + 3, progress=False, callback=tick)
step_s = statistics.median(times[3:]) if len(times) > 3 else statistics.median(times)
params = sum(p.numel() for p in gen.parameters() if not p.requires_grad)
print(json.dumps({{"family": family, "network": source, "frozen_params": params, "steps": steps,
                   "median_step_s": round(step_s, 4)}}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", action="append", choices=FAMILIES, help="family to time (repeatable; default all)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps after 3 warm-up steps (default 20)")
    args = ap.parse_args()
    for family in args.family or FAMILIES:
        row = peak_rss_of(_RUN.format(family=family, steps=args.steps))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
