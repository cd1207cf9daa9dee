"""Train the project's tiny CLIP on the synthetic world with open_clip's contrastive loss, on CPU.

Why this shape: training is defined by a fixed step count (time budgets are not reproducible), every batch is
a pure function of (seed, step) rendered fresh (fixed image sets get memorised), and images go through the
model's own preprocess after the same kind of file round-trip the indexer will see (JPEG artefacts, resizing),
so the vectors the indexer makes from saved files are the ones the model was trained on.

The result is cached by a key over the world, trainer settings and model config, so tests and the demo train at
most once per machine; the committed checkpoint is used when its stored key matches.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.lab import languages, world
from indexer.models import registry

CHECKPOINT_FORMAT = 1
STREAM_FINETUNE = 3  # image stream of the second stage (the first uses world.STREAM_TRAIN)


@dataclass(frozen=True)
class TrainSettings:
    """Everything the trained weights depend on (part of the cache key)."""

    seed: int = 0
    steps: int = 150
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 40
    render_sizes: tuple[int, ...] = (64, 96, 128)  # square renders, resized by the preprocess like files are
    jpeg_share: float = 0.6  # share of images passed through a JPEG round-trip (the gallery is mostly JPEG)
    jpeg_quality: tuple[int, int] = (75, 95)
    threads: int = 2
    loader_workers: int = 1  # a worker renders the next batch while the model trains on this one
    # Second stage: continue from the first stage's float16 checkpoint on hard-negative batches (groups that
    # share colour and background and differ only in shape and size: the attributes the first stage confuses).
    finetune_steps: int = 0
    finetune_lr: float = 3e-4
    finetune_warmup: int = 5
    finetune_hard_share: float = 0.5  # share of a second-stage batch made of whole hard-negative groups
    eval_gallery: int = 600
    eval_seed: int = 1000
    # "clip": the tiny CLIP, both towers trained. "xlm-roberta": the committed tiny CLIP's image tower, frozen,
    # with indexer.lab.tiny_multilingual's HF text tower (the result is a model folder, not a checkpoint file).
    text_tower: str = "clip"
    # each caption is written in one of these languages (indexer.lab.languages), picked per (seed, step, row)
    text_languages: tuple[str, ...] = ("en",)

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return plain


MULTILINGUAL = TrainSettings(text_tower="xlm-roberta", text_languages=("en", "de", "es", "ja", "ru"), steps=200,
                             warmup_steps=20, lr=2e-3)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


# settings that do not change the weights (the loader worker count only changes who renders a batch)
_NOT_IN_KEY = {"loader_workers", "eval_gallery", "eval_seed"}
# with no second stage (finetune_steps == 0) none of these matter
_FINETUNE = {"finetune_steps", "finetune_lr", "finetune_warmup", "finetune_hard_share"}
# settings added after checkpoints were committed: left out of the key at their defaults, so those keys hold
_NEWER_DEFAULTS = {"text_tower": "clip", "text_languages": ["en"]}


def settings_key(settings: TrainSettings) -> str:
    """Digest of what the weights depend on: world version, trainer settings, model config, tokenizer merges."""
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "world": world.WORLD_VERSION,
        "settings": {k: v for k, v in settings.to_dict().items()
                     if k not in _NOT_IN_KEY and not (settings.finetune_steps == 0 and k in _FINETUNE)
                     and _NEWER_DEFAULTS.get(k, _ABSENT) != v},
        "model_config": _file_digest(registry.MODELS_DIR / f"{registry.TINY_MODEL_NAME}.json"),
        "bpe": _file_digest(registry.TINY_BPE),
    }
    if settings.text_tower != "clip":
        from indexer.lab.tiny_multilingual import TEXT_TOWER

        payload["text_tower"] = TEXT_TOWER
        payload["image_tower"] = settings_key(TrainSettings())  # the committed tiny CLIP's
        payload["languages"] = _file_digest(Path(languages.__file__))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


_ABSENT = object()


def cache_dir() -> Path:
    return registry.cache_dir()


# ---------------------------------------------------------------------------------------------- tokenizer


def cut_bpe(words: list[str], target: Path) -> int:
    """Write open_clip's BPE merges cut to those `words` need, in their original order; returns vocab size.

    The cut tokenizer gives the same tokens as the full one for these words (a kept merge is applied exactly
    when the full tokenizer applies it), and shrinks the token embedding from 49k to a few hundred rows.
    """
    from open_clip.tokenizer import SimpleTokenizer, default_bpe, get_pairs

    full = SimpleTokenizer()
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    used: set[tuple[str, str]] = set()
    for text in words:
        for token in full.pat.findall(text.lower()):
            token = "".join(full.byte_encoder[b] for b in token.encode("utf-8"))
            word = tuple(token[:-1]) + (token[-1] + "</w>",)
            while len(word) > 1:
                bigram = min(get_pairs(word), key=lambda p: full.bpe_ranks.get(p, float("inf")))
                if bigram not in full.bpe_ranks:
                    break
                used.add(bigram)
                word = _merge(word, bigram)
    kept = [line for line in lines[1:49152 - 256 - 2 + 1] if tuple(line.split()) in used]
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(target, "wb", mtime=0) as fh:  # mtime=0: same words, same bytes
        fh.write("\n".join([lines[0], *kept]).encode("utf-8"))  # no trailing newline: no empty merge
    return 512 + len(kept) + 2


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


# ---------------------------------------------------------------------------------------------- data


class WorldBatches:
    """Batch `step` = distinct training compositions, freshly rendered, round-tripped and preprocessed.

    A map-style dataset indexed by step, so a DataLoader worker can prefetch while results stay a pure function
    of (seed, step) whatever the worker count.
    """

    def __init__(self, settings: TrainSettings, preprocess: Callable[[Any], Any], tokenizer: Callable[..., Any]):
        self.settings = settings
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.compositions = world.training_compositions()

    def __len__(self) -> int:
        return self.settings.steps

    def picks(self, step: int) -> list[world.Composition]:
        """Distinct compositions, so a contrastive batch holds no false negatives."""
        s = self.settings
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, 7, step]))
        idx = rng.choice(len(self.compositions), size=min(s.batch_size, len(self.compositions)), replace=False)
        return [self.compositions[int(i)] for i in idx]

    def image_stream(self) -> int:
        return world.STREAM_TRAIN

    def __getitem__(self, step: int) -> tuple[Any, Any]:
        import torch

        s = self.settings
        pixels, captions = [], []
        for i, comp in enumerate(self.picks(step)):
            img_rng = world.image_rng(s.seed, self.image_stream(), step * s.batch_size + i)
            side = int(s.render_sizes[img_rng.integers(len(s.render_sizes))])
            image = world.render(comp, img_rng, (side, side))
            if img_rng.random() < s.jpeg_share:
                image = world.jpeg_roundtrip(image, int(img_rng.integers(s.jpeg_quality[0], s.jpeg_quality[1] + 1)))
            pixels.append(self.preprocess(image))
            captions.append(self.caption(comp, step, i))
        return torch.stack(pixels), self.tokenizer(captions)

    def caption(self, comp: world.Composition, step: int, row: int) -> str:
        """The caption in one of the settings' languages (English only: the composition's own caption, so the
        English model's batches are unchanged)."""
        langs = self.settings.text_languages
        if tuple(langs) == ("en",):
            return comp.caption
        rng = np.random.default_rng(np.random.SeedSequence([self.settings.seed, 9, step, row]))
        return languages.caption(**comp.to_dict(), lang=langs[int(rng.integers(len(langs)))])


class HardNegativeBatches(WorldBatches):
    """Whole groups sharing colour and background: every image meets the other shapes and sizes it could be
    confused with as in-batch negatives, instead of about one such negative in a random batch."""

    GROUP = len(world.SIZES) * len(world.SHAPES)

    def __len__(self) -> int:
        return self.settings.finetune_steps

    def picks(self, step: int) -> list[world.Composition]:
        s = self.settings
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, 8, step]))
        keys = sorted({(c.colour, c.background) for c in self.compositions})
        groups = max(1, min(len(keys), round(s.batch_size * s.finetune_hard_share / self.GROUP)))
        chosen = rng.choice(len(keys), size=groups, replace=False)
        wanted = {keys[int(i)] for i in chosen}
        grouped = [c for c in self.compositions if (c.colour, c.background) in wanted][: s.batch_size]
        # the rest of the batch stays random, so the other attributes keep being contrasted across groups
        rest = [c for c in self.compositions if (c.colour, c.background) not in wanted]
        fill = rng.choice(len(rest), size=min(len(rest), s.batch_size - len(grouped)), replace=False)
        return grouped + [rest[int(i)] for i in fill]

    def image_stream(self) -> int:
        return STREAM_FINETUNE


# ---------------------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    state_dict: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the step loop
    cpu_seconds: float = 0.0  # CPU time of trainer and loader workers: comparable across machine load


def create_tiny_model() -> tuple[Any, Callable[[Any], Any]]:
    """A random-init tiny CLIP and its eval preprocess (the same transform the encoder applies to files)."""
    import open_clip

    registry.register_project_models()
    model, _, preprocess = open_clip.create_model_and_transforms(registry.TINY_MODEL_NAME, pretrained=None,
                                                                  output_dict=True)
    return model, preprocess


def create_lit_model(folder: Path) -> tuple[Any, Callable[[Any], Any], Any]:
    """The multilingual model written to `folder` (configs, tokenizer): its image tower loaded from the committed
    tiny CLIP and frozen, a random-init HF text tower; with its preprocess and tokenizer."""
    import open_clip
    from open_clip.factory import load_state_dict

    from indexer.lab.tiny_multilingual import write_folder

    name = f"{registry.LOCAL_DIR_PREFIX}{write_folder(folder)}"
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained_text=False, output_dict=True)
    tiny = load_state_dict(str(ensure_tiny_checkpoint(TrainSettings())))
    model.visual.load_state_dict({k[len("visual."):]: v for k, v in tiny.items() if k.startswith("visual.")})
    model.visual.requires_grad_(False)
    model.logit_scale.data.copy_(tiny["logit_scale"])
    tokenizer = open_clip.get_tokenizer(name)
    pad_id = int(tokenizer.tokenizer.pad_token_id)

    def tokenize(texts: list[str]) -> Any:
        """The batch cut after its longest caption (the service cuts the same way): the mean pooler ignores pad
        positions, so only the time spent on them goes."""
        tokens = tokenizer(texts)
        return tokens[:, : int((tokens != pad_id).sum(dim=1).max())]

    return model, preprocess, tokenize


def _optimizer(model: Any, settings: TrainSettings) -> Any:
    import torch

    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.98))


def _lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup then cosine decay to 2% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def base_settings(settings: TrainSettings) -> TrainSettings:
    """The first stage of a two-stage recipe."""
    from dataclasses import replace

    return replace(settings, finetune_steps=0)


def train(settings: TrainSettings, progress: Callable[[int, float], None] | None = None,
          model_dir: Path | None = None) -> TrainResult:
    """Run `settings.steps` steps of ClipLoss training; deterministic for a fixed seed and thread count.

    With `finetune_steps`, start from the first stage's checkpoint (cached or trained) and run only the second.
    An HF `text_tower` writes its model folder's configs and tokenizer to `model_dir`.
    """
    import open_clip
    import torch

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    locked = settings.text_tower != "clip"
    if locked:
        if model_dir is None or settings.finetune_steps > 0:
            raise ValueError(f"text_tower {settings.text_tower!r} trains into a model folder, in one stage")
        model, preprocess, tokenizer = create_lit_model(model_dir)
    else:
        model, preprocess = create_tiny_model()
        tokenizer = registry.tiny_tokenizer()
    if settings.finetune_steps > 0:
        open_clip.load_checkpoint(model, str(ensure_tiny_checkpoint(base_settings(settings))))
        batches: WorldBatches = HardNegativeBatches(settings, preprocess, tokenizer)
        schedule = (settings.finetune_lr, settings.finetune_warmup, settings.finetune_steps)
    else:
        batches = WorldBatches(settings, preprocess, tokenizer)
        schedule = (settings.lr, settings.warmup_steps, settings.steps)
    model.train()
    if locked:
        model.visual.eval()  # frozen: batch norm statistics stay the committed tower's
    # WorldBatches is map-style by step (a Dataset in all but its base class)
    loader: Any = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False,  # type: ignore[arg-type]
                                              num_workers=settings.loader_workers,
                                              worker_init_fn=_single_thread_worker)
    loss_fn = open_clip.loss.ClipLoss()
    optimizer = _optimizer(model, settings)
    result = TrainResult(state_dict={})
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    for step, (pixels, tokens) in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, *schedule)
        out = model(pixels, tokens)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        result.losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, result.losses[-1])
    del loader  # joins the loader workers, so their CPU time is counted
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = _cpu_seconds() - cpu_start
    result.state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return result


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _single_thread_worker(_: int) -> None:
    """Loader workers render with PIL/numpy; one torch thread each keeps them off the trainer's cores."""
    import torch

    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state_dict: dict[str, Any], info: dict[str, Any]) -> Path:
    """float16 state_dict in the layout `open_clip.load_checkpoint` reads, plus our key/settings/metrics.

    Written to a temporary name and renamed, so a crash never leaves a half-written checkpoint behind.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state_dict.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"state_dict": half, "photostock": json.loads(json.dumps(info))}, tmp)
    os.replace(tmp, path)
    return path


def checkpoint_info(path: Path) -> dict[str, Any] | None:
    """The `photostock` block of a checkpoint (key, settings, metrics), or None if absent or unreadable."""
    import torch

    if not Path(path).is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise RuntimeError(f"checkpoint {path} is unreadable ({exc}); delete it to retrain") from exc
    return blob.get("photostock") if isinstance(blob, dict) else None


def cached_checkpoint_path(settings: TrainSettings) -> Path:
    return cache_dir() / f"tiny-{settings_key(settings)}.pt"


def train_and_save(settings: TrainSettings, path: Path, evaluate: bool = True,
                   progress: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train, save to `path`, evaluate the saved file on a freshly written held-out gallery; returns the info."""
    result = train(settings, progress, model_dir=path.parent if settings.text_tower != "clip" else None)
    info: dict[str, Any] = {
        "key": settings_key(settings), "settings": settings.to_dict(), "world_version": world.WORLD_VERSION,
        "steps": settings.steps + settings.finetune_steps, "stage_steps": len(result.losses),
        "train_seconds": round(result.seconds, 1),
        "train_cpu_seconds": round(result.cpu_seconds, 1), "threads": settings.threads,
        "loss_first": result.losses[0], "loss_last": float(np.mean(result.losses[-10:])),
        "load_average": list(os.getloadavg()),
    }
    save_checkpoint(path, result.state_dict, info)
    if evaluate:
        from indexer.lab.evaluation.world_eval import evaluate_checkpoint

        model = f"{registry.LOCAL_DIR_PREFIX}{path.parent}" if settings.text_tower != "clip" else "tiny"
        info["metrics"] = evaluate_checkpoint(path, seed=settings.eval_seed, gallery=settings.eval_gallery,
                                              model=model)
        save_checkpoint(path, result.state_dict, info)
    return info


def ensure_tiny_checkpoint(settings: TrainSettings | None = None) -> Path:
    """The committed checkpoint if its key matches these settings, else the cache entry, else train into it."""
    settings = settings or TrainSettings()
    key = settings_key(settings)
    committed = registry.TINY_CHECKPOINT
    info = checkpoint_info(committed)
    if info is not None and info.get("key") == key:
        return committed
    cached = cached_checkpoint_path(settings)
    info = checkpoint_info(cached)
    if info is not None and info.get("key") == key:
        return cached
    train_and_save(settings, cached, evaluate=False)
    return cached


def ensure_multilingual_folder(settings: TrainSettings = MULTILINGUAL) -> Path:
    """The committed multilingual model folder if its key matches these settings, else the cache entry, else
    train into it (the folder's weights file carries the key, as the tiny checkpoint does)."""
    key = settings_key(settings)
    committed = registry.tiny_multilingual_folder()
    for folder in (committed, cache_dir() / f"tiny-multilingual-{key}"):
        info = checkpoint_info(folder / registry.FOLDER_WEIGHTS)
        if info is not None and info.get("key") == key:
            return folder
    train_and_save(settings, folder / registry.FOLDER_WEIGHTS, evaluate=False)
    return folder
