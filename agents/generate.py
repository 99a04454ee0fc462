"""generate: text (or video) to video on the bus, resumable, moderated, signed, and closed into understanding.

Reads ``framebus.generate`` (GenerationRequest, keyed by job id) and ``framebus.generate.cancel``; writes
``framebus.generate.progress``, ``framebus.generate.results``, the MP4 and its thumbnail under
``<data_dir>/generated/<tenant>/``, and, for a finished video, an IngestRequest (closed loop: the video is
then understood like any other, tagged ``origin: generated``).

Order of effects for one job (``Generation.handle``; each step's effects are acknowledged before the next):

1. **Parse.** A request that does not parse: a DLQ entry and, when a job id can be salvaged, a failed result.
2. **Once.** A job whose result is in the job table (``generate-jobs``, changelog-backed) is done: the same
   ``job_id`` twice gives one result. A job cancelled before it started ends ``cancelled`` here.
3. **Admit.** Limits (steps, frames, pixels, mode, source under the allowed roots and within the ingest
   limits), the tenant's cap of queued plus running jobs (``generate.quota_exceeded``), then the prompt
   check (policy terms, then embedding similarity to the moderation categories; ``t2v``/``v2v``/``i2v``,
   whose output the prompt drives): before any compute. The source URI is checked before the prompt.
4. **Sample.** Jobs wait in a priority queue (higher ``priority`` first, then arrival); compatible ones
   (same model, shape, steps, none resuming) are sampled in one call. After every step: a cancel stops the
   job (``cancelled``); every ``generate_checkpoint_every`` steps the sampling state is written atomically
   to ``<blob_dir>/generate/<job digest>/checkpoint.pt``; progress goes out (a preview frame every few
   steps). A job that finds a checkpoint of the same request resumes from it (``resumed_from``).
5. **Moderate.** The finished frames go through the moderation model: flagged, the MP4 goes to
   ``<data_dir>/quarantine/<tenant>/`` and the job ends ``blocked`` (nothing published, nothing ingested).
6. **Publish.** Encode (H.264, BT.709), thumbnail, sign (C2PA manifest), ingest request (run header = the
   job, so a replay is the same run), then the result, then the job table's record, then the checkpoint
   folder is deleted.

A crash anywhere before 6's table write replays the job (from its last checkpoint): file names are
deterministic and written atomically, the ingest request carries the job as its run, and every result and
progress event has a deterministic ``event_id`` (the results topic is compacted by job id). Anything that
fails ends with a ``failed`` result carrying a stable code and a DLQ entry; the worker goes on.
Prompts never reach the logs: their sha256 prefix does.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import itertools
import logging
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from framebus.agents.base import Runtime
from framebus.agents.decode import sweep_blobs
from framebus.agents.media.pipeline import safe_component
from framebus.topics import codec, ids, registry
from framebus.topics import events as ev
from framebus.topics.errors import FramebusError, GenerationError, InternalError

log = logging.getLogger("framebus.agents.generate")

STAGE = "generate"
#: cancels remembered per worker (oldest forgotten first)
MAX_CANCELS = 100_000


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


class Cancelled(Exception):
    """Raised in the sampling thread at the next step after a cancel (or a revoke)."""


# --- prompt check ------------------------------------------------------------------------------------


def blocked_term(prompt: str, terms: list[str]) -> str | None:
    """The first policy term (a word or phrase, case-insensitive, whole words) the prompt contains."""
    low = prompt.lower()
    for term in terms:
        t = term.strip().lower()
        if t and re.search(r"(?<![a-z0-9])" + re.escape(t) + r"(?![a-z0-9])", low):
            return term
    return None


def prompt_scores(embedder: Any, moderator: Any, prompt: str) -> dict[str, float]:
    """Per moderation category, how much the prompt reads as that category: a softmax of the prompt's text
    embedding against the moderator's zero-shot category prompts and its safe prompts (the same prompts that
    moderate frames), summed over each category's prompts. Empty when the moderator has no text policy."""
    zs = getattr(moderator, "zero_shot", None) or moderator
    policy, safe = getattr(zs, "policy", None), getattr(zs, "safe_prompts", None)
    if not policy or not safe:
        return {}
    cats = list(policy)
    texts = [p for c in cats for p in policy[c]] + list(safe)
    vecs = embedder.embed_texts([prompt, *texts])
    sims = vecs[1:] @ vecs[0]
    logits = 100.0 * sims
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    out, at = {}, 0
    for c in cats:
        n = len(policy[c])
        out[c] = float(probs[at : at + n].sum())
        at += n
    return out


# --- the job -----------------------------------------------------------------------------------------


@dataclass
class Job:
    req: ev.GenerationRequest
    record: Any
    spec: Any  # GenerationSpec, normalised
    run_id: str
    trace_id: str
    seq: int
    ckpt_dir: Path
    cancel: threading.Event = field(default_factory=threading.Event)
    resume: Any = None  # SamplerCheckpoint
    started: float = field(default_factory=time.monotonic)
    future: asyncio.Future | None = None

    @property
    def key(self) -> tuple:
        s = self.spec
        return (s.mode, s.num_frames, s.width, s.height, s.steps, s.fps)

    def sort_key(self) -> tuple[int, int]:
        return (-self.req.priority, self.seq)


class Scheduler:
    """Jobs waiting for the generator, highest priority first; compatible waiting jobs join a batch.

    One sampling call at a time, in the agent's own thread (generation never blocks the model thread the
    understanding agents share)."""

    def __init__(self, gen: Generation):
        self.gen = gen
        self.waiting: list[tuple[tuple[int, int], int, Job]] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    def submit(self, job: Job) -> asyncio.Future:
        job.future = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (job.sort_key(), job.seq, job))
        self.wake.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._loop(), name="generate-scheduler")
        return job.future

    def withdraw(self, job: Job) -> None:
        self.waiting = [w for w in self.waiting if w[2] is not job]
        heapq.heapify(self.waiting)

    def _next_batch(self) -> list[Job]:
        _, _, first = heapq.heappop(self.waiting)
        batch = [first]
        if first.resume is None and self.gen.batchable:
            rest = []
            while self.waiting:
                item = heapq.heappop(self.waiting)
                job = item[2]
                if (
                    len(batch) < self.gen.rt.settings.generate_batch_size
                    and job.resume is None
                    and job.key == first.key
                ):
                    batch.append(job)
                else:
                    rest.append(item)
            for item in rest:
                heapq.heappush(self.waiting, item)
        return batch

    async def _loop(self) -> None:
        while True:
            while not self.waiting:
                self.wake.clear()
                await self.wake.wait()
            batch = [j for j in self._next_batch() if j.future is not None and not j.future.done()]
            if not batch:
                continue
            try:
                frames = await self.gen.sample(batch)
            except Cancelled as exc:
                for j in batch:  # the cancelled job(s) end; their batch neighbours go back in the queue
                    if j.future is None or j.future.done():
                        continue
                    if j.cancel.is_set():
                        j.future.set_exception(exc)
                    else:
                        heapq.heappush(self.waiting, (j.sort_key(), j.seq, j))
                continue
            except BaseException as exc:  # noqa: BLE001 - handed to every job of the batch
                for j in batch:
                    if j.future is not None and not j.future.done():
                        j.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for j, f in zip(batch, frames, strict=True):
                if j.future is not None and not j.future.done():
                    j.future.set_result(f)


class Generation:
    """The generate stage of one worker: admission, scheduling, sampling, publishing."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.s = rt.settings
        self.jobs = rt.table("generate-jobs")
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="generate")
        self.scheduler: Scheduler | None = None
        self.active: dict[str, int] = {}  # tenant -> queued + running jobs in this worker
        self.running: dict[tuple[str, str], Job] = {}
        self.cancelled: dict[tuple[str, str], float] = {}
        self.seq = itertools.count()
        self._generator = None
        self._generator_lock = threading.Lock()

    # --- models ----------------------------------------------------------------------------------

    @property
    def generator(self):
        with self._generator_lock:  # warm() may be loading it in the model thread
            if self._generator is None:
                from framebus.models.registry import create, load_generator

                if self.s.generator:  # a backend named in the settings, instead of the profile's
                    self._generator = create("generator", self.s.generator, self.s, **self.s.generator_options)
                else:
                    self._generator = load_generator(self.s)
                info = self._generator.info
                log.warning("generate: model %s/%s ready", info.name, info.version)
            return self._generator

    def warm(self) -> None:
        """Load the generator, and the moderator (with its embedder) when prompts or outputs are checked,
        in the model thread while the worker joins its group, so the first job does not wait for them. A
        model that cannot load is only logged here: each job then ends failed with its error code
        (``models.weights_missing``), as without the warm-up."""
        try:
            _ = self.generator
            if self.s.generate_prompt_check or self.s.generate_moderate_output:
                _ = self.rt.moderator
        except Exception as err:  # noqa: BLE001 - the jobs report it, with its code
            log.warning("generate: models not loaded at start (%s); jobs will report it", type(err).__name__)

    @property
    def batchable(self) -> bool:
        return bool(getattr(self.generator, "batchable", False))

    # --- paths -----------------------------------------------------------------------------------

    def ckpt_dir(self, tenant: str, job_id: str) -> Path:
        return self.s.blob_dir / "generate" / ids.digest("job", tenant, job_id)

    def output_path(self, tenant: str, job_id: str, *, quarantine: bool = False) -> Path:
        root = self.s.quarantine_dir if quarantine else self.s.generated_dir
        return root / safe_component(tenant) / f"{safe_component(job_id)}.mp4"

    # --- events ----------------------------------------------------------------------------------

    async def finish(
        self,
        record: Any,
        req: ev.GenerationRequest,
        status: str,
        *,
        trace_id: str | None,
        error: FramebusError | None = None,
        dead_letter: bool = False,
        **fields: Any,
    ) -> None:
        """The job's one result (deterministic event id), then its record in the job table, then its
        checkpoint folder goes. Failures also get a DLQ entry (first)."""
        if dead_letter and error is not None:
            await self.rt.dead_letter(STAGE, registry.GENERATE, record, error, trace_id)
        result = ev.GenerationResult(
            job_id=req.job_id,
            tenant=req.tenant,
            status=status,  # type: ignore[arg-type]
            error=ev.ErrorInfo(**error.as_dict()) if error is not None else None,
            trace_id=trace_id,
            event_id=ids.generation_result_event_id(req.tenant, req.job_id),
            **fields,
        )
        await self.rt.send(registry.GENERATE_RESULTS, req.job_id, result, trace_id)
        await self.jobs.put(record.partition, req.job_id.encode(), {"status": status, "tenant": req.tenant})
        shutil.rmtree(self.ckpt_dir(req.tenant, req.job_id), ignore_errors=True)
        self.rt.count(f"generate.{status}")
        log.info("generate: job %s ended %s%s", req.job_id, status, f" ({error.code})" if error is not None else "")

    async def progress(
        self, job: Job, step: int, total: int, *, preview: str | None = None, eta_s: float | None = None
    ) -> None:
        resumed = job.resume.step if job.resume is not None else None
        event = ev.GenerationProgress(
            job_id=job.req.job_id,
            tenant=job.req.tenant,
            step=step,
            total_steps=total,
            eta_s=eta_s,
            preview=preview,
            resumed_from=resumed,
            run_id=job.run_id,
            event_id=ids.generation_progress_event_id(job.req.tenant, job.req.job_id, step, resumed),
        )
        await self.rt.send(registry.GENERATE_PROGRESS, job.req.job_id, event, job.trace_id)

    # --- admission -------------------------------------------------------------------------------

    def _spec(self, req: ev.GenerationRequest, source: np.ndarray | None, source_fps: float | None):
        from framebus.models.base import GenerationSpec

        s = self.s
        steps = req.steps or s.generate_steps or getattr(self.generator, "default_steps", 20)
        if steps > s.generate_max_steps:
            raise GenerationError(f"{steps} steps asked, at most {s.generate_max_steps}", code="generate.too_large")
        frames = req.num_frames or getattr(self.generator, "default_frames", 16)
        if frames > s.generate_max_frames:
            raise GenerationError(f"{frames} frames asked, at most {s.generate_max_frames}", code="generate.too_large")
        width = req.width or getattr(self.generator, "default_width", 64)
        height = req.height or getattr(self.generator, "default_height", 64)
        if width * height > s.generate_max_pixels:
            raise GenerationError(
                f"{width}x{height} asked, at most {s.generate_max_pixels} pixels per frame", code="generate.too_large"
            )
        spec = GenerationSpec(
            prompt=req.prompt,
            seed=int(req.seed if req.seed is not None else int(ids.digest("seed", req.tenant, req.job_id, n=8), 16)),
            steps=int(steps),
            guidance=float(
                req.guidance if req.guidance is not None else getattr(self.generator, "default_guidance", 3.0)
            ),
            num_frames=int(frames),
            fps=float(req.fps or source_fps or getattr(self.generator, "default_fps", 8.0)),
            width=int(width),
            height=int(height),
            negative_prompt=req.negative_prompt,
            mode=req.mode,
            source=source[:1] if source is not None and req.mode == "i2v" else source,  # i2v: the first frame
            strength=float(req.strength if req.strength is not None else 0.6),
        )
        return self.generator.normalise(spec)

    def _source_path(self, req: ev.GenerationRequest) -> Path:
        """The source file of a video-to-video job: a local file under the allowed roots (as ingest checks).
        Checked before anything else, prompt check included, so a hostile URI fails the same way in every
        mode."""
        from framebus.agents.media.uri import resolve_uri

        if not req.source_uri:
            raise GenerationError(f"mode {req.mode} needs source_uri", code="generate.bad_request")
        return resolve_uri(req.source_uri, self.s.allowed_roots)

    async def _source(self, path: Path) -> tuple[np.ndarray, float]:
        """Decode the source clip, checked against the ingest limits before it is decoded."""
        from framebus.agents.media.probe import Limits
        from framebus.agents.media.transform import read_frames

        return await self.rt.in_process(read_frames, path, self.s.generate_max_frames, Limits.from_settings(self.s))

    async def check_prompt(self, req: ev.GenerationRequest) -> FramebusError | None:
        s = self.s
        if not s.generate_prompt_check or req.mode in ("upscale", "interpolate"):
            return None  # upscale and interpolate do not read the prompt: their output is still moderated
        if blocked_term(req.prompt, s.generate_blocked_terms) is not None:
            return GenerationError("the prompt contains a policy term", code="generate.prompt_blocked")
        rt = self.rt
        scores = await rt.in_model_thread(lambda: prompt_scores(rt.embedder, rt.moderator, req.prompt), task="moderate")
        hits = {c: v for c, v in scores.items() if v >= s.generate_prompt_threshold}
        if hits:
            cat = max(hits, key=hits.get)
            return GenerationError(
                f"the prompt reads as moderation category {cat!r} (score {hits[cat]:.2f} >= "
                f"{s.generate_prompt_threshold})",
                code="generate.prompt_blocked",
            )
        return None

    # --- sampling --------------------------------------------------------------------------------

    async def sample(self, batch: list[Job]) -> list[np.ndarray]:
        """Sample ``batch`` (one job, or compatible jobs) in the generation thread; checkpoints and progress
        after each step. A cancel or a revoke stops the job at its next step."""
        from framebus.models.base import SamplerCheckpoint

        loop = asyncio.get_running_loop()
        s = self.s
        for j in batch:
            self.running[(j.req.tenant, j.req.job_id)] = j
        started = time.monotonic()

        hold = float(s.fault_hold.get(STAGE, 0.0))

        def on_step(index: int, ckpt: SamplerCheckpoint) -> None:  # in the generation thread
            job = batch[index]
            if hold:  # testing only (fault_hold): a slow step, so a test can kill the worker mid-job
                time.sleep(hold)
            if job.cancel.is_set():
                raise Cancelled(job.req.job_id)
            step, total = ckpt.step, ckpt.total_steps
            final = step >= total
            preview = None
            if not final and step % s.generate_checkpoint_every == 0:
                job.ckpt_dir.mkdir(parents=True, exist_ok=True)
                _write_atomic(job.ckpt_dir / "checkpoint.pt", ckpt.to_bytes())
                _write_atomic(job.ckpt_dir / "request.sha256", _request_digest(job).encode())
            if step % s.generate_preview_every == 0 or step == 1:
                try:
                    preview = _write_preview(job.ckpt_dir / "preview.jpg", self.generator.preview(ckpt, job.spec))
                except Exception:  # noqa: BLE001 - a preview is a nicety
                    log.debug("preview failed", exc_info=True)
            first = job.resume.step if job.resume is not None else 0
            done = max(1, step - first)
            eta = (time.monotonic() - started) / done * (total - step)
            asyncio.run_coroutine_threadsafe(self.progress(job, step, total, preview=preview, eta_s=eta), loop).result()

        def run() -> list[np.ndarray]:
            gen = self.generator
            if len(batch) == 1:
                j = batch[0]
                return [gen.generate(j.spec, resume=j.resume, on_step=lambda c: on_step(0, c))]
            return gen.generate_batch([j.spec for j in batch], on_step=on_step)

        try:
            return await loop.run_in_executor(self.thread, run)
        except asyncio.CancelledError:
            for j in batch:  # revoke or stop: the thread stops at its next step, writing nothing more
                j.cancel.set()
            raise
        finally:
            for j in batch:
                self.running.pop((j.req.tenant, j.req.job_id), None)

    # --- the handler -----------------------------------------------------------------------------

    async def handle(self, record: Any) -> None:
        rt, s = self.rt, self.s
        trace_id = rt.trace_id(record)
        try:
            req = codec.decode(ev.GenerationRequest, record.value, max_bytes=s.max_event_bytes)
        except FramebusError as err:
            await self.fail_unparsed(record, err, trace_id)
            return
        done = self.jobs.get(record.partition, req.job_id.encode())
        if done is not None:
            log.info("generate: job %s already ended %s; nothing to do", req.job_id, done.get("status"))
            return
        key = (req.tenant, req.job_id)
        log.info(
            "generate: job %s taken (tenant %s, prompt sha256 %s)", req.job_id, req.tenant, prompt_hash(req.prompt)[:12]
        )
        if self.active.get(req.tenant, 0) >= s.generate_tenant_cap:
            err = GenerationError(
                f"tenant {req.tenant} has {s.generate_tenant_cap} jobs queued or running (generate_tenant_cap)",
                code="generate.quota_exceeded",
            )
            await self.finish(record, req, "failed", trace_id=trace_id, error=err, dead_letter=True)
            return
        self.active[req.tenant] = self.active.get(req.tenant, 0) + 1
        try:
            await self._run(record, req, trace_id)
        except Cancelled:
            await self.finish(record, req, "cancelled", trace_id=trace_id)
        except FramebusError as err:
            await self.finish(record, req, "failed", trace_id=trace_id, error=err, dead_letter=True)
        except asyncio.CancelledError:
            raise  # revoke or stop: unfinished; the next owner resumes from the checkpoint
        except Exception as exc:  # noqa: BLE001 - a bug: the job still ends, with internal.error
            log.error("generate: job %s: unexpected %s", req.job_id, type(exc).__name__, exc_info=exc)
            err = InternalError(f"generate failed: {type(exc).__name__}: {exc}"[:2000])
            await self.finish(record, req, "failed", trace_id=trace_id, error=err, dead_letter=True)
        finally:
            self.active[req.tenant] -= 1
            if not self.active[req.tenant]:
                del self.active[req.tenant]
            self.cancelled.pop(key, None)

    async def _run(self, record: Any, req: ev.GenerationRequest, trace_id: str) -> None:
        from framebus.models.base import SamplerCheckpoint

        rt = self.rt
        if (req.tenant, req.job_id) in self.cancelled:
            raise Cancelled(req.job_id)
        source_path = self._source_path(req) if req.mode != "t2v" else None
        blocked = await self.check_prompt(req)
        if blocked is not None:
            await self.finish(record, req, "blocked", trace_id=trace_id, error=blocked)
            return
        source, source_fps = (None, None)
        if source_path is not None:
            source, source_fps = await self._source(source_path)
        if req.mode in ("upscale", "interpolate"):
            frames, fps = await self._transform(req, source, source_fps)
            await self.publish(record, req, trace_id, frames, fps, steps=None, resumed_from=None, seconds=0.0)
            return
        spec = await rt.in_model_thread(self._spec, req, source, source_fps)
        job = Job(
            req=req,
            record=record,
            spec=spec,
            run_id=ids.digest("generate.run", req.tenant, req.job_id, n=24),
            trace_id=trace_id,
            seq=next(self.seq),
            ckpt_dir=self.ckpt_dir(req.tenant, req.job_id),
        )
        ckpt_file = job.ckpt_dir / "checkpoint.pt"
        if ckpt_file.exists():
            try:
                stored = (job.ckpt_dir / "request.sha256").read_text()
                if stored == _request_digest(job):
                    job.resume = SamplerCheckpoint.from_bytes(ckpt_file.read_bytes())
                    log.warning("generate: job %s resumes from step %d", req.job_id, job.resume.step)
            except Exception:  # noqa: BLE001 - a damaged checkpoint: start again
                log.warning("generate: job %s: checkpoint unreadable; starting from step 0", req.job_id, exc_info=True)
                job.resume = None
        if self.scheduler is None:
            self.scheduler = Scheduler(self)
        self.running[(req.tenant, req.job_id)] = job
        started = time.monotonic()
        fut = self.scheduler.submit(job)
        try:
            frames = await asyncio.shield(fut)
        except asyncio.CancelledError:
            job.cancel.set()
            self.scheduler.withdraw(job)
            raise
        finally:
            self.running.pop((req.tenant, req.job_id), None)
        await self.publish(
            record,
            req,
            trace_id,
            frames,
            spec.fps,
            steps=spec.steps,
            resumed_from=job.resume.step if job.resume is not None else None,
            seconds=time.monotonic() - started,
            spec=spec,
        )

    async def _transform(self, req: ev.GenerationRequest, source: np.ndarray, fps: float) -> tuple[np.ndarray, float]:
        from framebus.agents.media import transform

        if req.mode == "upscale":
            factor = req.scale or 2.0
            w, h = int(round(source.shape[2] * factor)), int(round(source.shape[1] * factor))
            if w * h > self.s.generate_max_pixels:
                raise GenerationError(f"upscaled {w}x{h} is over generate_max_pixels", code="generate.too_large")
            return await self.rt.in_process(transform.upscale, source, fps, (w, h)), fps
        target = req.fps or fps * 2
        if len(source) * target / fps > self.s.generate_max_frames:
            raise GenerationError("interpolated clip is over generate_max_frames", code="generate.too_large")
        return await self.rt.in_process(transform.interpolate, source, fps, target), target

    async def publish(
        self,
        record: Any,
        req: ev.GenerationRequest,
        trace_id: str,
        frames: np.ndarray,
        fps: float,
        *,
        steps: int | None,
        resumed_from: int | None,
        seconds: float,
        spec: Any = None,
    ) -> None:
        """Moderate, encode, sign, ingest, result (the order of effects 5-6)."""
        from framebus.agents.media import watermark
        from framebus.agents.media.encode import encode_mp4, write_thumbnail
        from framebus.agents.media.provenance import ensure_signing_identity, sign_mp4

        rt, s = self.rt, self.s
        model = None
        if spec is not None:
            info = self.generator.info
            model = ev.ModelRef(task="generate", name=info.name, version=info.version)
        flagged = await self.moderate(frames) if s.generate_moderate_output else {}
        out = self.output_path(req.tenant, req.job_id, quarantine=bool(flagged))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".unsigned-{out.name}")
        marked = False
        if s.generate_watermark:  # in the keyframes' pixels, before the encode that makes them keyframes
            frames, marked = await rt.in_process(watermark.embed, frames, fps)
        await rt.in_process(functools.partial(encode_mp4, crf=s.generate_crf), frames, tmp, fps)
        if flagged:
            tmp.replace(out)
            cats = ", ".join(f"{c} {v:.2f}" for c, v in sorted(flagged.items()))
            err = GenerationError(
                f"the generated video was flagged by moderation ({cats}); withheld", code="generate.output_blocked"
            )
            await self.finish(record, req, "blocked", trace_id=trace_id, error=err, model=model, steps=steps)
            return
        manifest = {
            "job_id": req.job_id,
            "tenant": req.tenant,
            "mode": req.mode,
            "prompt_sha256": prompt_hash(req.prompt),
            "negative_prompt_sha256": prompt_hash(req.negative_prompt) if req.negative_prompt else None,
            "source_sha256": _file_sha256(req.source_uri, s) if req.source_uri else None,
            "model": {"name": model.name, "version": model.version}
            if model
            else {"name": "ffmpeg", "version": req.mode},
            "seed": spec.seed if spec is not None else None,
            "steps": steps,
            "guidance": spec.guidance if spec is not None else None,
            "num_frames": int(frames.shape[0]),
            "fps": fps,
            "width": int(frames.shape[2]),
            "height": int(frames.shape[1]),
            "pipeline": f"framebus/{_version()}",
            "watermark": f"{watermark.METHOD}:{watermark.PAYLOAD.decode()}" if marked else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        identity = await rt.in_io_thread(
            lambda: ensure_signing_identity(s.data_dir, cert_chain=s.provenance_cert, key=s.provenance_key)
        )
        provenance = await rt.in_io_thread(sign_mp4, tmp, out, manifest, identity)
        tmp.unlink(missing_ok=True)
        thumb = await rt.in_process(write_thumbnail, frames, out.with_suffix(".jpg"))
        video_id = ids.generated_video_id(req.job_id) if s.generate_ingest else None
        if video_id is not None:
            ingest = ev.IngestRequest(
                video_id=video_id,
                uri=out.resolve().as_uri(),
                tenant=req.tenant,
                options={"origin": "generated", "job_id": req.job_id},
            )
            run = ids.digest("generate.ingest", req.tenant, req.job_id, n=24)
            await rt.send(registry.INGEST, video_id, ingest, trace_id, run_id=run)
        await self.finish(
            record,
            req,
            "ok",
            trace_id=trace_id,
            uri=out.resolve().as_uri(),
            video_id=video_id,
            provenance={**manifest, **(provenance or {})},
            thumbnail=Path(thumb).resolve().as_uri() if thumb else None,
            model=model,
            steps=steps,
            resumed_from=resumed_from,
            seconds=round(seconds, 3),
        )

    async def moderate(self, frames: np.ndarray) -> dict[str, float]:
        """Categories the moderation model flags on the finished frames (a few, evenly spread)."""
        rt = self.rt
        idx = np.linspace(0, len(frames) - 1, num=min(4, len(frames))).round().astype(int)
        picks = [np.ascontiguousarray(frames[i]) for i in sorted(set(idx.tolist()))]
        moderator = await rt.in_model_thread(lambda: rt.moderator, task="moderate")
        scores = await rt.in_model_thread(moderator.score, picks, task="moderate")
        th = moderator.thresholds
        flagged: dict[str, float] = {}
        for row in scores:
            for c, v in row.items():
                limit = float(
                    self.s.moderation_policy.get(c, {}).get("threshold", th.get(c, self.s.moderation_threshold))
                )
                if v >= limit:
                    flagged[c] = max(flagged.get(c, 0.0), float(v))
        return flagged

    async def fail_unparsed(self, record: Any, err: FramebusError, trace_id: str) -> None:
        await self.rt.dead_letter(STAGE, registry.GENERATE, record, err, trace_id)
        salvaged = codec.salvage_ids(record.value, record.key)
        job_id = _salvage_job_id(record)
        if job_id and salvaged.tenant:
            result = ev.GenerationResult(
                job_id=job_id,
                tenant=salvaged.tenant,
                status="failed",
                error=ev.ErrorInfo(**err.as_dict()),
                trace_id=trace_id,
                event_id=ids.generation_result_event_id(salvaged.tenant, job_id),
            )
            await self.rt.send(registry.GENERATE_RESULTS, job_id, result, trace_id)

    # --- cancels ---------------------------------------------------------------------------------

    async def on_cancel(self, records: list[Any]) -> None:
        for record in records:
            try:
                c = codec.decode(ev.GenerationCancel, record.value, max_bytes=self.s.max_event_bytes)
            except FramebusError as err:
                await self.rt.dead_letter(
                    "generate-cancel", registry.GENERATE_CANCEL, record, err, self.rt.trace_id(record)
                )
                continue
            key = (c.tenant, c.job_id)
            self.cancelled[key] = time.time()
            while len(self.cancelled) > MAX_CANCELS:
                self.cancelled.pop(next(iter(self.cancelled)))
            job = self.running.get(key)
            if job is not None:
                log.info("generate: job %s cancelled", c.job_id)
                job.cancel.set()
                if job.future is not None and not job.future.done() and self.scheduler is not None:
                    if any(w[2] is job for w in self.scheduler.waiting):  # not started: ends now
                        self.scheduler.withdraw(job)
                        job.future.set_exception(Cancelled(c.job_id))

    async def sweep(self) -> None:
        """Bounds: generated and quarantined videos (cap and age), checkpoints of jobs nobody resumed."""
        s = self.s
        for root in (s.generated_dir, s.quarantine_dir):
            await self.rt.in_io_thread(
                lambda r=root: sweep_blobs(r, cap_bytes=s.generated_cap_bytes, ttl_s=s.generated_ttl_s)
            )
        await self.rt.in_io_thread(
            lambda: sweep_blobs(s.blob_dir / "generate", cap_bytes=s.blob_cap_bytes, ttl_s=s.blob_ttl_s)
        )
        for p in list(self.jobs.data):
            for k in self.jobs.expired(p, s.generated_ttl_s):
                await self.jobs.delete(p, k)


# --- helpers -----------------------------------------------------------------------------------------


def _request_digest(job: Job) -> str:
    """What a checkpoint belongs to: the normalised request (a changed request starts again)."""
    sp = job.spec
    return ids.digest(
        "generate.ckpt",
        job.req.tenant,
        job.req.job_id,
        sp.prompt,
        sp.negative_prompt,
        sp.seed,
        sp.steps,
        sp.guidance,
        sp.num_frames,
        sp.fps,
        sp.width,
        sp.height,
        sp.mode,
        sp.strength,
    )


def _write_atomic(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".tmp-{dest.name}")
    tmp.write_bytes(data)
    tmp.replace(dest)


def _write_preview(dest: Path, frame: np.ndarray) -> str:
    import io

    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(buf, format="JPEG", quality=80)
    _write_atomic(dest, buf.getvalue())
    return dest.resolve().as_uri()


def _file_sha256(uri: str, s: Any) -> str | None:
    from framebus.agents.media.uri import resolve_uri

    try:
        path = resolve_uri(uri, s.allowed_roots)
    except FramebusError:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _salvage_job_id(record: Any) -> str | None:
    key = record.key.decode("utf-8", "replace") if isinstance(record.key, bytes) else record.key
    return key[:200] if key else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("framebus")
    except PackageNotFoundError:
        return "0"


def register(rt: Runtime) -> Generation:
    gen = Generation(rt)

    async def generate(records: list[Any]) -> None:
        for record in records:
            await gen.handle(record)

    # one job per handler call; up to generate_queue taken at once, run by priority (Scheduler)
    rt.stage(STAGE, registry.GENERATE, generate, concurrency=rt.settings.generate_queue, tables=(gen.jobs,))
    # every worker sees every cancel (its own group): the job may run on any of them
    rt.stage("generate-cancel", registry.GENERATE_CANCEL, gen.on_cancel, batch_size=64, broadcast=True)
    rt.every(60.0, gen.sweep)
    rt.preload(gen.warm)
    return gen
