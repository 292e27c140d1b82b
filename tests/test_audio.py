"""The audio chapter: sound ⇄ spectrogram image ⇄ sound, WAV files, and a spectrogram model end to end."""

from __future__ import annotations

import math

import pytest
import soundfile
import torch

from difflab.diffusion.audio import SpectrogramCodec, read_wav, write_wav
from difflab.diffusion.data import load_dataset
from difflab.diffusion.sounds import FAMILIES, GeneratedClips
from difflab.errors import InputError
from difflab.recipe import AudioConfig, DatasetConfig, load_recipe
from tests.conftest import TINY_DDPM, run_cli, tiny_args

# The DDPM chapter's tiny model on 8x8 spectrograms of 0.25 s clips: 8 mel bands x 8 frames.
TINY_AUDIO = [*TINY_DDPM, "dataset.source=audio", "dataset.channels=1", "dataset.num_images=40",
              "audio.sample_rate=4000", "audio.clip_seconds=0.25", "audio.n_fft=256", "audio.hop_length=128",
              "audio.n_mels=8", "audio.griffin_lim_iters=8"]


def mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def dominant_frequency(wave: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(len(wave))).abs()
    return spectrum.argmax().item() * sample_rate / len(wave)


@pytest.mark.parametrize("frequency", [220.0, 523.25, 1800.0])
def test_a_sine_comes_back_through_the_image_at_its_frequency_within_one_mel_band(frequency):
    cfg = AudioConfig()  # 8 kHz, 32 mel bands: the built-in recipe's setting
    t = torch.arange(cfg.num_samples) / cfg.sample_rate
    sine = 0.5 * torch.sin(2 * math.pi * frequency * t)
    back, error = SpectrogramCodec(cfg, image_size=32).round_trip(sine[None])
    band = (mel(cfg.top_frequency) - mel(cfg.f_min)) / (cfg.n_mels + 1)  # spacing of the mel band centres
    assert abs(mel(dominant_frequency(back[0], cfg.sample_rate)) - mel(frequency)) <= band
    assert back.shape == (1, cfg.num_samples) and error.log_spectral_distance > 0


def test_more_mel_bands_lose_less_in_the_round_trip():
    source = GeneratedClips(5, 8000, 4000, seed=0)  # one clip of each family, 0.5 s
    waves = torch.stack([source.clip(i) for i in range(5)])
    coarse = SpectrogramCodec(AudioConfig(n_mels=16, clip_seconds=0.5), 16).round_trip(waves)[1]
    fine = SpectrogramCodec(AudioConfig(n_mels=128, clip_seconds=0.5), 16).round_trip(waves)[1]
    assert fine.spectral_convergence < coarse.spectral_convergence
    assert fine.log_spectral_distance < coarse.log_spectral_distance


def test_generated_clips_are_images_with_family_labels_and_repeat_for_a_seed():
    cfg = DatasetConfig(source="audio", num_images=10, image_size=16, value_range="-1..1")
    audio = AudioConfig(sample_rate=4000, clip_seconds=0.5, n_fft=256, hop_length=128, n_mels=16)
    data = load_dataset(cfg, seed=3, audio=audio)
    assert data.images.shape == (10, 1, 16, 16) and data.class_names == FAMILIES
    assert data.labels.tolist() == [i % 5 for i in range(10)]
    assert data.images.min() >= -1 and data.images.max() == 1  # each clip's loudest band is white
    assert torch.equal(data.images, load_dataset(cfg, seed=3, audio=audio).images)
    assert not torch.equal(data.images, load_dataset(cfg, seed=4, audio=audio).images)


def test_wav_files_written_load_back_with_their_rate_and_length(tmp_path):
    wave = 0.5 * torch.sin(torch.linspace(0, 400, 6000))
    path = write_wav(tmp_path / "clip.wav", wave, 12000)
    info = soundfile.info(str(path))
    assert (info.samplerate, info.frames, info.channels) == (12000, 6000, 1)
    again = read_wav(path, 12000, 6000)
    assert again.shape == (6000,) and torch.allclose(again, wave, atol=1e-4)  # 16-bit PCM


def test_a_wav_folder_is_resampled_mixed_to_mono_and_cut_or_padded(tmp_path):
    (tmp_path / "wavs" / "low").mkdir(parents=True)
    (tmp_path / "wavs" / "high").mkdir()
    stereo = torch.rand(22050 * 2, 2).numpy() - 0.5  # 2 s at 22.05 kHz: cut to 1 s at 8 kHz
    soundfile.write(tmp_path / "wavs" / "low" / "a.wav", stereo, 22050)
    soundfile.write(tmp_path / "wavs" / "high" / "b.wav", torch.rand(2000).numpy() - 0.5, 8000)  # padded
    recipe = tmp_path / "r.toml"
    recipe.write_text('[dataset]\nsource = "audio"\npath = "wavs"\nimage_size = 32\n')
    r = load_recipe(recipe)
    data = load_dataset(r.dataset, tmp_path, audio=r.audio)
    assert data.images.shape == (2, 1, 32, 32) and data.class_names == ["high", "low"]
    assert data.labels.tolist() == [0, 1]
    assert read_wav(tmp_path / "wavs" / "high" / "b.wav", 8000, 8000)[2000:].abs().max() == 0


@pytest.mark.parametrize("content", [b"", b"RIFF\x10\x00\x00\x00WAVEfmt garbage"], ids=["empty", "corrupt"])
def test_an_empty_or_corrupt_wav_is_named_in_a_clear_error(tmp_path, capsys, content):
    (tmp_path / "wavs").mkdir()
    soundfile.write(tmp_path / "wavs" / "good.wav", torch.zeros(100).numpy(), 8000)
    (tmp_path / "wavs" / "bad.wav").write_bytes(content)
    with pytest.raises(InputError, match=r"cannot read audio file .*bad\.wav"):
        read_wav(tmp_path / "wavs" / "bad.wav", 8000, 8000)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[dataset]\nsource = "audio"\npath = "wavs"\n')
    assert run_cli("run", recipe, "--out", tmp_path / "run", "--set", "device='cpu'") == 2
    err = capsys.readouterr().err
    assert "bad.wav" in err and "Traceback" not in err


def test_a_wav_with_no_samples_is_an_input_error(tmp_path):
    soundfile.write(tmp_path / "silent.wav", torch.zeros(0).numpy(), 8000)
    with pytest.raises(InputError, match="silent.wav holds no samples"):
        read_wav(tmp_path / "silent.wav", 8000, 8000)


def test_mel_settings_that_cannot_work_are_refused_with_the_reason(recipe_file):
    with pytest.raises(InputError, match="audio.n_mels = 256: mel band 0 covers no STFT bin with audio.n_fft = 256"):
        load_recipe(recipe_file("[audio]\nn_mels = 256\nn_fft = 256\n"))
    with pytest.raises(InputError, match="dataset.channels = 3: a spectrogram image has one channel"):
        load_recipe(recipe_file('[dataset]\nsource = "audio"\nchannels = 3\n'))


def test_a_tiny_spectrogram_model_trains_and_writes_wav_files(tmp_path):
    run = tmp_path / "run"
    assert run_cli("run", "audio-spectrogram", "--out", run, *tiny_args(
        "train.epochs=2", "sample.gif=false", base=TINY_AUDIO)) == 0
    clips = sorted((run / "samples" / "audio").glob("clip_*.wav"))
    assert len(clips) == 4 and len(list((run / "samples" / "audio").glob("clip_*.png"))) == 4
    info = soundfile.info(str(clips[0]))
    assert (info.samplerate, info.frames) == (4000, 1000)
    wave, _ = soundfile.read(str(clips[0]))
    assert 0.5 < abs(wave).max() <= 1.0  # peak-normalised sound, not silence
    assert run_cli("sample", run, "--steps", "3", "--num-images", "2") == 0
    assert len(list((run / "samples").glob("ddim-3steps-seed0-audio/clip_*.wav"))) == 2


def test_difflab_audio_roundtrip_prints_each_mel_setting_and_names_a_bad_one(capsys):
    tiny = [a for item in ["dataset.image_size=8", *TINY_AUDIO[-6:]] for a in ("--set", item)]
    assert run_cli("audio", "roundtrip", "audio-spectrogram", *tiny, "--n-mels", "4,8,200", "--clips", "2") == 0
    out = capsys.readouterr().out
    assert "8×8" in out and "4×8 → 8×8" in out and "full STFT, no image" in out
    assert "audio.n_mels = 200" in out  # too many bands for a 256-point STFT: said in its row
