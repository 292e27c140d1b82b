"""Every training and sampling switch a recipe has is proven to act: each test here fails when its
feature is silently turned off (a mutation check found EMA and min-SNR could be dropped unnoticed).

The runs are the conftest's tiny ones, cut to a few steps. Where a switch acts inside the loop, the
test watches the loop from outside: the gradients handed to the optimizer (`optimizer_steps`) or
the model calls of the training loss (`training_calls`), never the code's private state.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from PIL import Image
from safetensors.torch import load_file
from torch.nn.modules.module import register_module_forward_hook

from difflab.diffusion import guidance as guidance_module
from difflab.diffusion import objectives
from difflab.diffusion.generate import SamplingSetup, generate
from difflab.diffusion.models import BasicUNet, build_model, denoise
from difflab.diffusion.objectives import BatchLoss, ToyObjective, make_objective
from difflab.diffusion.schedules import corrupt, training_noise_scheduler
from difflab.recipe import load_recipe
from tests.conftest import TINY_DDPM, read_losses, run_cli, tiny_args

# The tiny DDPM as class-conditional (the generated shapes have 3 classes).
CONDITIONAL = ["model.num_classes=3"]


def train(out: Path, *extra: str, base: list[str] | None = None) -> Path:
    """A tiny run into `out` (from-scratch's recipe with the conftest's tiny settings)."""
    args = tiny_args(*extra) if base is None else tiny_args(*extra, base=base)
    assert run_cli("run", "from-scratch", "--out", out, *args) == 0
    return out


def last_checkpoint(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The newest checkpoint's weights (`model`) and tensor state (`state`: EMA shadow, RNG...)."""
    folder = max((run / "checkpoints").iterdir())
    return {"model": load_file(folder / "model.safetensors"), "state": load_file(folder / "state.safetensors")}


@pytest.fixture
def optimizer_steps(monkeypatch) -> list[torch.Tensor]:
    """Every optimizer step's gradient (all trainable parameters, flattened), as the optimizer receives it."""
    seen: list[torch.Tensor] = []
    steps = {}
    for kind in (torch.optim.Adam, torch.optim.AdamW):
        steps[kind] = kind.step

        def step(self, *args, _original=kind.step, **kwargs):
            grads = [p.grad.flatten() for group in self.param_groups for p in group["params"] if p.grad is not None]
            seen.append(torch.cat(grads).detach().clone())
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(kind, "step", step)
    return seen


@pytest.fixture
def training_calls(monkeypatch) -> list[SimpleNamespace]:
    """Every model call of the DDPM training loss: the class labels it was given and the dtypes its
    convolutions computed in (Accelerate hands the model's output back as float32 either way)."""
    seen: list[SimpleNamespace] = []

    def recording(model, x, timesteps=None, class_labels=None):
        dtypes = set()
        hook = register_module_forward_hook(
            lambda module, inputs, output: dtypes.add(output.dtype) if isinstance(module, torch.nn.Conv2d) else None)
        try:
            output = denoise(model, x, timesteps, class_labels)
        finally:
            hook.remove()
        seen.append(SimpleNamespace(labels=class_labels, conv_dtypes=dtypes))
        return output

    monkeypatch.setattr(objectives, "denoise", recording)
    return seen


# ------------------------------------------------------------------ EMA


def test_ema_weights_are_the_ones_exported_and_sampled(tmp_path, capsys):
    run = train(tmp_path / "run", "train.ema=true", "train.ema_decay=0.9", "sample.gif=false")
    checkpoint = last_checkpoint(run)
    shadow = [checkpoint["state"][f"ema.{i}"] for i in range(len(checkpoint["model"]))]
    exported = list(BasicUNet.from_pretrained(run / "model").parameters())
    raw = BasicUNet.from_pretrained(run / "model")
    raw.load_state_dict(checkpoint["model"])
    assert len(exported) == len(shadow) and all(torch.equal(e, s) for e, s in zip(exported, shadow))
    assert any(not torch.equal(e, r) for e, r in zip(exported, raw.parameters())), "EMA equal to the raw weights"
    torch.manual_seed(0)  # the recipe's seed: the weights the run started from
    start = build_model(load_recipe(run / "recipe.toml"))
    assert any(not torch.equal(e, s) for e, s in zip(exported, start.parameters())), "EMA never moved"
    # `difflab sample` samples the exported (EMA) model: the same images as the run's final grid
    assert run_cli("sample", run, "--device", "cpu") == 0
    capsys.readouterr()
    again = Image.open(run / "samples" / "toy-4steps-seed0-final.png")
    assert again.tobytes() == Image.open(run / "samples" / "final.png").tobytes()


# ------------------------------------------------------------------ min-SNR


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float, objective: str) -> torch.Tensor:
    """Hang et al.'s weight, from the schedule's alpha_bar: min(SNR, gamma) for an x0 loss, divided by
    SNR for an epsilon loss and by SNR + 1 for a v loss."""
    snr = alpha_bar / (1 - alpha_bar)
    x0_weight = torch.minimum(snr, torch.full_like(snr, gamma))
    return {"x0": x0_weight, "epsilon": x0_weight / snr, "v_prediction": x0_weight / (snr + 1)}[objective]


@pytest.mark.parametrize("objective", ["epsilon", "x0", "v_prediction"])
def test_min_snr_weights_each_timesteps_loss_by_the_formula(tmp_path, objective):
    (tmp_path / "r.toml").write_text("")
    recipe = load_recipe(tmp_path / "r.toml", [*TINY_DDPM, f"train.objective='{objective}'",
                                               "train.loss_weighting='min-snr'", "train.snr_gamma=2.5"])
    scheduler = training_noise_scheduler(recipe)
    torch.manual_seed(0)
    model = build_model(recipe)
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    batch = make_objective(recipe, (-1.0, 1.0), scheduler).loss(model, x, torch.Generator().manual_seed(0))
    t = (batch.level * scheduler.config.num_train_timesteps).round().long()
    weights = min_snr_weight(scheduler.alphas_cumprod[t], 2.5, objective)
    assert weights.min() < 0.99 * weights.max()  # timesteps on both sides of gamma: the weights matter
    assert torch.allclose(batch.loss, (batch.per_image * weights).mean(), rtol=1e-5)


# ------------------------------------------------------------------ the optimizer step


def test_gradient_clipping_bounds_the_norm_the_optimizer_sees(tmp_path, optimizer_steps):
    train(tmp_path / "free", "train.max_steps=4")
    free = [float(g.norm()) for g in optimizer_steps]
    optimizer_steps.clear()
    train(tmp_path / "clipped", "train.max_steps=4", f"train.max_grad_norm={min(free) / 4}")
    clipped = [float(g.norm()) for g in optimizer_steps]
    assert len(clipped) == 4 and all(norm <= min(free) / 4 * 1.001 for norm in clipped), (free, clipped)


def test_two_accumulated_batches_of_8_are_one_batch_of_16(tmp_path, optimizer_steps, monkeypatch):
    # the toy loss draws noise per micro-batch; a loss without draws makes the two comparable exactly
    def loss_without_draws(self, model, x, generator, labels=None):
        amount = (x.flatten(1).sum(1) * 0.37).remainder(1)
        prediction = denoise(model, corrupt(x, amount, 1 - x), class_labels=labels)
        per_image = F.mse_loss(prediction, x, reduction="none").mean(dim=(1, 2, 3))
        return BatchLoss(per_image.mean(), per_image.detach(), amount)

    monkeypatch.setattr(ToyObjective, "loss", loss_without_draws)
    for i, (batch, accumulation) in enumerate([(16, 1), (8, 2), (8, 1)]):
        train(tmp_path / f"run{i}", "train.max_steps=1", f"train.batch_size={batch}",
              f"train.gradient_accumulation={accumulation}")
    one_of_16, two_of_8, one_of_8 = optimizer_steps
    assert torch.allclose(two_of_8, one_of_16, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(one_of_8, one_of_16, rtol=1e-2)  # the test can tell batches apart


def test_warm_up_raises_the_learning_rate_to_its_value(tmp_path):
    run = train(tmp_path / "run", "train.max_steps=8", "train.log_every=1", "train.lr=0.004",
                "train.lr_schedule='constant_with_warmup'", "train.warmup_steps=5")
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.004 * min(step, 5) / 5 for step in range(1, 9)])


# ------------------------------------------------------------------ class conditioning


def test_label_dropout_trains_a_share_of_images_without_their_class(tmp_path, training_calls):
    null = 3  # model.num_classes: the index after the classes means "no class"

    def dropped_share(dropout: float) -> float:
        training_calls.clear()
        train(tmp_path / f"run{dropout}", *CONDITIONAL, f"train.label_dropout={dropout}", base=TINY_DDPM)
        labels = torch.cat([call.labels for call in training_calls])
        assert len(labels) == 3 * 64 and labels.min() >= 0
        return float((labels == null).float().mean())

    assert dropped_share(0.0) == 0
    assert 0.35 < dropped_share(0.5) < 0.65


# ------------------------------------------------------------------ LoRA


def test_lora_trains_only_its_adapters_and_they_change_the_output(tmp_path, optimizer_steps):
    run = train(tmp_path / "run", "train.lora_rank=2", "train.max_steps=4", "train.lr=0.01", base=TINY_DDPM)
    recipe = load_recipe(run / "recipe.toml")
    torch.manual_seed(recipe.seed)  # as the run did: the base weights it started from
    start = build_model(recipe)
    trained = last_checkpoint(run)["model"]
    adapters = {key: value for key, value in trained.items() if ".lora_" in key}
    base = {key.replace(".base_layer", ""): value for key, value in trained.items() if ".lora_" not in key}
    assert adapters and base.keys() == start.state_dict().keys()
    assert all(torch.equal(value, start.state_dict()[key]) for key, value in base.items()), "base weights moved"
    adapter_count = sum(value.numel() for value in adapters.values())
    assert {len(g) for g in optimizer_steps} == {adapter_count}  # the optimizer saw the adapters alone
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trainable_parameters"] == adapter_count < summary["parameters"]
    merged = UNet2DModel.from_pretrained(run / "model")  # RUN/model has the adapters merged in
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 900])
    with torch.no_grad():
        change = (denoise(merged, x, t) - denoise(start, x, t)).abs().max()
    assert change > 1e-4


# ------------------------------------------------------------------ mixed precision


def test_bf16_mixed_precision_runs_the_model_in_bf16(tmp_path, training_calls):
    train(tmp_path / "full", "train.max_steps=2", base=TINY_DDPM)
    assert set.union(*(call.conv_dtypes for call in training_calls)) == {torch.float32}
    training_calls.clear()
    run = train(tmp_path / "bf16", "train.max_steps=2", "train.mixed_precision='bf16'", base=TINY_DDPM)
    assert set.union(*(call.conv_dtypes for call in training_calls)) == {torch.bfloat16}
    assert all(torch.isfinite(torch.tensor(read_losses(run))))


# ------------------------------------------------------------------ guidance while sampling


def sampling_setup(tmp_path: Path, *extra: str) -> SamplingSetup:
    """An untrained tiny DDPM (seeded) with the recipe's sampling and guidance settings."""
    (tmp_path / "r.toml").write_text("")
    recipe = load_recipe(tmp_path / "r.toml", [*TINY_DDPM, *extra])
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    return SamplingSetup(model, recipe, (3, 8, 8), (-1.0, 1.0), "cpu", training_noise_scheduler(recipe),
                         data_dir=tmp_path)


def colour_distance(images: torch.Tensor, colour: list[float]) -> float:
    target = torch.tensor(colour).view(1, 3, 1, 1) * 2 - 1
    return float((images - target).abs().mean())


@pytest.mark.parametrize("through_model", [False, True])
def test_colour_guidance_pulls_samples_toward_its_colour(tmp_path, through_model):
    red, blue, switch = [0.9, 0.1, 0.1], [0.1, 0.1, 0.9], f"guidance.through_model={str(through_model).lower()}"

    def sampled(colour: list[float], scale: float) -> torch.Tensor:
        return generate(sampling_setup(tmp_path, "guidance.function='color'", f"guidance.color={colour}",
                                       f"guidance.scale={scale}", switch), 8, 4)

    plain, reddened, blued = sampled(red, 0), sampled(red, 400), sampled(blue, 400)
    assert colour_distance(reddened, red) < 0.8 * colour_distance(plain, red)
    assert colour_distance(blued, blue) < 0.8 * colour_distance(plain, blue)
    # each toward its own colour: more red in the red-guided samples, more blue in the blue-guided
    assert reddened[:, 0].mean() > blued[:, 0].mean() + 0.2 and blued[:, 2].mean() > reddened[:, 2].mean() + 0.2


def test_colour_guidance_through_the_model_is_another_gradient(tmp_path):
    cheap, through = (generate(sampling_setup(tmp_path, "guidance.function='color'", "guidance.scale=400",
                                              f"guidance.through_model={flag}"), 8, 4) for flag in ("false", "true"))
    assert not torch.allclose(cheap, through)


def test_classifier_guidance_pulls_samples_toward_its_class(tmp_path, monkeypatch):
    # a small fixed classifier stands in for the reference one (trained for 12 s): guidance must
    # raise the probability of the target class under whatever classifier it is given
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    monkeypatch.setattr(guidance_module, "reference_classifier",
                        lambda data, device: SimpleNamespace(model=classifier))

    def target_probability(images: torch.Tensor) -> float:
        with torch.no_grad():
            return float(classifier((images + 1) / 2).softmax(-1)[:, 2].mean())

    settings = ["guidance.function='classifier'", "guidance.target_class=2"]
    plain = generate(sampling_setup(tmp_path, *settings, "guidance.scale=0"), 8, 4)
    guided = generate(sampling_setup(tmp_path, *settings, "guidance.scale=20"), 8, 4)
    assert target_probability(guided) > target_probability(plain) + 0.1


def test_classifier_free_guidance_mixes_the_two_predictions_by_its_scale(tmp_path):
    setup = sampling_setup(tmp_path, *CONDITIONAL, "sample.guidance_scale=3")
    x, t = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        cond = denoise(setup.model, x, t.expand(4), labels)
        uncond = denoise(setup.model, x, t.expand(4), torch.full_like(labels, 3))
        guided = setup.model_fn(labels)(x, t)
    assert not torch.allclose(cond, uncond)  # the classes change the untrained model's prediction
    assert torch.allclose(guided, uncond + 3 * (cond - uncond), atol=1e-5)
    class_alone = generate(sampling_setup(tmp_path, *CONDITIONAL, "sample.guidance_scale=1"), 4, 4)
    assert not torch.allclose(generate(setup, 4, 4), class_alone)


# ------------------------------------------------------------------ torch.compile


def test_compile_switches_hand_the_model_to_torch_compile(tmp_path, monkeypatch):
    # inductor takes minutes on these CPUs: torch.compile is watched, and hands the model back as it is
    compiled = []

    def recording_compile(model, **options):
        compiled.append((type(model).__name__, options))
        return model

    monkeypatch.setattr(torch, "compile", recording_compile)
    train(tmp_path / "eager", "train.max_steps=1", "sample.gif=false")
    assert compiled == []
    train(tmp_path / "compiled", "train.max_steps=1", "sample.gif=false", "train.compile=true")
    assert [(name, options.get("backend")) for name, options in compiled] == [("BasicUNet", "inductor")]
    compiled.clear()
    train(tmp_path / "sampled", "train.max_steps=1", "sample.gif=false", "sample.compile=true")
    assert compiled and {name for name, _ in compiled} == {"BasicUNet"}
