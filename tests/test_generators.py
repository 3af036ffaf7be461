"""One interface over every generator family: the registry, text edits of real images, and the
`generate --generator` / `edit` commands on checkpoints the tests write in each public layout."""
from __future__ import annotations

import json

import pytest
import torch

import clipguide
from clipguide.cli import main
from clipguide.errors import InputError, WeightsNotFoundError
from clipguide.generators import GENERATORS, build_generator, load_network
from clipguide.generators.stylegan import StyleGAN2Config, StyleGAN2Generator, save_stylegan
from clipguide.generators.vqgan import VQGAN, VQGANConfig, DDConfig, save_vqgan
from clipguide.guide.edit import edit_image
from clipguide.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square", "at night", "a church"] * 5, vocab_size=600,
                          context_length=16)
    return clipguide.create_model("ViT-nano", tokenizer=tok).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory, clip):
    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    vq = VQGAN(VQGANConfig(embed_dim=4, n_embed=16, ddconfig=DDConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                                                      attn_resolutions=(), resolution=32,
                                                                      z_channels=8))).eval()
    sg = StyleGAN2Generator(StyleGAN2Config(size=32, style_dim=32, n_mlp=2, channel_max=32),
                            generator=torch.Generator().manual_seed(0))
    return {"vqgan": save_vqgan(vq, root / "vq.safetensors"), "stylegan": save_stylegan(sg, root / "sg.safetensors"),
            "clip": clipguide.save(clip, root / "clip.safetensors", model_card="tiny")}


def test_registry_builds_every_family_the_same_way(files):
    assert set(GENERATORS) == {"pixels", "fourier", "grade", "vqgan", "stylegan", "diffusion"}
    for name in ("pixels", "fourier", "vqgan", "stylegan"):
        net = load_network(name, files.get(name))
        a = build_generator(name, size=32, seed=1, network=net)
        b = build_generator(name, size=32, seed=1, network=net)
        x = a()
        assert x.shape == (1, 3, 32, 32) and 0 <= x.min() and x.max() <= 1, name
        assert torch.equal(x, b()), name
        assert a.latent_parameters() and all(p.requires_grad for p in a.latent_parameters())
        assert not any(p.requires_grad for n, p in a.named_parameters() if p not in set(a.latent_parameters()))


def test_registry_errors_say_what_to_do(files, monkeypatch, tmp_path):
    import clipguide.generators as G

    with pytest.raises(InputError, match="not one of"):
        build_generator("gan")
    monkeypatch.setattr(G, "ASSETS", tmp_path)
    with pytest.raises(WeightsNotFoundError, match="--generator-model"):
        build_generator("vqgan")
    with pytest.raises(WeightsNotFoundError, match="not found"):
        build_generator("stylegan", model=tmp_path / "missing.pt")
    with pytest.raises(InputError, match="32 px"):
        build_generator("stylegan", model=files["stylegan"], size=64)


def _picture():
    """A world-like picture: a red square on gray."""
    x = torch.full((1, 3, 32, 32), 0.5)
    x[:, :, 8:24, 8:24] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)
    return x


def test_edit_keeps_what_the_mask_protects(clip):
    image = _picture()
    mask = torch.zeros(32, 32)
    mask[:, :16] = 1                                     # only the left half may change
    for name in ("pixels", "fourier", "grade"):          # a local latent, a global one, a colour grade
        seen = []
        res = edit_image(clip, image, "a blue square", generator=name, mask=mask, preserve=0.5, steps=30,
                         lr=0.1, cutouts=4, progress=False, frame_every=10, callback=lambda i: seen.append(i.images))
        for out in [res.images, res.last_images, *res.frames, *seen]:
            assert (out - image)[..., 16:].abs().max() < 1e-6, name          # nothing outside the mask moves
        assert (res.images - image)[..., :16].abs().mean() > 0.01, name
        assert res.provenance["edit"] and res.provenance["masked"]


def test_a_masked_grade_recolours_the_object_and_not_the_masks_margin():
    """A loose mask holds the object and a margin of background. Held to the original outside the
    mask (`outside`, on by default), the grade's one colour map must keep the background's colours,
    so the margin keeps them and only the object takes the new colour."""
    from clipguide.guide.edit_study import edit_cases

    case = edit_cases(1, kinds=("colour",))[0]
    obj = ((case.image - case.target_image).abs().amax(0) > 0.02).float()
    margin = case.region - obj
    assert margin.sum() > 100                                             # a 2-pixel ring around the square
    guide = clipguide.load("default")
    change = {}
    for outside in (0.0, 10.0):
        res = edit_image(guide, case.image[None], case.target, source=case.source, generator="grade",
                         mask=case.region, outside=outside, steps=50, cutouts=8, progress=False)
        d = (res.images[0] - case.image).abs().amax(0)
        change[outside] = (float((d * margin).sum() / margin.sum()), float((d * obj).sum() / obj.sum()))
        assert res.provenance["outside"] == outside
    assert change[10.0][0] < 0.15 * change[0.0][0]                        # the margin keeps its colour
    assert change[10.0][1] > 0.2                                          # the object still changes
    with pytest.raises(InputError, match="outside"):
        edit_image(guide, case.image[None], case.target, generator="grade", mask=case.region, outside=-1)


def test_each_family_edits_with_its_own_preservation_unless_told(clip):
    from clipguide.generators import EDIT_PRESERVE, edit_preserve

    assert edit_preserve("grade") == 0.0 and edit_preserve("fourier") == edit_preserve("stylegan") == EDIT_PRESERVE
    assert edit_preserve("grade", 2.5) == 2.5 and edit_preserve("pixels", 0.0) == 0.0
    with pytest.raises(InputError, match="not one of"):
        edit_preserve("cubism")
    image = _picture()
    for name, given, used in (("grade", None, 0.0), ("grade", 3.0, 3.0), ("pixels", None, 1.0)):
        res = edit_image(clip, image, "a blue square", generator=name, preserve=given, steps=1, cutouts=2,
                         progress=False)
        assert res.provenance["preserve"] == used, name


def test_directional_edit_and_generators_with_latents(clip, files):
    image = _picture()
    for name in ("fourier", "vqgan", "stylegan"):
        res = edit_image(clip, image, "at night", source="a church", generator=name, steps=3, cutouts=2,
                         generator_model=files.get(name), latent_weight=0.1, progress=False)
        assert res.images.shape[-2:] == (32, 32) and res.provenance["source"] == "a church", name
        assert res.provenance["loss"] == "directional"


def test_edit_bad_input(clip):
    image = _picture()
    with pytest.raises(InputError, match="one image"):
        edit_image(clip, torch.cat([image, image]), "x", generator="pixels", steps=1)
    with pytest.raises(InputError, match="mask is empty"):
        edit_image(clip, image, "x", generator="pixels", mask=torch.zeros(32, 32), steps=1)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        edit_image(clip, image, "x", generator="pixels", mask=torch.full((32, 32), 2.0), steps=1)
    with pytest.raises(InputError, match="source text is empty"):
        edit_image(clip, image, "x", source=" ", generator="pixels", steps=1)


@pytest.mark.parametrize("mode", ["RGBA", "L", "I;16"])
def test_cli_edit_reads_any_image_mode(files, tmp_path, mode, capsys):
    from PIL import Image

    src = tmp_path / f"in-{mode.replace(';', '')}.png"
    arr = (_picture()[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
    im = Image.fromarray(arr).resize((40, 24))            # another size than the generator's
    (im.convert(mode) if mode != "I;16" else im.convert("L").convert("I;16")).save(src)
    out = tmp_path / "out.png"
    assert main(["edit", "--image", str(src), "--prompt", "at night", "--model", str(files["clip"]),
                 "--generator", "vqgan", "--generator-model", str(files["vqgan"]), "--steps", "2",
                 "--cutouts", "2", "--out", str(out)]) == 0
    with Image.open(out) as im:
        prov = json.loads(im.text["clipguide"])
        assert im.size == (40, 24) and prov["edit"] is True


def test_cli_generate_with_a_stylegan_and_wrong_family(files, tmp_path, capsys):
    out = tmp_path / "sg.png"
    assert main(["generate", "a red circle", "--model", str(files["clip"]), "--generator", "stylegan",
                 "--generator-model", str(files["stylegan"]), "--space", "w", "--steps", "2", "--cutouts", "2",
                 "--out", str(out)]) == 0
    assert out.exists()
    code = main(["generate", "a red circle", "--model", str(files["clip"]), "--generator", "stylegan",
                 "--generator-model", str(files["vqgan"]), "--steps", "1", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code != 0 and "VQGAN" in err


def test_frechet_distance_matches_its_closed_form():
    """Zero between a set and itself; for independent coordinates |mu_a - mu_b|^2 +
    sum (sigma_a - sigma_b)^2; symmetric; shape errors are clear."""
    from clipguide.generators.quality import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    assert abs(frechet_distance(a, a)) < 1e-9
    sa, sb, shift = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5]), torch.tensor([1.0, 0.0, -2.0])
    x = (a - a.mean(0)) / a.std(0) * sa
    y = (a - a.mean(0)) / a.std(0) * sb + shift
    expected = float(shift.pow(2).sum() + (sa - sb).pow(2).sum())
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-3)
    assert frechet_distance(y, x) == pytest.approx(frechet_distance(x, y), rel=1e-6)
    with pytest.raises(InputError, match="same D"):
        frechet_distance(a, a[:, :2])
    with pytest.raises(InputError, match="at least 2"):
        frechet_distance(a[:1], a)


def test_sample_quality_places_a_generator_between_its_references(files, clip, capsys):
    """Unguided samples of a network, scored in a judge's features against world renders: the
    second set of renders is the closest, flat pictures and random noise pictures are far; the
    command prints the same fields."""
    from clipguide.generators.quality import sample_quality, unguided_samples, world_renders

    samples = unguided_samples("stylegan", 24, files["stylegan"], batch=8)
    assert samples.shape == (24, 3, 32, 32) and 0 <= samples.min() and samples.max() <= 1
    again = unguided_samples("stylegan", 24, files["stylegan"], batch=8)
    assert torch.equal(samples, again)
    q = sample_quality(clip, samples)
    assert set(q) == {"fd", "fd_world", "fd_flat", "n", "n_reference"} and q["n"] == 24
    assert q["fd_world"] < q["fd_flat"] and q["fd_world"] < q["fd"]
    renders = sample_quality(clip, world_renders(24, seed=7))            # other renders score near the floor
    assert renders["fd"] < q["fd_flat"]
    assert main(["eval", "samples", "--generator", "stylegan", "--generator-model", str(files["stylegan"]),
                 "--judge", str(files["clip"]), "--n", "8"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["task"] == "samples" and line["n"] == 8 and line["fd_world"] < line["fd_flat"]


class _Brightness:
    """Mean brightness as a loss, reporting each picture's value as CLIPLoss does."""

    def __init__(self):
        self.last: dict = {}

    def __call__(self, images, generator=None):
        per = images.flatten(1).mean(1)
        self.last = {"per_image": per.detach()}
        return per.mean()


@pytest.mark.parametrize("name,options", [("vqgan", {}), ("stylegan", {}), ("stylegan", {"space": "w"})])
def test_search_starts_each_picture_where_the_loss_is_lowest(files, name, options):
    net = load_network(name, files[name])
    build = lambda: build_generator(name, size=32, batch=2, seed=1, network=net, **options)  # noqa: E731
    gen = build()
    seeded = gen()
    chosen = gen.choose_start(_Brightness(), 12, seed=4)
    now = gen()
    assert torch.allclose(chosen, now.flatten(1).mean(1), atol=1e-5)             # the start it reports
    assert (chosen <= seeded.flatten(1).mean(1) + 1e-6).all()                      # never worse than the seed
    assert not torch.equal(now, seeded) and (gen.latent_l2() == 0).all()           # the start moved with it
    other = build()
    other.choose_start(lambda images, generator=None: images.mean(), 12, seed=4)   # no per-picture report
    assert torch.equal(other.latent, gen.latent)
    same = build()
    same.choose_start(_Brightness(), 1, seed=4)
    assert torch.equal(same(), seeded)                                             # search 1: the seeded start


def test_search_runs_and_refuses_what_it_cannot_do(files, clip, tmp_path, capsys):
    net = load_network("stylegan", files["stylegan"])
    run = lambda gen, **kw: gen.run(_Brightness(), steps=2, progress=False, seed=0, **kw)  # noqa: E731
    a = run(build_generator("stylegan", size=32, seed=1, network=net), search=4)
    b = run(build_generator("stylegan", size=32, seed=1, network=net), search=4)
    assert torch.equal(a.images, b.images) and a.provenance["search"] == 4
    with pytest.raises(InputError, match="no random starts"):
        run(build_generator("fourier", size=32, seed=1), search=2)
    with pytest.raises(InputError, match="starts from an image"):
        run(build_generator("stylegan", size=32, init=_picture(), network=net, invert_steps=2), search=2)
    with pytest.raises(InputError, match="integer >= 1"):
        run(build_generator("stylegan", size=32, network=net), search=0)
    out = tmp_path / "s.png"
    common = ["--model", str(files["clip"]), "--steps", "2", "--cutouts", "2", "--out", str(out)]
    assert main(["generate", "a red circle", "--generator", "stylegan", "--generator-model", str(files["stylegan"]),
                 "--search", "3", *common]) == 0
    from PIL import Image
    with Image.open(out) as im:
        assert json.loads(im.text["clipguide"])["search"] == 3
    assert main(["generate", "a red circle", "--generator", "fourier", "--search", "3", *common]) != 0
    assert "--search needs a generator network" in capsys.readouterr().err
    assert main(["eval", "edits", "--generator", "stylegan", "--search", "3", "--model", str(files["clip"])]) != 0
    assert "--search is for 'eval guided'" in capsys.readouterr().err
