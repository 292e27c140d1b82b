"""Where a network's configuration comes from: the recipe's [model], or the pretrained source
that `train.init_from` names (a run, a checkpoint, a pipeline or model folder, a hub id). A VAE
recipe (model.kind = 'autoencoder-kl') starts from an AutoencoderKL: a VAE folder, a pipeline's
or run's vae/, a hub id's vae/ (Stable Diffusion's own VAE where it is at hand).

A pretrained network is rebuilt from the source's own saved config (config.json, every
UNet2DModel setting in it: flip_sin_to_cos, freq_shift, norm_eps, act_fn, ...), and its noise
schedule from the source's scheduler_config.json or run recipe. The recipe changes only what
a person set in it; what cannot change on trained weights (the shapes) is refused by name.
Nothing here imports torch: the CLI, the screens' probes and build_model all read it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from pydantic import ValidationError

from difflab.diffusion.hub import hub_unreachable
from difflab.diffusion.latents import model_input_shape, vae_config
from difflab.errors import InputError
from difflab.recipe import Recipe, save_recipe
from difflab.recipe.messages import describe_error
from difflab.recipe.registry import BETA_SCHEDULES, objective_of_prediction
from difflab.runtime.runs import RunDir, source_kind

# owner/name: what a hub id looks like (a local path that does not exist may look the same)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

# recipe key -> the network config key it sets. Structural ones fix tensor shapes, so trained
# weights cannot take another value; the others load into any value (the recipe may change them).
STRUCTURAL = {"dataset.channels": "in_channels", "model.block_out_channels": "block_out_channels",
              "model.layers_per_block": "layers_per_block", "model.down_block_types": "down_block_types",
              "model.up_block_types": "up_block_types", "model.channels": "channels",
              "model.kernel_size": "kernel_size"}
CHANGEABLE = {"dataset.image_size": "sample_size", "model.norm_num_groups": "norm_num_groups",
              "model.attention_head_dim": "attention_head_dim", "model.dropout": "dropout",
              "model.num_classes": "num_class_embeds"}
# An AutoencoderKL's: the same recipe keys, and its latent's channels.
VAE_STRUCTURAL = {"dataset.channels": "in_channels", "model.block_out_channels": "block_out_channels",
                  "model.layers_per_block": "layers_per_block", "model.latent_channels": "latent_channels"}
VAE_CHANGEABLE = {"dataset.image_size": "sample_size", "model.norm_num_groups": "norm_num_groups"}
SCHEDULE_KEYS = ("schedule.kind", "schedule.num_train_timesteps", "schedule.beta_schedule",
                 "schedule.beta_start", "schedule.beta_end", "train.objective")
_BASIC_KEYS = {"model.channels", "model.kernel_size", "dataset.channels"}
_UNET_KEYS = set(STRUCTURAL) - {"model.channels", "model.kernel_size"} | set(CHANGEABLE)


@dataclass
class PretrainedSource:
    """What `train.init_from` holds: its network's config and, when it says, its noise schedule."""

    name: str  # as the recipe wrote it
    where: str  # the folder (or hub id) it was read from
    kind: str  # "pipeline", "hub", "model", "checkpoint" or "run"
    network: dict[str, Any]  # the diffusers config of the network ("_class_name" included)
    schedule: dict[str, Any] = field(default_factory=dict)  # recipe keys: "schedule.kind", ... "train.objective"

    @property
    def model_kind(self) -> str:
        kinds = {"BasicUNet": "basic-unet", "AutoencoderKL": "autoencoder-kl"}
        return kinds.get(self.network.get("_class_name"), "unet2d")

    def value(self, key: str) -> Any:
        """The source's value of a recipe key (schedule or network), as the recipe writes it."""
        if key in self.schedule:
            return self.schedule[key]
        if key == "model.kind":
            return self.model_kind
        config = self.network
        if key == "dataset.image_size":
            size = config.get("sample_size")
            return size if isinstance(size, int) or size is None else int(size[0])
        if key == "model.num_classes":
            embeds = config.get("num_class_embeds")
            return embeds - 1 if embeds else 0  # difflab's class embedding has one extra "no class" row
        if key == "model.attention_head_dim" and config.get("attention_head_dim") is None:
            return one_head_dim(config)
        name = {**STRUCTURAL, **CHANGEABLE, **VAE_STRUCTURAL}.get(key)
        value = config.get(name) if name else None
        return list(value) if isinstance(value, tuple) else value


@dataclass
class Resolution:
    """A recipe with its source's settings filled in, and where each shown setting came from."""

    recipe: Recipe
    source: PretrainedSource | None
    origins: dict[str, str]  # recipe key -> "source", "recipe" or "default"


def open_source(init_from: str, base_dir: Path | None = None, online: bool = True,
                vae: bool = False) -> PretrainedSource:
    """Read what `init_from` says about its network and schedule (no weights are loaded); a hub id
    from the Hugging Face cache, else (`online`) from the hub. `vae`: the AutoencoderKL it holds
    (a VAE recipe's), not its UNet."""
    path = local_path(init_from, base_dir)
    if path is not None:
        source = _folder_vae_source(path, init_from) if vae else _folder_source(path, init_from)
    elif HUB_ID.match(init_from):
        source = _hub_source(init_from, online, vae)
    else:
        where = Path(base_dir or Path.cwd()) / init_from
        raise InputError(f"train.init_from = '{init_from}': no such folder ({where}); give a run folder, a "
                         f"checkpoint folder, a diffusers pipeline or model folder, or a hub id (owner/name)")
    _check_network(source, vae)
    return source


def _check_network(source: PretrainedSource, vae: bool) -> None:
    """The source's network must be one the recipe's model.kind trains."""
    network_class = source.network.get("_class_name", "UNet2DModel")
    if vae and network_class != "AutoencoderKL":
        raise InputError(f"train.init_from = '{source.name}': its network is a {network_class}; model.kind = "
                         f"'autoencoder-kl' starts from an AutoencoderKL: a VAE folder, a pipeline or run folder "
                         f"with vae/, or a hub id")
    if not vae and network_class not in ("UNet2DModel", "BasicUNet"):
        hint = "; to train it as a VAE, set model.kind = 'autoencoder-kl'" if network_class == "AutoencoderKL" else ""
        raise InputError(f"train.init_from = '{source.name}': its network is a {network_class}; difflab fine-tunes "
                         f"UNet2DModel (DDPM-style pipelines), its own BasicUNet and AutoencoderKL{hint}")


def vae_folder_in(path: Path) -> Path | None:
    """The AutoencoderKL folder `path` is or holds: itself, or its vae/ (a pipeline's, a run's)."""
    for folder in (path, path / "vae"):
        config = folder / "config.json"
        if config.is_file():
            try:
                if json.loads(config.read_text(encoding="utf-8")).get("_class_name") == "AutoencoderKL":
                    return folder
            except (OSError, ValueError, AttributeError):
                continue  # unreadable: whoever reads it next says why
    return None


def local_path(init_from: str, base_dir: Path | None) -> Path | None:
    """The existing folder `init_from` names: absolute, else beside the recipe, else under the current folder."""
    path = Path(init_from).expanduser()
    candidates = [path] if path.is_absolute() else [*([base_dir / path] if base_dir else []), Path.cwd() / path]
    return next((p for p in candidates if p.exists()), None)


def _folder_source(path: Path, name: str) -> PretrainedSource:
    if not path.is_dir():
        raise InputError(f"train.init_from = '{name}': {path} is a file; give a run, checkpoint, pipeline or "
                         f"model folder")
    kind = source_kind(path)
    if kind == "pipeline":
        network = _read_json(path / "unet" / "config.json", name)
        scheduler = path / "scheduler" / "scheduler_config.json"
        schedule = _scheduler_schedule(_read_json(scheduler, name), name) if scheduler.is_file() else {}
        return PretrainedSource(name, str(path), kind, network, schedule)
    if kind == "checkpoint":  # RUN/checkpoints/step_N: the run's network and schedule
        run = _run_source(path.parent.parent, name, use_model=False)
        return PretrainedSource(name, str(path), kind, run.network, run.schedule)
    if (path / "config.json").is_file():  # a model folder (RUN/model, or any save_pretrained)
        parent = path.parent
        schedule = _run_source(parent, name).schedule if (parent / "recipe.toml").is_file() else {}
        return PretrainedSource(name, str(path), "model", _read_json(path / "config.json", name), schedule)
    return _run_source(path, name)


def _folder_vae_source(path: Path, name: str) -> PretrainedSource:
    """A VAE recipe's folder source: an AutoencoderKL folder, a pipeline's or run's vae/, or a VAE
    run's checkpoint (or, unfinished, its newest one). Anything else is read as for a UNet, and
    _check_network names the network it holds."""
    if not path.is_dir():
        return _folder_source(path, name)  # says it is a file
    folder = vae_folder_in(path) if source_kind(path) != "checkpoint" else None
    if folder is None:
        return _folder_source(path, name)
    kind = "model" if folder == path else source_kind(path)
    return PretrainedSource(name, str(path), kind, _read_json(folder / "config.json", name))


def _run_source(path: Path, name: str, use_model: bool = True) -> PretrainedSource:
    """A run folder: its exported model's config when it has one, else the one its recipe builds."""
    run, recipe = RunDir.open(path)  # says clearly when it is not a run folder
    config = run.model_dir / "config.json"
    network = _read_json(config, name) if use_model and config.is_file() else network_config(recipe)
    schedule = {key: _get(recipe, key) for key in SCHEDULE_KEYS}
    return PretrainedSource(name, str(path), "run", network, schedule)


def _hub_source(hub_id: str, online: bool, vae: bool = False) -> PretrainedSource:
    """A pipeline on the hub (its unet/ and scheduler/, or for `vae` its vae/; or a bare model repo):
    the cache first, then the network."""
    names = ["vae/config.json" if vae else "unet/config.json", "config.json"]
    network = _hub_json(hub_id, names, online=False)
    unreachable = hub_unreachable() if network is None and online else None
    if network is None and online and not unreachable:
        network = _hub_json(hub_id, names, online)
    if network is None:
        where = ("the hub has no such pipeline or refused it" if online and not unreachable
                 else f"the hub cannot be asked ({unreachable})" if unreachable else "the hub was not asked")
        raise InputError(f"train.init_from = '{hub_id}': not a local folder, not in the Hugging Face cache, and "
                         f"{where}. Offline, download it elsewhere and give its folder: --set train.init_from=PATH")
    scheduler = None if vae else _hub_json(hub_id, ["scheduler/scheduler_config.json", "scheduler_config.json"], online)
    schedule = _scheduler_schedule(scheduler, hub_id) if scheduler else {}
    return PretrainedSource(hub_id, hub_id, "hub", network, schedule)


def _hub_json(hub_id: str, names: list[str], online: bool) -> dict[str, Any] | None:
    """The first of `names` the repository has, from the cache, else the hub; None when neither has one."""
    for offline in (True, False) if online else (True,):
        for filename in names:
            try:
                return _read_json(Path(hf_hub_download(hub_id, filename, local_files_only=offline)), hub_id)
            except EntryNotFoundError:
                continue  # the hub answered: no such file, try the next name
            except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
                if not offline:  # unreachable (after huggingface_hub's own retries): asking again only waits
                    return None
    return None


def _read_json(path: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"train.init_from = '{name}': cannot read {path} ({error})") from None


def _scheduler_schedule(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A diffusers scheduler config as the recipe's [schedule] keys and train.objective."""
    if config.get("trained_betas") is not None:
        raise InputError(f"train.init_from = '{name}': its scheduler lists its own betas (trained_betas), which "
                         f"[schedule] cannot say; set schedule.beta_schedule yourself and start from scratch")
    beta_schedule = config.get("beta_schedule", "linear")
    if beta_schedule not in BETA_SCHEDULES:
        raise InputError(f"train.init_from = '{name}': its scheduler's beta_schedule '{beta_schedule}' is not one "
                         f"difflab knows ({', '.join(BETA_SCHEDULES)})")
    return {"schedule.kind": "ddpm", "schedule.num_train_timesteps": config.get("num_train_timesteps", 1000),
            "schedule.beta_schedule": beta_schedule, "schedule.beta_start": config.get("beta_start", 1e-4),
            "schedule.beta_end": config.get("beta_end", 0.02),
            "train.objective": objective_of_prediction(config.get("prediction_type", "epsilon"))}


def one_head_dim(config: dict[str, Any]) -> int | None:
    """attention_head_dim = None gives each attention block one head as wide as its channels; when every
    attention block (the middle one too) has the same channels, that is one number the recipe can say."""
    channels = list(config.get("block_out_channels", ()))
    if not channels:
        return None
    attended = {c for c, kind in zip(channels, config.get("down_block_types", ())) if "Attn" in kind}
    attended |= {c for c, kind in zip(reversed(channels), config.get("up_block_types", ())) if "Attn" in kind}
    if config.get("add_attention", True):
        attended.add(channels[-1])
    return attended.pop() if len(attended) == 1 else None


# ---------------------------------------------------------------- the recipe and its source

def explicit(recipe: Recipe, key: str) -> bool:
    """Whether the recipe sets `key` itself. Pydantic remembers which keys were written; a section
    written out whole (a run's recipe.toml, a recipe saved from the lab) counts only its non-defaults."""
    section_name, name = key.split(".")
    section = getattr(recipe, section_name)
    written = section.model_fields_set
    if name not in written:
        return False
    if written != set(type(section).model_fields):
        return True
    default = type(section).model_fields[name].get_default(call_default_factory=True)
    return getattr(section, name) != default


def _get(recipe: Recipe, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(recipe, section), name)


def resolve(recipe: Recipe, base_dir: Path | None = None, online: bool = True) -> Resolution:
    """`recipe` with its source's network and schedule settings wherever it sets none of its own.

    Raises InputError, naming the setting and both values, when the recipe sets one that trained
    weights cannot take (e.g. other block_out_channels).
    """
    if not recipe.train.init_from:
        return Resolution(recipe, None, {key: "recipe" if explicit(recipe, key) else "default"
                                         for key in _shown_keys(recipe.model.kind)})
    source = open_source(recipe.train.init_from, base_dir, online, vae=recipe.model.kind == "autoencoder-kl")
    _refuse_changes(recipe, source)
    data = recipe.model_dump(mode="json")
    if source.kind != "hub":  # a folder found beside the recipe or here: written out whole, to replay anywhere
        data["train"]["init_from"] = str(Path(source.where).resolve())
    origins = {}
    schedule_keys = SCHEDULE_KEYS if source.model_kind != "autoencoder-kl" else ()  # a VAE has no schedule
    for key in ["model.kind", *_shown_keys(source.model_kind), *schedule_keys]:
        value = source.value(key)
        if explicit(recipe, key) or value is None:
            origins[key] = "recipe" if explicit(recipe, key) else "default"
            continue
        section, name = key.split(".")
        data[section][name] = value
        origins[key] = "source"
    if data["schedule"]["kind"] == "ddpm" and data["sample"]["sampler"] == "toy" and not explicit(recipe, "sample.sampler"):
        data["sample"]["sampler"] = "ddim"  # the toy sampler cannot step a DDPM schedule; DDIM is the course's
    try:
        resolved = Recipe.model_validate(data)
    except ValidationError as error:
        raise InputError(f"train.init_from = '{source.name}': with its settings the recipe is not valid: "
                         f"{describe_error(error.errors()[0], data)}") from None
    return Resolution(resolved, source, origins)


def resolve_run(recipe: Recipe, run: RunDir, base_dir: Path | None = None) -> Recipe:
    """A fresh run's recipe with its source's settings filled in; RUN/recipe.toml rewritten when that
    changed it (a run the lab starts saved the recipe as the screens hold it; `difflab run` resolved it first)."""
    resolved = resolve(recipe, base_dir).recipe
    if resolved != recipe:
        save_recipe(resolved.model_copy(update={"profiles": {}}), run.recipe_path)
    return resolved


def _shown_keys(kind: str) -> list[str]:
    if kind == "autoencoder-kl":
        return [*VAE_STRUCTURAL, *VAE_CHANGEABLE]
    keys = _BASIC_KEYS if kind == "basic-unet" else _UNET_KEYS
    return [key for key in [*STRUCTURAL, *CHANGEABLE] if key in keys]


def _structural(kind: str) -> dict[str, str]:
    return VAE_STRUCTURAL if kind == "autoencoder-kl" else STRUCTURAL


def _changeable(kind: str) -> dict[str, str]:
    return VAE_CHANGEABLE if kind == "autoencoder-kl" else CHANGEABLE


def _refuse_changes(recipe: Recipe, source: PretrainedSource) -> None:
    """One line for the first setting the recipe sets that the source's weights cannot take."""
    kind = source.model_kind
    keys = ["model.kind", *(k for k in _structural(kind) if k in _shown_keys(kind))]
    for key in keys:
        ours, theirs = _get(recipe, key), source.value(key)
        if explicit(recipe, key) and theirs is not None and ours != theirs:
            raise InputError(f"{key} = {_show(ours)}: cannot change on the pretrained weights of train.init_from = "
                             f"'{source.name}', whose {key} is {_show(theirs)}; leave it out of the recipe (the "
                             f"source's is used) or train from scratch (train.init_from = '')")
    if source.network.get("in_channels") != source.network.get("out_channels", source.network.get("in_channels")):
        raise InputError(f"train.init_from = '{source.name}': its network maps {source.network.get('in_channels')} "
                         f"channels to {source.network.get('out_channels')}; difflab trains denoisers whose "
                         f"input and output channels match")


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


# ---------------------------------------------------------------- the network's config

def network_config(recipe: Recipe, base_dir: Path | None = None, estimate: bool = False) -> dict[str, Any]:
    """The diffusers config the recipe's network is built from (`from_config`): the source's own,
    with the recipe's changes, when it starts from one; else the recipe's [model].

    `estimate` (sizes only): a source neither on disk nor in the cache is not fetched, and the
    recipe's own [model] stands in for it (an estimate never waits on the network).
    """
    if not recipe.train.init_from:
        return recipe_network(recipe, base_dir, estimate)
    try:
        resolution = resolve(recipe, base_dir, online=not estimate)
    except InputError:
        if not estimate:
            raise
        return recipe_network(recipe, base_dir, estimate)
    source, resolved = resolution.source, resolution.recipe
    config = dict(source.network)
    if source.model_kind == "autoencoder-kl":
        for key, name in VAE_CHANGEABLE.items():
            if (ours := _get(resolved, key)) != source.value(key):
                config[name] = ours
    elif source.model_kind == "unet2d":
        for key, name in CHANGEABLE.items():
            ours = _get(resolved, key)
            if ours == source.value(key) or (key == "model.attention_head_dim" and source.value(key) is None):
                continue  # unchanged (or a per-block head width the recipe cannot say: the source's stays)
            if key == "model.num_classes":  # a fresh class embedding (load_initial_weights leaves it as built)
                config[name] = ours + 1 if ours else None
            else:
                config[name] = ours
    return config


def recipe_network(recipe: Recipe, base_dir: Path | None = None, estimate: bool = False) -> dict[str, Any]:
    """The config of a fresh network as the recipe's [model] describes it; a latent recipe's UNet
    takes its VAE's latents (latents.model_input_shape)."""
    cfg = recipe.model
    if cfg.kind == "autoencoder-kl":
        return vae_config(recipe)
    channels, size, _ = model_input_shape(recipe, base_dir, estimate)
    if cfg.kind == "basic-unet":
        return {"_class_name": "BasicUNet", "in_channels": channels, "out_channels": channels,
                "channels": list(cfg.channels), "kernel_size": cfg.kernel_size}
    return {"_class_name": "UNet2DModel", "sample_size": size, "in_channels": channels,
            "out_channels": channels, "layers_per_block": cfg.layers_per_block,
            "block_out_channels": list(cfg.block_out_channels), "down_block_types": list(cfg.down_block_types),
            "up_block_types": list(cfg.up_block_types), "norm_num_groups": cfg.norm_num_groups,
            "attention_head_dim": cfg.attention_head_dim, "dropout": cfg.dropout,
            "num_class_embeds": cfg.num_classes + 1 if cfg.num_classes else None}


def provenance(resolution: Resolution) -> list[tuple[str, Any, str]]:
    """(setting, value, "source" / "recipe" / "default") for each network and schedule setting: the
    recipe's keys, then the source network's settings that no recipe key says (all "source")."""
    source, recipe = resolution.source, resolution.recipe
    rows = [(key, _get(recipe, key), origin) for key, origin in resolution.origins.items()]
    if source is not None:
        rows += [(f"{source.network.get('_class_name', 'network')}.{name}", value, "source")
                 for name, value in source_only_settings(source).items()]
    return rows


def source_only_settings(source: PretrainedSource) -> dict[str, Any]:
    """The source network's settings that no recipe key says (flip_sin_to_cos, norm_eps, ...)."""
    kind = source.model_kind
    said = set(_structural(kind).values()) | set(_changeable(kind).values()) | {"out_channels"}
    return {k: v for k, v in source.network.items() if not k.startswith("_") and k not in said}
