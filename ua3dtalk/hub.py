"""Find subject checkpoints (bundled, local, or on the Hugging Face Hub) and publish them.

A checkpoint is a folder with ``config.json`` + ``model.safetensors`` (and
optionally ``eval.json`` and a ``README.md`` model card). Pickle weights are never
loaded. Hub settings (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME`` /
``HF_HUB_CACHE``) are read from the environment at call time, so they take effect
even when huggingface_hub was imported before they were set.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EVAL_NAME = "eval.json"
CARD_NAME = "README.md"
BUNDLED_DIR: Path = Path(__file__).resolve().parent.parent / "checkpoints"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")
_TRUE = {"1", "true", "yes", "on"}


def _bundled_dir() -> Path:
    return Path(os.environ.get("UA3DTALK_CHECKPOINTS") or BUNDLED_DIR)


def _offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or constants.HF_HUB_OFFLINE


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _cache_dir() -> Path:
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(constants.HF_HUB_CACHE)


def _is_checkpoint(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def _refuse_pickles(names: list[str], where: str) -> None:
    pickles = sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(f"{where} has only pickle weights {pickles}: refusing pickle weights "
                         f"(they can run code when loaded); convert them to {WEIGHTS_NAME}")


def list_bundled() -> list[str]:
    """Names of the subjects shipped in the checkpoints folder (e.g. ``demo``)."""
    root = _bundled_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _is_checkpoint(p))


def _local(folder: Path) -> Path:
    if _is_checkpoint(folder):
        return folder
    names = [p.name for p in folder.iterdir()]
    if WEIGHTS_NAME not in names:
        _refuse_pickles(names, f"folder {folder}")
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if n not in names]
    raise FileNotFoundError(f"folder {folder} is not a ua3dtalk checkpoint: missing {missing}")


def _split_repo(name: str) -> tuple[str, str]:
    parts = name.strip("/").split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve_checkpoint(name_or_path: str, revision: str | None = None) -> Path:
    """Folder holding ``config.json`` + ``model.safetensors`` for a bundled subject
    name, a local folder, or a Hub repo id ``user/name[/subfolder]`` (downloaded
    into the Hugging Face cache, at ``revision`` if given)."""
    tried: list[str] = []
    bundled = list_bundled()
    if name_or_path in bundled:
        return _bundled_dir() / name_or_path
    tried.append(f"bundled subject: not one of {bundled} (in {_bundled_dir()})")

    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return _local(local)
    tried.append(f"local folder: {local.resolve()} does not exist")

    if not _REPO_ID.match(name_or_path):
        tried.append("Hugging Face Hub: not a repo id (expected user/name or user/name/subfolder)")
        raise FileNotFoundError(_not_found(name_or_path, tried))
    repo_id, subfolder = _split_repo(name_or_path)
    try:
        folder = _download(repo_id, subfolder, revision)
    except FileNotFoundError as exc:
        tried.append(f"Hugging Face Hub repo {repo_id!r}{f' subfolder {subfolder!r}' if subfolder else ''} "
                     f"(revision {revision or 'main'}) at {_endpoint()}: {exc}")
        raise FileNotFoundError(_not_found(name_or_path, tried)) from exc
    return folder


def _not_found(name: str, tried: list[str]) -> str:
    return f"checkpoint {name!r} not found. Tried:\n" + "\n".join(f"  - {t}" for t in tried)


def _download(repo_id: str, subfolder: str, revision: str | None) -> Path:
    """Fetch only the checkpoint files of ``subfolder`` through the HF cache.

    Hub failures come back as FileNotFoundError with the underlying reason; a
    repo that holds pickles instead of safetensors raises ValueError."""
    import httpx
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    prefix = f"{subfolder}/" if subfolder else ""
    wanted = [prefix + n for n in (CONFIG_NAME, WEIGHTS_NAME, EVAL_NAME, CARD_NAME)]
    offline = _offline()
    try:
        snapshot = Path(snapshot_download(
            repo_id, revision=revision, allow_patterns=wanted, cache_dir=_cache_dir(),
            endpoint=_endpoint(), local_files_only=offline, library_name="ua3dtalk",
        ))
    except RepositoryNotFoundError as exc:
        raise FileNotFoundError("repository not found (or private: log in with `hf auth login` "
                                "or set HF_TOKEN)") from exc
    except RevisionNotFoundError as exc:
        raise FileNotFoundError(f"revision {revision!r} not found") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        why = ("HF_HUB_OFFLINE is set and it is not in the local cache" if offline
               else "the Hub is unreachable and it is not in the local cache")
        raise FileNotFoundError(f"{why} [{type(exc).__name__}: {_first_line(exc)}]") from exc
    except httpx.HTTPError as exc:  # transport failures while fetching files
        raise FileNotFoundError(f"the Hub is unreachable [{type(exc).__name__}: {_first_line(exc)}]") from exc
    folder = snapshot / subfolder if subfolder else snapshot
    if _is_checkpoint(folder):
        return folder
    if offline:
        raise FileNotFoundError(f"the cached snapshot has no {CONFIG_NAME} + {WEIGHTS_NAME} in "
                                f"{subfolder or 'the repo root'}")
    files = _repo_files(repo_id, revision)
    inside = [f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]]
    if WEIGHTS_NAME not in inside:
        _refuse_pickles(inside, f"Hub repo {repo_id!r}{f' subfolder {subfolder!r}' if subfolder else ''}")
    subjects = _subjects_in(files)
    raise FileNotFoundError(f"no {CONFIG_NAME} + {WEIGHTS_NAME} in {subfolder or 'the repo root'}; "
                            f"subjects in this repo: {subjects or 'none'}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _repo_files(repo_id: str, revision: str | None) -> list[str]:
    from huggingface_hub import HfApi

    return HfApi(endpoint=_endpoint()).list_repo_files(repo_id, revision=revision)


def _subjects_in(files: list[str]) -> list[str]:
    folders: dict[str, set[str]] = {}
    for f in files:
        head, _, tail = f.rpartition("/")
        folders.setdefault(head, set()).add(tail)
    return sorted(d for d, names in folders.items() if {CONFIG_NAME, WEIGHTS_NAME} <= names)


def list_subjects(repo_id: str, revision: str | None = None) -> list[str]:
    """Subfolders of a Hub repo (``""`` for the root) that hold a checkpoint.
    With HF_HUB_OFFLINE set, lists what the local cache holds for that revision."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if not _REPO_ID.match(repo_id) or repo_id.count("/") != 1:
        raise ValueError(f"not a Hub repo id: {repo_id!r} (expected user/name)")
    if _offline():
        return _cached_subjects(repo_id, revision)
    try:
        return _subjects_in(_repo_files(repo_id, revision))
    except RepositoryNotFoundError as exc:
        raise FileNotFoundError(f"Hub repo {repo_id!r} at {_endpoint()}: repository not found (or private: "
                                "log in with `hf auth login` or set HF_TOKEN)") from exc
    except RevisionNotFoundError as exc:
        raise FileNotFoundError(f"Hub repo {repo_id!r} at {_endpoint()}: revision {revision!r} not found") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise FileNotFoundError(f"cannot list Hub repo {repo_id!r} at {_endpoint()}: {_first_line(exc)}") from exc


def _cached_subjects(repo_id: str, revision: str | None) -> list[str]:
    """Checkpoints in the cached snapshot (standard HF cache layout: refs/<rev> -> commit)."""
    storage = _cache_dir() / ("models--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    ref = storage / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        raise FileNotFoundError(f"HF_HUB_OFFLINE is set and Hub repo {repo_id!r} (revision {rev}) "
                                f"is not in the cache {_cache_dir()}")
    files = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    return _subjects_in(files)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _metrics(report: dict[str, Any]) -> dict[str, float]:
    """Scalar numbers of eval.json, with one level of nesting (e.g. per emotion)."""
    out: dict[str, float] = {}
    for key, value in report.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = float(value)
        elif isinstance(value, dict):
            out.update({f"{key}/{k}": float(v) for k, v in value.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def model_card(ckpt_dir: Path) -> str:
    """README.md for the Hub: metadata, what was trained on, metrics, use and limits."""
    ckpt_dir = Path(ckpt_dir)
    config = _read_json(ckpt_dir / CONFIG_NAME)
    report = _read_json(ckpt_dir / EVAL_NAME)
    metrics = _metrics(report)
    subject = report.get("subject") or ckpt_dir.resolve().name
    tags = ["talking-face", "gaussian-splatting", "3d-gaussian-splatting", "audio-driven",
            "emotion", "uncertainty"]
    lines = ["---", "library_name: ua3dtalk", "tags:", *[f"- {t}" for t in tags]]
    if metrics:
        lines += ["metrics:", *[f"- {m.split('/')[0]}" for m in dict.fromkeys(k.split("/")[0] for k in metrics)]]
    lines += ["---", "", f"# UA-3DTalk subject: {subject}", "",
              "An emotional talking-face model of one person, rendered from 3D Gaussians and driven by "
              "speech audio plus a chosen emotion (UA-3DTalk: uncertainty-aware deformation with emotion "
              "prior distillation, Shen & Liu, ICASSP 2026). Alongside each frame it reports per-view "
              "aleatoric and epistemic uncertainty maps.", "",
              "## Use", "", "```bash", "bash scripts/install.sh  # in the UA-3DTalk repository",
              "ua3dtalk render --subject USER/REPO --audio speech.wav --emotion happy --out out.mp4", "```",
              "", "```python", "from ua3dtalk.pipeline import TalkingFacePipeline",
              'pipe = TalkingFacePipeline.from_pretrained("USER/REPO")',
              'result = pipe("speech.wav", emotion="happy", intensity=1.0)', "```", "",
              "## Training data", ""]
    setup = [f"- preset: `{config.get('preset', 'unknown')}`, image size {config.get('image_size', '?')} px, "
             f"{config.get('fps', 25)} fps"]
    setup.append(f"- audio features: `{config.get('audio_features', 'logmel')}` ({config.get('audio_dim', '?')}-d); "
                 "the checkpoint refuses features of another extractor")
    if config.get("emotion_dim"):
        setup.append(f"- emotions: the eight MEAD categories with intensity; {config.get('ensemble', '?')}-head "
                     "uncertainty ensembles per view")
    for key in ("data", "dataset", "source"):
        if isinstance(report.get(key), str):
            setup.append(f"- {key}: {report[key]}")
    lines += ["Trained on video of a single subject (one identity), prepared by `ua3dtalk preprocess` from a "
              "real talking-face video or by `ua3dtalk synth` (the bundled demo subject is synthesized from "
              "a public-domain portrait with espeak-ng speech, so no real person's likeness or voice is used).",
              "", *setup, ""]
    lines += ["## Evaluation", ""]
    if metrics:
        split = report.get("split", "held-out")
        lines += [f"On {report.get('frames', '?')} {split} frames"
                  + (f" ({report['device']})" if isinstance(report.get("device"), str) else "") + ":", "",
                  "| metric | value |", "|---|---|", *[f"| {k} | {v:.4g} |" for k, v in metrics.items()], ""]
        if isinstance(report.get("lpips_note"), str):
            lines += [f"Note: {report['lpips_note']}", ""]
    else:
        lines += ["No `eval.json` was found next to this checkpoint: run `ua3dtalk eval` to measure it.", ""]
    lines += ["## Intended use and limits", "",
              "- Research and demonstration of audio-driven, emotion-controllable talking faces and of "
              "uncertainty estimates for them.",
              "- One identity per checkpoint; poses and expressions far from the training video degrade, "
              "which the epistemic uncertainty maps are meant to reveal.",
              "- Lip-sync follows the training language and voice; other languages, singing or noisy audio "
              "are out of distribution.",
              "", "## Ethical considerations", "",
              "The output is a synthetic face. Do not use it to impersonate, deceive or to put words in a "
              "real person's mouth without their consent; label generated videos as synthetic. Train only on "
              "video of people who agreed to it.", ""]
    return "\n".join(lines)


def push_checkpoint(ckpt_dir: str | Path, repo_id: str, private: bool = False,
                    subfolder: str | None = None) -> str:
    """Upload config, weights, eval.json and a generated model card; returns the URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(ckpt_dir)
    if not folder.is_dir() or not _is_checkpoint(folder):
        raise FileNotFoundError(f"{folder} is not a checkpoint folder ({CONFIG_NAME} + {WEIGHTS_NAME})")
    if not _REPO_ID.match(repo_id) or repo_id.count("/") != 1:
        raise ValueError(f"not a Hub repo id: {repo_id!r} (expected user/name)")
    if _offline():
        raise RuntimeError("cannot push: HF_HUB_OFFLINE is set")
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    operations = [CommitOperationAdd(prefix + name, str(folder / name))
                  for name in (CONFIG_NAME, WEIGHTS_NAME, EVAL_NAME) if (folder / name).is_file()]
    operations.append(CommitOperationAdd(prefix + CARD_NAME, model_card(folder).encode()))
    api = HfApi(endpoint=_endpoint(), library_name="ua3dtalk")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id, operations, commit_message=f"Upload ua3dtalk checkpoint {prefix or folder.name}")
    except HfHubHTTPError as exc:
        raise RuntimeError(f"cannot push to {repo_id!r} at {_endpoint()}: {_first_line(exc)} "
                           "(log in with `hf auth login` or set HF_TOKEN with write access)") from exc
    url = f"{_endpoint()}/{repo_id}"
    return f"{url}/tree/main/{prefix.rstrip('/')}" if prefix else url
