"""The from-scratch chapter's parts: corruption, BasicUNet, toy sampler."""

from __future__ import annotations

import pytest
import torch

from difflab.diffusion.models import BasicUNet, build_model, count_parameters
from difflab.diffusion.samplers import Trajectory, starting_noise, toy_sample
from difflab.diffusion.schedules import corrupt
from difflab.recipe import parse_recipe


def test_corruption_amount_zero_keeps_the_image_and_one_is_pure_noise():
    x, noise = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    out = corrupt(x, torch.tensor([0.0, 1.0, 0.25]), noise)
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], noise[1])
    assert torch.allclose(out[2], 0.75 * x[2] + 0.25 * noise[2])


def test_the_course_basic_unet_has_its_309k_parameters_and_keeps_shape():
    model = build_model(parse_recipe({}))
    assert count_parameters(model) == 309_057
    assert [l.out_channels for l in model.down_layers] == [32, 64, 64]
    assert [l.out_channels for l in model.up_layers] == [64, 32, 1]
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("channels,levels,size", [(3, [16, 32], 10), (1, [8, 16, 16, 32], 32), (3, [8, 8, 8], 16)])
def test_basic_unet_takes_any_level_count_and_channels(channels, levels, size):
    model = BasicUNet(in_channels=channels, out_channels=channels, channels=tuple(levels), kernel_size=3)
    assert model(torch.rand(2, channels, size, size)).shape == (2, channels, size, size)


def test_basic_unet_saves_and_loads_with_diffusers(tmp_path):
    torch.manual_seed(0)
    model = BasicUNet(channels=(8, 16), kernel_size=3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = BasicUNet.from_pretrained(tmp_path)
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    assert loaded.config.channels == [8, 16] or tuple(loaded.config.channels) == (8, 16)


class Constant(torch.nn.Module):
    """A 'model' that always predicts the same clean image."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, x):
        return self.target.expand_as(x)


def test_the_toy_sampler_ends_exactly_on_the_last_prediction():
    target = torch.full((1, 1, 4, 4), 0.3)
    out = toy_sample(Constant(target), torch.rand(2, 1, 4, 4), steps=5)
    assert torch.allclose(out, target.expand(2, 1, 4, 4))


def test_the_toy_sampler_moves_one_over_n_minus_i_of_the_way():
    target, x = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    trajectory = Trajectory()
    trajectory.final = toy_sample(Constant(target), x, 4, callback=trajectory.record)
    # from 1 toward 0: 1 → 3/4 → 3/4·2/3 = 1/2 → 1/2·1/2 = 1/4 → 0
    assert [round(t.mean().item(), 6) for t in trajectory.inputs] == [1.0, 0.75, 0.5, 0.25]
    assert len(trajectory.predictions) == 4 and trajectory.final.abs().max() == 0


def test_the_callback_sees_every_step_input_and_prediction():
    seen = []
    toy_sample(Constant(torch.zeros(1, 1, 2, 2)), torch.ones(3, 1, 2, 2), 6,
               callback=lambda step: seen.append((step.index, step.total, step.x.shape)))
    assert seen == [(i, 6, (3, 1, 2, 2)) for i in range(6)]


def test_starting_noise_is_seeded_and_spans_the_value_range():
    a = starting_noise(64, (1, 8, 8), seed=3, value_range=(-1.0, 1.0))
    assert torch.equal(a, starting_noise(64, (1, 8, 8), seed=3, value_range=(-1.0, 1.0)))
    assert a.min() < -0.9 and a.max() > 0.9
    assert not torch.equal(a, starting_noise(64, (1, 8, 8), seed=4, value_range=(-1.0, 1.0)))


def test_the_step_by_step_figure_keeps_first_and_last_steps():
    from difflab.diffusion.generate import figure_rows
    from difflab.diffusion.samplers import Trajectory

    short = Trajectory(inputs=list(range(4)), predictions=list(range(4)))
    assert figure_rows(short, 5)[0] == [0, 1, 2, 3]  # fewer steps than rows: every step
    long = Trajectory(inputs=list(range(40)), predictions=list(range(40)))
    assert figure_rows(long, 5)[0] == [0, 10, 20, 29, 39]
