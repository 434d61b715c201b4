"""The one trainer behind ``train-subcenter`` and ``train-final``.

:func:`train` fits a backbone and a margin head on a dataset and writes a run directory
(see :mod:`cleanface.inference.run`). It is resumable to the bit on CPU: the data order
is a function of ``(seed, epoch)``, the learning rate a function of the step, and every
checkpoint carries the optimiser and all random generator states, so a run interrupted
at any point and resumed with ``resume=True`` ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from cleanface import __version__
from cleanface._atomic import RunLock, atomic_write_json, is_complete, mark_complete, remove_path
from cleanface.data.cache import DecodeCache
from cleanface.data.open import open_dataset
from cleanface.errors import ConfigError, DataError, TrainingError
from cleanface.losses import create_head
from cleanface.losses.distributed import DistributedPartialFC
from cleanface.models import create_backbone
from cleanface.progress import make_progress
from cleanface.training import checkpoint
from cleanface.training import distributed as ddp
from cleanface.training import init as pretrained
from cleanface.training.batches import BatchSource, rank_batches
from cleanface.training.config import RESUMABLE_CHANGES, TrainConfig, config_from
from cleanface.inference.run import LAST, MODEL
from cleanface.training.run import write_names
from cleanface.training.schedule import lr_at

StepHook = Callable[[int], None]


def train_subcenter(data: str | os.PathLike, out: str | os.PathLike, *, k: int = 3, **settings: Any) -> Path:
    """Train with sub-center ArcFace (K sub-centers per identity, max-pooled); see :func:`train`."""
    return train(data, out, head="subcenter-arcface", k=k, **settings)


def train_final(data: str | os.PathLike, out: str | os.PathLike, *, loss: str = "elastic-arc+", **settings: Any) -> Path:
    """Train the final model (ElasticFace-Arc+ by default, or any head with K=1); see :func:`train`."""
    if loss == "subcenter-arcface":
        raise ConfigError("train-final trains with one center per identity; use train-subcenter for sub-center ArcFace")
    return train(data, out, head=loss, **settings)


def train(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    head: str = "subcenter-arcface",
    resume: bool = False,
    overwrite: bool = False,
    silent: bool = False,
    on_step: StepHook | None = None,
    **settings: Any,
) -> Path:
    """Train on ``data`` (any format :func:`open_dataset` reads) and write the run to ``out``.

    Parameters
    ----------
    data : path-like
    out : path-like
        The run directory. A non-empty one is refused unless ``resume`` or ``overwrite``.
    head : str
        Margin head (:func:`cleanface.losses.list_heads`).
    resume : bool
        Continue from ``out/checkpoints/last.pt`` when it exists (settings must match the
        saved ``config.json``); a finished run is returned as it is.
    overwrite : bool
        Delete what ``out`` holds and start again.
    silent : bool
        No progress bar.
    on_step : callable, optional
        Called with the step number after every optimiser step (tests use it to interrupt).
    **settings
        Fields of :class:`~cleanface.training.config.TrainConfig`.

    Returns
    -------
    Path
        ``out``, holding ``model.pt``, ``config.json``, ``metrics.jsonl`` and ``COMPLETE`` (no report:
        callers render it with :func:`cleanface.report.training.render_training_report`).
    """
    cfg = config_from(head, settings).resolved()
    d = ddp.setup(cfg.device)
    device = f"cuda:{d.local_rank}" if cfg.device == "cuda" and d.world > 1 else cfg.device
    out = Path(out)
    if d.main:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"run directory {out} exists and is not a directory")
        if resume and is_complete(out):
            _check_same_settings(out, cfg)
            return out
    lock = RunLock(out) if d.main else contextlib.nullcontext()
    with lock:  # taken before anything in out is touched: --overwrite never deletes a live run
        if d.main:
            _prepare_dir(out, resume=resume, overwrite=overwrite)
        ddp.barrier(d)
        return _Trainer(data, out, cfg, d, device, resume=resume, silent=silent or not d.main, on_step=on_step).run()


def _prepare_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Empty ``out`` with ``overwrite``, refuse a non-empty one without ``resume``; the lock file stays."""
    entries = [e for e in out.iterdir() if e.name != RunLock.NAME] if out.is_dir() else []
    if entries:
        if overwrite:
            for entry in entries:
                remove_path(entry)
        elif not resume:
            raise ConfigError(f"run directory {out} is not empty; pass --resume to continue it or --overwrite to start again")
    out.mkdir(parents=True, exist_ok=True)


def _check_same_settings(out: Path, cfg: TrainConfig) -> None:
    try:
        saved = json.loads((out / "config.json").read_text())["settings"]
    except (OSError, ValueError, KeyError):
        return
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and k in saved and saved[k] != now[k])
    if changed:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed[:4])
        raise ConfigError(f"cannot resume {out} with other settings ({detail}); use another --out or --overwrite")


class _Trainer:
    def __init__(self, data: Any, out: Path, cfg: TrainConfig, d: ddp.Dist, device: str, *, resume: bool, silent: bool, on_step: StepHook | None) -> None:
        self.out, self.cfg, self.d, self.device, self.silent, self.on_step = out, cfg, d, device, silent, on_step
        self.data_path = str(data)
        self.index = open_dataset(data)
        self.names = list(self.index.names)
        if len(self.names) < 2:
            raise DataError(f"dataset {data} has {len(self.names)} identity; training a classifier needs at least 2")
        self.resume = resume
        self.fingerprint = self.index.fingerprint()  # hashes every location: once, not per checkpoint
        self.writer = checkpoint.BackgroundWriter()

    # -- set-up ----------------------------------------------------------------------------------
    def _data(self) -> None:
        cfg, d = self.cfg, self.d
        cache = None
        if cfg.cache:
            if not d.main:
                ddp.barrier(d)  # rank 0 decodes, the others then open its cache
            cache = DecodeCache.build(self.index, cfg.cache_dir, size=cfg.input_size, crop=cfg.crop, workers=cfg.workers, silent=self.silent)
            if d.main:
                ddp.barrier(d)
        self.source = BatchSource(self.index, self.index.labels, cache=cache, size=cfg.input_size, crop=cfg.crop, workers=cfg.workers)
        self.excluded = len(self.index) - len(self.source.samples)
        self.global_batch = cfg.batch_size * d.world
        self.steps_per_epoch = len(self.source.samples) // self.global_batch
        if self.steps_per_epoch == 0:
            raise DataError(f"dataset {self.data_path} has {len(self.source.samples)} usable images, fewer than one batch of {self.global_batch}; lower --batch-size")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))

    def _models(self) -> None:
        cfg, d = self.cfg, self.d
        torch.manual_seed(cfg.seed)
        backbone = create_backbone(cfg.backbone, embedding_size=cfg.embedding_size, input_size=cfg.input_size)
        torch.manual_seed(cfg.seed * 7919 + d.rank + 1)
        if d.world > 1:
            kw = cfg.head_kwargs()
            rate = kw.pop("sample_rate", 1.0)
            head: nn.Module = DistributedPartialFC(cfg.head, cfg.embedding_size, len(self.names), sample_rate=rate, **kw)
            self.local_head = head.head
        else:
            head = create_head(cfg.head, cfg.embedding_size, len(self.names), **cfg.head_kwargs())
            self.local_head = head
        backbone.to(self.device)
        head.to(self.device)
        if cfg.channels_last:
            backbone.to(memory_format=torch.channels_last)
        self.backbone, self.head = backbone, head
        self.model = ddp.wrap_backbone(backbone, d, self.device)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        # Two optimisers, as only the backbone's gradients are clipped. Fused SGD (one pass
        # per tensor for decay, momentum and update) clips through its grad_scale divisor,
        # so clipping costs one norm and no extra pass over the gradients, and no host sync on CUDA.
        self.fused = self.device.split(":")[0] in ("cpu", "cuda")
        sgd = {"lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "fused": self.fused or None}
        self.optimizers = {"backbone": torch.optim.SGD(backbone.parameters(), **sgd), "head": torch.optim.SGD(head.parameters(), **sgd)}

    def _config_record(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "settings": cfg.to_dict(), "backbone": cfg.backbone, "embedding_size": cfg.embedding_size, "input_size": cfg.input_size,
            "crop": cfg.crop, "head": cfg.head, "head_kwargs": cfg.head_kwargs(), "k": cfg.k or 1, "margin": cfg.margin, "scale": cfg.scale,
            "sigma": cfg.sigma, "num_classes": len(self.names), "data": self.data_path, "data_fingerprint": self.fingerprint,
            "images": len(self.index), "images_used": len(self.source.samples), "images_excluded": self.excluded,
            "bad_files": len(self.index.bad_files), "bad_files_first": [[b.location, b.reason] for b in self.index.bad_files[:20]],
            "seed": cfg.seed, "device": self.device, "device_name": _device_name(self.device), "world_size": self.d.world,
            "global_batch": self.global_batch, "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps, "optimizer": {"name": "sgd", "lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "fused": self.fused},
            "schedule": {"name": cfg.schedule, "power": cfg.power}, "amp": cfg.amp, "cleanface": __version__, "torch": torch.__version__,
            "init": cfg.init, "init_source": self.init_record,
        }

    # -- checkpoints -------------------------------------------------------------------------------
    def _ckpt_path(self) -> Path:
        return self.out / (LAST if self.d.rank == 0 else os.path.join("checkpoints", f"last.rank{self.d.rank}.pt"))

    def _save(self, step: int) -> None:
        state = {
            "step": step, "backbone": self.backbone.state_dict(), "head": self.local_head.state_dict(), "optimizer": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "scaler": self.scaler.state_dict(), "rng": checkpoint.rng_state(), "data_fingerprint": self.fingerprint, "world": self.d.world,
        }
        self.writer.submit(state, self._ckpt_path())

    def _restore(self) -> int:
        path = self._ckpt_path()
        if not self.resume or not path.is_file():
            return 0
        state = checkpoint.load(path, map_location=self.device)
        if state.get("data_fingerprint") != self.fingerprint or state.get("world") != self.d.world:
            raise TrainingError(f"checkpoint {path} belongs to another dataset or number of processes; use another --out or --overwrite")
        try:
            self.backbone.load_state_dict(state["backbone"])
            self.local_head.load_state_dict(state["head"])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizer"][name])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise TrainingError(f"checkpoint {path} does not fit this run's models ({str(exc).splitlines()[0][:160]}); use another --out or --overwrite") from None
        self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        steps = ddp.gather_strings(str(int(state["step"])), self.d)
        if len(set(steps)) > 1:
            raise TrainingError(f"the ranks' checkpoints in {self.out / 'checkpoints'} are from different steps ({', '.join(steps)}); use --overwrite")
        return int(state["step"])

    # -- pretrained weights (--init) --------------------------------------------------------------
    def _init_weights(self) -> dict[str, Any] | None:
        """Load ``cfg.init`` into the backbone and set the head from its embeddings, on a fresh start only.

        A run resumed from a checkpoint keeps the checkpoint's weights (the file is not read
        again) and the record its first start wrote in ``config.json``.
        """
        cfg, d = self.cfg, self.d
        if not cfg.init:
            return None
        if self.resume and self._ckpt_path().is_file():
            try:
                return json.loads((self.out / "config.json").read_text()).get("init_source")
            except (OSError, ValueError):
                return None
        started = time.perf_counter()
        weights = pretrained.read_init(cfg.init)
        pretrained.load_backbone(self.backbone, weights, pretrained.describe(cfg.backbone, cfg.embedding_size, cfg.input_size))
        images = functools.partial(pretrained.read_images, self.index, cache=self.source.cache, size=cfg.input_size, crop=cfg.crop)
        start = getattr(self.head, "class_start", 0)
        info = pretrained.init_head(self.local_head, self.backbone, images, self.source.samples, self.index.labels, class_start=start, seed=cfg.seed,
                                    device=self.device, batch_size=2 * cfg.batch_size, amp_dtype=self.amp_dtype, silent=self.silent)
        shards = [json.loads(s) for s in ddp.gather_strings(json.dumps(info), d)]
        info.update({key: sum(s[key] for s in shards) for key in ("classes", "classes_set", "images")})
        return {**weights.record(), "head": info, "elapsed_s": round(time.perf_counter() - started, 3)}

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg, d = self.cfg, self.d
        self._data()
        self._models()
        self.init_record = self._init_weights()
        if d.main:
            if self.resume:
                _check_same_settings(self.out, cfg)
            atomic_write_json(self.out / "config.json", self._config_record())
            write_names(self.out, self.names)
        step = self._restore()
        metrics = _Metrics(self.out / "metrics.jsonl", keep_until=step, enabled=d.main)
        self.model.train()
        self.head.train()
        extra = "loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.4f}  {task.fields[ips]:.0f} img/s"
        try:
            with make_progress(silent=self.silent, extra=extra) as bar:
                task = bar.add_task(f"train {cfg.head}", total=self.total_steps, completed=step, loss=float("nan"), lr=cfg.lr, ips=0.0)
                while step < self.total_steps:
                    epoch, offset = divmod(step, self.steps_per_epoch)
                    planned = rank_batches(self.source.samples, cfg.seed, epoch, global_batch=self.global_batch, rank=d.rank, world=d.world, start=offset)
                    for x, y in self.source.iterate(planned):
                        lr = lr_at(step, base_lr=cfg.lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps, schedule=cfg.schedule, power=cfg.power)
                        loss, correct = self._step(x, y, lr)
                        step += 1
                        metrics.add(loss, correct, len(y) * d.world)
                        if step % cfg.log_every == 0 or step % self.steps_per_epoch == 0 or step == self.total_steps:
                            row = metrics.flush(step, step / self.steps_per_epoch, lr)
                            bar.update(task, completed=step, loss=row["loss"], lr=lr, ips=row["images_per_s"])
                        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step % self.steps_per_epoch == 0:
                            metrics.check_finite(step)
                            self._save(step)
                        if self.on_step is not None:
                            self.on_step(step)
        except BaseException:
            _quietly(self.writer.wait)  # the last checkpoint is on disk before the error leaves; the error stays the one raised
            raise
        self.writer.wait()
        metrics.check_finite(step)
        return self._finish(step, metrics)

    def _step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            emb = self.model(x)
            if self.d.world > 1:
                loss = self.head(emb, y)
                correct = torch.tensor(float("nan"))
            else:
                logits, targets = self.head.forward_train(emb, y)
                loss = nn.functional.cross_entropy(logits, targets)
                correct = (logits.detach().argmax(1) == targets).sum()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        backbone_opt = self.optimizers["backbone"]
        if self.cfg.grad_clip:
            if self.fused and not self.scaler.is_enabled():
                backbone_opt.grad_scale = clip_divisor(self.backbone.parameters(), self.cfg.grad_clip)
            else:
                self.scaler.unscale_(backbone_opt)
                nn.utils.clip_grad_norm_(self.backbone.parameters(), self.cfg.grad_clip)
        for opt in self.optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        return loss.detach(), correct

    def _finish(self, step: int, metrics: "_Metrics") -> Path:
        d = self.d
        ddp.sync_buffers(self.backbone, d)
        weight = ddp.gather_head_weight(self.local_head.weight, d)
        hashes = ddp.gather_strings(ddp.state_hash(self.backbone), d)
        if not d.main:
            return self.out
        if len(set(hashes)) > 1:
            raise TrainingError(f"the {d.world} processes ended with different backbone weights; the run in {self.out} is not trustworthy")
        config = json.loads((self.out / "config.json").read_text())
        backbone_state = {k: v.detach().cpu().contiguous() for k, v in self.backbone.state_dict().items()}
        checkpoint.save({"backbone": backbone_state, "head": {"weight": weight}, "config": config, "names": self.names}, self.out / MODEL)
        summary = {"steps": step, "epochs": self.cfg.epochs, "elapsed_s": metrics.elapsed(), "final": metrics.last, "backbone_sha256": hashes}
        if self.cfg.val_pairs:
            summary["eval"] = self._evaluate()
        atomic_write_json(self.out / "train_summary.json", summary)
        mark_complete(self.out, {"steps": step})
        return self.out

    def _evaluate(self) -> dict[str, Any]:
        from cleanface.eval.pairs import evaluate

        result = evaluate(self.backbone, self.cfg.val_pairs, images_root=self.cfg.val_images, size=self.cfg.input_size, crop=self.cfg.crop, device=self.device, silent=self.silent)
        atomic_write_json(self.out / "eval.json", result)
        return {k: result[k] for k in ("accuracy", "accuracy_std", "auc") if k in result}


class _Metrics:
    """Running loss/accuracy/throughput, written as ``metrics.jsonl`` lines (on the main process)."""

    def __init__(self, path: Path, *, keep_until: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.loss_sum = torch.zeros(())
        self.correct = torch.zeros(())
        self.count = 0
        self.images = 0
        self.last: dict[str, Any] = {}
        self.started = self.tick = time.perf_counter()
        self.previous_elapsed = 0.0
        if enabled:
            self._truncate(keep_until)

    def _truncate(self, keep_until: int) -> None:
        """Drop lines logged after the checkpoint a resumed run starts from."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("step", 0) <= keep_until:
                kept.append(line)
                self.previous_elapsed = float(row.get("elapsed_s", self.previous_elapsed))
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def add(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> None:
        self.loss_sum = self.loss_sum.to(loss.device) + loss.float()
        self.correct = self.correct.to(loss.device) + correct.float().to(loss.device)
        self.count += 1
        self.images += images

    def check_finite(self, step: int) -> None:
        """Stop the run (keeping the last good checkpoint) when a loss since the last log was not finite."""
        if self.count and not bool(torch.isfinite(self.loss_sum)):
            raise TrainingError(f"the loss became {float(self.loss_sum)} before step {step}; the last good checkpoint is kept. Lower --lr, or use --amp bf16/off")
        if not math.isfinite(float(self.last.get("loss", 0.0))):
            raise TrainingError(f"the loss became {self.last['loss']} before step {step}; the last good checkpoint is kept. Lower --lr, or use --amp bf16/off")

    def elapsed(self) -> float:
        return self.previous_elapsed + time.perf_counter() - self.started

    def flush(self, step: int, epoch: float, lr: float) -> dict[str, Any]:
        now = time.perf_counter()
        loss = float(self.loss_sum) / max(1, self.count)
        acc = float(self.correct) / max(1, self.images)
        row = {"step": step, "epoch": round(epoch, 4), "loss": loss, "acc": acc, "lr": lr,
               "images_per_s": self.images / max(now - self.tick, 1e-9), "elapsed_s": round(self.elapsed(), 3)}
        if not math.isfinite(loss):
            self.last = row
            self.check_finite(step)
        self.loss_sum = torch.zeros(())
        self.correct = torch.zeros(())
        self.count = self.images = 0
        self.tick = now
        self.last = row
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        return row


def clip_divisor(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``max(1, (norm + 1e-6) / max_norm)`` of the gradients, a 0-d tensor on their device.

    Dividing the gradients by it is what :func:`torch.nn.utils.clip_grad_norm_` does
    (multiplying by ``min(1, max_norm / (norm + 1e-6))``); fused SGD divides by its
    ``grad_scale`` inside its update, so passing this there clips for free.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = nn.utils.get_total_norm(grads).float()
    return torch.clamp((norm + 1e-6) / max_norm, min=1.0)


def _quietly(call: Callable[[], None]) -> None:
    try:
        call()
    except Exception:
        pass


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
