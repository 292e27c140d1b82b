"""The mathematics and the models: datasets, noise schedules, networks, objectives,
conditioning, samplers (toy and diffusers), guidance, inversion, LoRA, checkpoints,
loading, evaluation, the audio codec and rendering to images. Nothing here knows of
jobs, events or the worker."""
