"""Shared test batteries: every generator adapter passes the same checks."""
from __future__ import annotations

import torch


class GeneratorBattery:
    """What every generator passes: range, gradient to the latent, seed, batch independence."""

    def build(self, batch: int = 1, seed: int = 0, init=None):
        raise NotImplementedError

    def test_output_in_unit_range(self):
        x = self.build(batch=2)()
        assert x.shape[:2] == (2, 3) and x.min() >= 0 and x.max() <= 1

    def test_gradient_reaches_the_latent(self):
        gen = self.build()
        gen().mean().backward()
        grads = [p.grad for p in gen.parameters() if p.requires_grad]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)

    def test_same_seed_same_image(self):
        assert torch.equal(self.build(seed=3)(), self.build(seed=3)())
        assert not torch.equal(self.build(seed=3)(), self.build(seed=4)())

    def test_batch_of_one_equals_batch_of_n(self):
        many = self.build(batch=3, seed=1)
        out = many()
        for i in range(3):
            one = self.build(batch=1, seed=1)
            with torch.no_grad():
                latents = [p for p in many.parameters() if p.requires_grad]
                for p_one, p_many in zip([p for p in one.parameters() if p.requires_grad], latents):
                    p_one.copy_(p_many[i:i + 1])
            torch.testing.assert_close(one()[0], out[i], atol=1e-5, rtol=1e-5)   # batched kernels sum in another order

    init_tolerance = 1e-3     # mean pixel error of a start from an image (lossy latents allow more)

    def init_image(self) -> torch.Tensor:
        return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 0.8 + 0.1

    def test_init_from_an_image(self):
        init = self.init_image()
        gen = self.build(init=init)
        with torch.no_grad():
            start, noise = gen(), self.build(seed=5)()
        assert start.shape[-2:] == init.shape[-2:]
        err = (start - init).abs()
        assert err.mean() < self.init_tolerance
        assert err.mean() < (noise - init).abs().mean()      # closer to the image than a random start
