"""A diffusers pipeline for a class-conditional UNet2DModel with classifier-free guidance.

difflab copies this file, unchanged, into a class-conditional run's RUN/pipeline as
pipeline.py, and model_index.json names it (`"_class_name": ["pipeline",
"ClassConditionalDDPMPipeline"]`), so plain diffusers loads the folder, on disk or on
the Hub, with `DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`. It
therefore imports only torch and diffusers (and the standard library).

The UNet has one class embedding per class plus a last "no class" one (training dropped
some labels to it), so one network predicts both p(x | class) and p(x); each step mixes
them as uncond + guidance_scale * (cond - uncond), from one UNet call on a doubled batch.

A latent run's pipeline also holds its VAE (the optional `vae`, an AutoencoderKL): the UNet
then denoises latents, which are divided by the VAE's scaling_factor and decoded to images,
as StableDiffusionPipeline does.
"""

from typing import ClassVar

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class ClassConditionalDDPMPipeline(DiffusionPipeline):
    """Sample chosen classes from a class-conditional UNet2DModel (num_class_embeds = classes + 1)."""

    model_cpu_offload_seq = "unet->vae"
    _optional_components: ClassVar[list[str]] = ["vae"]  # pixel-space runs have none: model_index.json then omits it

    def __init__(self, unet, scheduler, vae=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)

    @property
    def num_classes(self) -> int:
        """The classes the model was trained on; the index after the last one is "no class"."""
        return self.unet.config.num_class_embeds - 1

    @torch.no_grad()
    def __call__(self, class_labels=0, guidance_scale: float = 3.0, num_inference_steps: int = 1000,
                 generator=None, output_type: str = "pil", return_dict: bool = True):
        """One image per entry of `class_labels` (an int or a list of ints, each below num_classes).

        guidance_scale: 0 ignores the class, 1 is the class alone, above 1 pushes harder toward it.
        output_type: "pil", "np" (arrays in 0..1) or "pt" (a tensor in 0..1).
        """
        labels = self._labels(class_labels)
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (len(labels), self.unet.config.in_channels, *size)
        device = self._execution_device
        # randn is not reproducible on mps: draw on the CPU there, as DDPMPipeline does
        draw_on = "cpu" if device.type == "mps" else device
        image = randn_tensor(shape, generator=generator, device=torch.device(draw_on), dtype=self.unet.dtype)
        image = image.to(device) * self.scheduler.init_noise_sigma
        labels = labels.to(device)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            prediction = self._guided(self.scheduler.scale_model_input(image, t), t, labels, guidance_scale)
            image = self.scheduler.step(prediction, t, image, generator=generator).prev_sample
        if self.vae is not None:
            image = self.vae.decode(image.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=image) if return_dict else (image,)

    def _labels(self, class_labels) -> torch.Tensor:
        labels = torch.as_tensor([class_labels] if isinstance(class_labels, int) else list(class_labels),
                                 dtype=torch.long)
        if labels.ndim != 1 or not len(labels):
            raise ValueError(f"class_labels={class_labels!r}: give a class index or a list of them")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"class_labels={class_labels!r}: this model knows classes 0..{self.num_classes - 1}")
        return labels

    def _guided(self, x: torch.Tensor, t, labels: torch.Tensor, scale: float) -> torch.Tensor:
        """The UNet's prediction for `labels`, mixed with its "no class" prediction by `scale`."""
        null = torch.full_like(labels, self.num_classes)
        if scale == 1:
            return self.unet(x, t, class_labels=labels).sample
        if scale == 0:
            return self.unet(x, t, class_labels=null).sample
        both = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)
