"""The trainer: loss, exact accumulation, distributed equality, kill-and-resume, fine-tuning, config."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import clipguide
from clipguide.errors import ConfigError
from clipguide.train.config import TrainConfig
from clipguide.train.loss import clip_loss
from clipguide.train.trainer import MAX_LOGIT_SCALE, Trainer, lr_at

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=ViT-nano", "data=world", "batch_size=16", "vocab_size=600", "tokenizer_corpus=2000",
        "warmup=2", "lr=0.001", "log_every=1", "threads=1", "export_fp16=false"]


def tiny(tmp_path: Path, *extra: str) -> TrainConfig:
    return TrainConfig.from_file(None, TINY + [f"out_dir={tmp_path / 'run'}", *extra])


def test_loss_is_symmetric_infonce():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(6, 8), dim=-1)
    txt = F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    ref = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    torch.testing.assert_close(clip_loss(img, txt, scale), ref)
    # matching pairs lower the loss
    assert clip_loss(img, img, scale) < clip_loss(img, txt, scale)


def test_hard_negatives_join_the_image_to_text_candidates():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(4, 8), dim=-1)
    txt = F.normalize(img + 0.3 * torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    base = clip_loss(img, txt, scale)
    far = clip_loss(img, txt, scale, negative_features=-img)           # easy negatives: barely matter
    near = clip_loss(img, txt, scale, negative_features=img)           # negatives equal to the images: hurt
    assert base <= far < near


def test_hard_negatives_need_a_source_that_makes_them(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(4):
        clipguide.save_image(torch.rand(3, 8, 8), folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"picture {i}")
    with pytest.raises(ConfigError, match="hard_negatives"):
        Trainer(tiny(tmp_path, f"data=folder:{folder}", "hard_negatives=true", "batch_size=4",
                     "tokenizer_corpus=4"), progress=False)


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr=0.1)
    lrs = [lr_at(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_config_checked():
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_file(None, ["stepz=3"])
    with pytest.raises(ConfigError, match="must be"):
        TrainConfig.from_file(None, ["steps=many"])
    with pytest.raises(ConfigError, match="divisible"):
        TrainConfig.from_file(None, ["batch_size=10", "accum_steps=3"])
    cfg = TrainConfig.from_file(None, ["steps=7", "arch.vision.width=32", "betas=[0.8, 0.9]"])
    assert cfg.steps == 7 and cfg.arch == {"vision.width": 32} and cfg.betas == (0.8, 0.9)


def test_sincos_position_init(tmp_path):
    from clipguide.models.layers import sincos_positions

    codes = sincos_positions(4, 16)                                  # (1 + 16, 16)
    assert codes.shape == (17, 16) and torch.all(codes[0] == 0)
    # the x code of a patch depends only on its column, the y code only on its row
    grid = codes[1:].view(4, 4, 16)
    assert torch.allclose(grid[0, :, :8], grid[3, :, :8]) and torch.allclose(grid[:, 0, 8:], grid[:, 2, 8:])
    assert not torch.allclose(grid[0, 0, :8], grid[0, 1, :8])
    trainer = Trainer(tiny(tmp_path, "steps=1", "pos_init=sincos"), progress=False)
    pe = trainer.model.visual.positional_embedding
    assert torch.equal(pe.detach(), sincos_positions(int((pe.shape[0] - 1) ** 0.5), pe.shape[1]))
    with pytest.raises(ConfigError, match="pos_init"):
        TrainConfig.from_file(None, ["pos_init=zeros"])
    rn = Trainer(tiny(tmp_path, "steps=1", "pos_init=sincos", "model=RN-nano"), progress=False)
    pe = rn.model.visual.attnpool.positional_embedding
    assert torch.equal(pe.detach(), sincos_positions(int((pe.shape[0] - 1) ** 0.5), pe.shape[1]))


def test_temperature_is_clamped_at_100(tmp_path):
    trainer = Trainer(tiny(tmp_path, "steps=1"), progress=False)
    with torch.no_grad():
        trainer.model.logit_scale.fill_(MAX_LOGIT_SCALE - 1e-3)
    for g in trainer.optimizer.param_groups:
        g["lr"] = 10.0
    trainer.cfg.lr = 10.0
    trainer.cfg.warmup = 0
    trainer.train_step(0)
    assert trainer.model.logit_scale.item() <= MAX_LOGIT_SCALE + 1e-6


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    """Equal up to float rounding relative to the tensor's scale (summation order differs)."""
    return (a - b).abs().max().item() <= rel * max(1.0, a.abs().max().item())


def _grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("negatives", ["false", "true"])
def test_accumulation_is_exact(tmp_path, negatives):
    a = Trainer(tiny(tmp_path / "a", "precision=fp32", f"hard_negatives={negatives}"), progress=False)
    b = Trainer(tiny(tmp_path / "b", "precision=fp32", "accum_steps=4", f"hard_negatives={negatives}"),
                progress=False)
    b.model.load_state_dict(a.model.state_dict())
    loss_a, loss_b = a.train_step(0), b.train_step(0)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys()
    for k in ga:
        assert _close(ga[k], gb[k]), k


def test_adversarial_images_stay_in_their_ball_and_fool_the_model(tmp_path):
    trainer = Trainer(tiny(tmp_path, "precision=fp32", "adv_eps=0.5", "adv_steps=4", "steps=1"), progress=False)
    trainer.train_step(0)                   # a model that has seen one batch: its own captions score best
    images, captions = trainer.stream.batch(1)
    images = images.float() / 255.0
    tokens = trainer.model.tokenize(captions, truncate=True)
    adv = trainer._adversarial(images, tokens, 1)
    assert torch.equal(adv, trainer._adversarial(images, tokens, 1))        # replayable from (seed, step)
    assert not torch.equal(adv, trainer._adversarial(images, tokens, 2))
    delta = (adv - images).flatten(1).norm(dim=1)
    assert delta[1::2].max() == 0                                           # the other half stays clean
    assert delta[0::2].max() <= 0.5 + 1e-5 and delta[0::2].min() > 0.25
    assert adv.min() >= 0 and adv.max() <= 1
    assert trainer.model.training                                           # mode restored

    def own_caption_loss(x):
        with torch.no_grad():
            img = trainer.model.encode_image(trainer.model.preprocess.normalize(x), normalize=True)
            txt = trainer.model.encode_text(tokens, normalize=True)
            logits = trainer.model.logit_scale.exp() * img @ txt.T
            return F.cross_entropy(logits, torch.arange(len(x)), reduction="none")[0::2].mean()

    random_dir = torch.randn_like(images)
    random_dir[1::2] = 0
    noisy = (images + random_dir / random_dir.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
             * 0.5).clamp(0, 1)
    assert own_caption_loss(adv) > own_caption_loss(noisy) + 0.05           # worse than noise of the same size
    with pytest.raises(ConfigError, match="adv_eps"):
        tiny(tmp_path, "adv_eps=-1")


def test_l2_attack_climbs_the_objective_inside_its_ball():
    from clipguide.train.robust import l2_attack

    g = torch.Generator().manual_seed(0)
    images = torch.full((3, 3, 8, 8), 0.5)
    w = torch.randn(3, 3, 8, 8, generator=g)
    mask = torch.tensor([1.0, 1.0, 0.0]).view(-1, 1, 1, 1)
    adv = l2_attack(images, lambda x: (x * w).sum(), eps=0.3, steps=10, start=torch.randn(3, 3, 8, 8, generator=g),
                    mask=mask)
    delta = adv - images
    # the maximiser of a linear objective in the ball: eps along w
    assert torch.allclose(delta[:2].flatten(1).norm(dim=1), torch.tensor([0.3, 0.3]), atol=1e-4)
    assert F.cosine_similarity(delta[:2].flatten(1), w[:2].flatten(1)).min() > 0.99
    assert torch.equal(adv[2], images[2])
    # at the edge of [0, 1] the pixels are clamped, never pushed outside
    edge = l2_attack(torch.ones(1, 3, 8, 8), lambda x: x.sum(), eps=0.5, steps=3, start=torch.randn(1, 3, 8, 8))
    assert edge.max() <= 1.0


def test_anchor_fine_tune_moves_the_image_tower_only(tmp_path):
    first = Trainer(tiny(tmp_path / "a", "steps=2", "save_every=100"), progress=False).run(resume=False)
    with pytest.raises(ConfigError, match="checkpoint"):
        Trainer(tiny(tmp_path / "b", "adv_objective=anchor", "adv_eps=0.5"), progress=False)
    tuned = Trainer(tiny(tmp_path / "c", f"model={first}", "adv_objective=anchor", "adv_eps=0.5", "adv_steps=2",
                         "steps=3", "accum_steps=2"), progress=False)
    before = {k: v.clone() for k, v in tuned.model.state_dict().items()}
    after = clipguide.load(tuned.run(resume=False)).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))}
    assert changed and all(k.startswith("visual.") for k in changed)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "c" / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 3 and all(0 <= v <= 2 for v in losses)


@pytest.mark.parametrize("lock, arch", [("text", "ViT-nano"), ("image", "RN-nano")])
def test_lock_keeps_one_tower_fixed(tmp_path, lock, arch):
    first = Trainer(tiny(tmp_path / "a", f"model={arch}", "steps=1", "save_every=100"), progress=False).run(resume=False)
    with pytest.raises(ConfigError, match="checkpoint"):
        Trainer(tiny(tmp_path / "b", f"model={arch}", f"lock={lock}"), progress=False)
    with pytest.raises(ConfigError, match="lock"):
        tiny(tmp_path / "b", "lock=both").validate()
    tuned = Trainer(tiny(tmp_path / "c", f"model={first}", f"lock={lock}", "steps=3", "accum_steps=2"),
                    progress=False)
    before = {k: v.clone() for k, v in tuned.model.state_dict().items()}
    after = clipguide.load(tuned.run(resume=False)).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))}
    moved = {k for k in changed if k != "logit_scale"}
    assert moved
    if lock == "text":
        assert all(k.startswith("visual.") for k in moved)
    else:   # the image tower's weights and its batch-norm statistics stay
        assert not any(k.startswith("visual.") for k in moved)


def test_wise_exports_the_mix_of_start_and_tuned_weights(tmp_path):
    first = Trainer(tiny(tmp_path / "a", "steps=1", "save_every=100"), progress=False).run(resume=False)
    with pytest.raises(ConfigError, match="checkpoint"):
        Trainer(tiny(tmp_path / "b", "wise=0.5"), progress=False)
    with pytest.raises(ConfigError, match="wise"):
        tiny(tmp_path / "b", "wise=1.5").validate()
    tuned = clipguide.load(Trainer(tiny(tmp_path / "c", f"model={first}", "steps=2"), progress=False)
                           .run(resume=False)).state_dict()
    mixed_path = Trainer(tiny(tmp_path / "d", f"model={first}", "steps=2", "wise=0.25"), progress=False).run(resume=False)
    mixed, start = clipguide.load(mixed_path).state_dict(), clipguide.load(first).state_dict()
    moved = [k for k in start if start[k].is_floating_point() and not torch.equal(start[k], tuned[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(mixed[k], 0.75 * start[k] + 0.25 * tuned[k], rtol=1e-5, atol=1e-6)
    assert "0.75 x the starting checkpoint" in (tmp_path / "d" / "run" / "MODEL_CARD.md").read_text()


_DIST_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    import torch.distributed as dist
    from clipguide.train.config import TrainConfig
    from clipguide.train.trainer import Trainer
    cfg = TrainConfig.from_file(None, json.loads(sys.argv[1]))
    t = Trainer(cfg, progress=False)
    loss = t.train_step(0)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        torch.save({"loss": loss, "grads": {n: p.grad for n, p in t.model.named_parameters()},
                    "weights": t.model.state_dict()}, sys.argv[2])
    if dist.is_initialized():
        dist.destroy_process_group()
""")


# troubles of the processes' meeting and parting, not of the training: worth a second try (a busy
# machine's sockets; a gloo thread torn down while the process group is destroyed aborts the process)
_SOCKET_TROUBLE = ("Address already in use", "Connection refused", "Connection reset", "timed out",
                   "terminate called without an active exception")


def _run_dist(tmp_path: Path, nproc: int, overrides: list[str]) -> dict:
    script = tmp_path / "step.py"
    script.write_text(_DIST_SCRIPT)
    out = tmp_path / f"result_{nproc}.pt"
    # --standalone lets the rendezvous take a free port, so no other job on the machine can hold it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(script), json.dumps(overrides), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for _ in range(2):      # a second try only when the processes could not meet or part (_SOCKET_TROUBLE)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        if res.returncode == 0 or not any(m in res.stderr for m in _SOCKET_TROUBLE):
            break
    assert res.returncode == 0, f"torchrun with {nproc} process(es) failed:\n{res.stderr[-4000:]}"
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("extra", [[], ["adv_eps=0.5", "noise_aug=0.2"]], ids=["plain", "adversarial"])
def test_two_processes_match_one_on_the_same_global_batch(tmp_path, extra):
    overrides = TINY + ["precision=fp32", f"out_dir={tmp_path / 'run'}", *extra]
    one = _run_dist(tmp_path, 1, overrides)
    two = _run_dist(tmp_path, 2, overrides)
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    for k, g in one["grads"].items():
        assert _close(g, two["grads"][k]), k
    for k, w in one["weights"].items():
        assert _close(w, two["weights"][k]), k


def _train_cmd(out: Path, *extra: str) -> list[str]:
    sets = TINY + ["steps=10", "save_every=2", f"out_dir={out}", *extra]
    return [sys.executable, "-m", "clipguide", "train", "--no-eval", *sum([["--set", s] for s in sets], [])]


def test_killed_run_resumes_to_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ref_out, run_out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_train_cmd(ref_out), check=True, env=env, capture_output=True, timeout=300)
    proc = subprocess.Popen(_train_cmd(run_out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list((run_out / "checkpoints").glob("step_00000004.pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted((run_out / "checkpoints").glob("step_*.pt"))
    assert saved and not (run_out / "model.safetensors").exists(), "the run should have been killed mid-way"
    subprocess.run(_train_cmd(run_out) + ["--resume"], check=True, env=env, capture_output=True, timeout=300)
    ref = clipguide.load(ref_out / "model.safetensors").state_dict()
    got = clipguide.load(run_out / "model.safetensors").state_dict()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    steps = [json.loads(line)["step"] for line in (run_out / "metrics.jsonl").read_text().splitlines()
             if "loss" in line]
    assert steps == list(range(1, 11))              # no step logged twice after the resume


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "r"
    subprocess.run(_train_cmd(out, "steps=2"), check=True, env=env, capture_output=True, timeout=300)
    res = subprocess.run(_train_cmd(out, "steps=2"), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "--resume" in res.stderr


def test_fine_tune_a_saved_model_keeps_its_tokenizer(tmp_path):
    trainer = Trainer(tiny(tmp_path / "a", "steps=2", "save_every=100"), progress=False)
    first = trainer.run(resume=False)
    tuned = Trainer(tiny(tmp_path / "b", f"model={first}", "steps=2", "tokenizer=auto"), progress=False)
    before = {k: v.clone() for k, v in tuned.model.state_dict().items()}
    path = tuned.run(resume=False)
    after = clipguide.load(path)
    assert after.tokenizer.to_json() == trainer.model.tokenizer.to_json()
    assert any(not torch.equal(before[k], v) for k, v in after.state_dict().items())
    card = (tmp_path / "b" / "run" / "MODEL_CARD.md").read_text()
    assert "steps: 2" in card
    assert (tmp_path / "b" / "run" / "curves.png").stat().st_size > 1000


def test_confusion_picture(tmp_path):
    from clipguide.train.report import plot_confusion

    torch.manual_seed(0)
    trainer = Trainer(tiny(tmp_path, "steps=1"), progress=False)
    out = plot_confusion(trainer.model.eval(), tmp_path / "c.png", n=20)
    assert out.stat().st_size > 1000
