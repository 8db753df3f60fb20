import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from ua3dtalk.audio import (
    SAMPLE_RATE, FeatureExtractor, check_features, get_extractor, is_silent, load_audio,
    normalize_loudness, num_frames,
)

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _encode(path, rate, codec, seconds=1.0, channels="0.3*sin(2*PI*440*t)"):
    """A 440 Hz tone encoded by the ffmpeg binary itself (lavfi source)."""
    src = f"aevalsrc={channels}:s={rate}:d={seconds}"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", src, "-c:a", codec, str(path)], check=True)
    return path


def _peak_hz(wav):
    return np.abs(np.fft.rfft(wav)).argmax() * SAMPLE_RATE / wav.size


@pytest.mark.parametrize("ext,codec,rate", [
    ("wav", "pcm_s16le", 11025), ("mp3", "libmp3lame", 44100), ("m4a", "aac", 48000),
    ("ogg", "libopus", 11025), ("flac", "flac", 22050), ("webm", "libopus", 48000),
])
def test_decode_each_format_to_16k_mono(tmp_path, ext, codec, rate):
    stereo = "0.3*sin(2*PI*440*t)|0.3*sin(2*PI*440*t)"
    wav = load_audio(_encode(tmp_path / f"tone.{ext}", rate, codec, 1.5, stereo))
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.size - 1.5 * SAMPLE_RATE) <= 0.03 * SAMPLE_RATE
    assert abs(_peak_hz(wav) - 440) < 2
    # stereo is averaged, not summed: a 0.3 tone in both channels stays 0.3
    assert 0.27 < np.abs(wav[2000:-2000]).max() < 0.33


def test_stereo_channels_are_averaged(tmp_path):
    wav = load_audio(_encode(tmp_path / "lr.wav", 44100, "pcm_f32le", 1.0, "0.4|0.0"))
    assert np.allclose(wav[100:-100], 0.2, atol=1e-3)


def test_gradio_tuple_int16_stereo_and_float():
    rate = 44100
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = (np.stack([tone, tone], axis=1) * 32767).astype(np.int16)   # [n, 2] as Gradio gives
    wav = load_audio((rate, stereo))
    assert abs(wav.size - SAMPLE_RATE) <= 2
    assert abs(_peak_hz(wav) - 440) < 2 and 0.47 < np.abs(wav).max() < 0.53
    channels_first = load_audio((rate, np.stack([tone, -tone]).astype(np.float32)))   # [2, n]
    assert np.abs(channels_first).max() < 1e-3    # averaged, not mistaken for 2 long "channels"
    with pytest.raises(ValueError, match="samples, channels"):
        load_audio((rate, np.zeros((100, 100), np.float32)))
    same = load_audio((SAMPLE_RATE, tone[:SAMPLE_RATE].astype(np.float32)))
    np.testing.assert_allclose(same, tone[:SAMPLE_RATE], atol=1e-6)


def test_short_silent_and_bad_inputs(tmp_path):
    short = load_audio(_encode(tmp_path / "short.wav", 48000, "pcm_s16le", 0.01))
    assert 0 < short.size < 640
    assert num_frames(short.size) == 1
    assert get_extractor()(short).shape == (1, 320)
    silent = load_audio(_encode(tmp_path / "silent.flac", 44100, "flac", 1.0, "0"))
    assert is_silent(silent) and not is_silent(short)
    np.testing.assert_array_equal(normalize_loudness(silent), silent)
    (tmp_path / "junk.mp3").write_bytes(b"not audio at all" * 10)
    with pytest.raises(ValueError, match="cannot decode"):
        load_audio(tmp_path / "junk.mp3")
    video = tmp_path / "video.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=32x32:d=0.2",
                    "-c:v", "mpeg4", str(video)], check=True)
    with pytest.raises(ValueError, match="no audio stream"):
        load_audio(video)
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="empty"):
        load_audio((16000, np.zeros(0, np.int16)))


def test_loudness_normalisation_hits_target_and_limits_peaks():
    rng = np.random.default_rng(0)
    speechy = (0.01 * rng.standard_normal(SAMPLE_RATE * 2)).astype(np.float32)
    speechy[SAMPLE_RATE:] = 0.0   # a pause must not inflate the gain (gated)
    out = normalize_loudness(speechy, -23.0)
    active_db = 20 * np.log10(np.sqrt(np.mean(out[:SAMPLE_RATE] ** 2)))
    assert abs(active_db - (-23.0)) < 0.5
    spiky = np.zeros(SAMPLE_RATE, np.float32)
    spiky[::1000] = 0.05
    limited = normalize_loudness(spiky, -10.0)
    assert np.abs(limited).max() <= 10 ** (-1 / 20) + 1e-6


def test_frame_clock_matches_features_for_many_lengths():
    extractor = get_extractor("logmel")
    assert isinstance(extractor, FeatureExtractor) and extractor.dim == 320
    for n in [0, 1, 639, 640, 641, 1280, 16000, 16001, 12345, 99999]:
        assert num_frames(n) == -(-n // 640)
        assert extractor(np.zeros(n, np.float32)).shape == (num_frames(n), 320)
    assert num_frames(48000, fps=30, sample_rate=48000) == 30


def test_ten_minute_signal_has_no_drift():
    """Clicks (one 10 ms hop long) at second k peak in frame 25k, up to the end."""
    seconds = 600
    wav = np.zeros(seconds * SAMPLE_RATE, np.float32)
    marks = list(range(0, seconds, 23)) + [seconds - 1]
    for k in marks:
        wav[k * SAMPLE_RATE: k * SAMPLE_RATE + 160] = 0.5
    feats = get_extractor("logmel")(wav)
    assert feats.shape == (seconds * 25, 320)
    energy = feats.reshape(-1, 4, 80).exp().sum(dim=(1, 2))
    for k in marks:
        lo = max(0, 25 * k - 3)
        assert lo + int(energy[lo: 25 * k + 4].argmax()) == 25 * k
    # frames away from any click are silent: the click does not leak a frame further
    assert energy[25 * 23 + 2] < 1e-3 * energy[25 * 23]


def test_extractor_mismatch_is_refused():
    logmel = get_extractor("logmel")
    check_features("logmel", 320, logmel)
    with pytest.raises(ValueError, match=r"trained with 'hubert' \(1024-d\).*got 'logmel' \(320-d\)"):
        check_features("hubert", 1024, logmel)
    with pytest.raises(ValueError, match="unknown audio features"):
        get_extractor("mfcc")


def test_hubert_without_hub_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RuntimeError, match=r"hubert.*facebook/hubert-large-ls960-ft.*unreachable.*HF_HUB_OFFLINE"):
        get_extractor("hubert")
    with pytest.raises(RuntimeError, match="local folder"):
        get_extractor(f"wav2vec2:{tmp_path / 'no-such-model'}")


def test_logmel_is_deterministic_and_responds_to_pitch():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    low = get_extractor()(np.sin(2 * np.pi * 200 * t).astype(np.float32))
    high = get_extractor()(np.sin(2 * np.pi * 3000 * t).astype(np.float32))
    assert torch.equal(low, get_extractor()(np.sin(2 * np.pi * 200 * t).astype(np.float32)))
    assert int(low[10, :80].argmax()) < int(high[10, :80].argmax())


def test_transformers_extractor_from_local_folder_is_on_the_frame_clock(tmp_path, monkeypatch):
    """A tiny random HuBERT saved as safetensors: the real loading and 50 Hz -> 25 fps path."""
    from transformers import HubertConfig, HubertModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    HubertModel(config).save_pretrained(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    extractor = get_extractor(f"hubert:{tmp_path / 'tiny'}")
    assert extractor.dim == 16 and extractor.name.startswith("hubert:")
    for n in [100, 640, 16000, 16001]:
        wav = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        assert extractor(wav).shape == (num_frames(n), 16)
    with pytest.raises(ValueError, match="trained with 'logmel'"):
        check_features("logmel", 320, extractor)
