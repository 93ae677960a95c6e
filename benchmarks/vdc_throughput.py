"""VDC question-answering throughput: images per second, 6 questions per image (4 yes/no,
2 descriptions), of the VDC backend's shared-prefix path and its plain batched-generate path,
against one image and one question per ``generate`` call, in the same run.

GPU (the issue's measurement; random weights, the compute of the real model)::

    python benchmarks/vdc_throughput.py --arch llava-1.5-7b --device cuda --out vdc_bench.json

CPU, the same sequence lengths with narrow layers (what prefix sharing saves, at CPU scale)::

    python benchmarks/vdc_throughput.py --arch llava-1.5-small --device cpu --images 16 --batch-sizes 8 16 \
        --generate-images 8 --generate-batch 12 --one-by-one-images 2 --threads 1

CPU smoke run with a tiny random LLaVA (tests/vdc_tiny.py)::

    python benchmarks/vdc_throughput.py --arch tiny --device cpu --images 16 --batch-sizes 8 16 --threads 1

Descriptions run to their full length (EOS and the stop-on-class-name rule are disabled: with
random weights they would fire at random), so this is the worst case for the shared path.
Needs torch + transformers only (no prefect, no flows).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cleansers.vdc.backends import VLMBackend  # noqa: E402
from cleansers.vdc.questions import Question  # noqa: E402

QUESTIONS = [Question("describe", "Describe the image in detail."),
             Question("describe", "What is the main object in this image?"),
             Question("yesno", "Does the image contain an airplane?"),
             Question("yesno", "Is there an airplane in the image?"),
             Question("yesno", "Does the object in the image have wings?"),
             Question("yesno", "Is the object in the image an aircraft?")]
NEVER = ["zzzzqqq"]  # a stop term that never appears: descriptions run to max_new_tokens


# (hidden, intermediate, layers, heads) of the vision tower and of the language model
LLAVA_SHAPES = {
    # CLIP ViT-L/14-336 + Vicuna-7B: the measurement
    "llava-1.5-7b": {"vision": (1024, 4096, 24, 16), "text": (4096, 11008, 32, 32)},
    # the same sequence lengths (576 image tokens at 336 px, the real vocabulary, the real
    # prompts) with narrow, shallow layers: what prefix sharing saves, measurable on a CPU
    "llava-1.5-small": {"vision": (256, 1024, 4, 4), "text": (512, 1376, 4, 8)},
}


def build_llava(device: str, shape: str):
    """A LLaVA-1.5 layout (CLIP ViT/14 at 336 px + a Llama language model) of the given shape,
    random weights (bf16 on CUDA, fp32 elsewhere), built in memory, with the word-level
    tokenizer of tests/vdc_tiny.py (the vocabulary size is the real one; prompts are about as
    long as with the real tokenizer)."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    from vdc_tiny import LLAVA_TEMPLATE, _tokenizer

    (vh, vi, vl, va), (th, ti, tl, ta) = LLAVA_SHAPES[shape]["vision"], LLAVA_SHAPES[shape]["text"]
    tok = _tokenizer(["<pad>", "<unk>", "<s>", "</s>", "<image>"], LLAVA_TEMPLATE, additional_special_tokens=["<image>"])
    vision = CLIPVisionConfig(hidden_size=vh, intermediate_size=vi, num_hidden_layers=vl, num_attention_heads=va,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=32064, hidden_size=th, intermediate_size=ti, num_hidden_layers=tl,
                       num_attention_heads=ta, num_key_value_heads=ta, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    config.pad_token_id = tok.pad_token_id
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(prev)
    model = model.to(device=device, dtype=dtype).eval()
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 336},
                                                                  crop_size={"height": 336, "width": 336}),
                               tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1, image_token="<image>")
    return model, processor, f"{shape}-random"


def build_tiny(device: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vdc_tiny import build_tiny_llava

    path = build_tiny_llava(Path(tempfile.mkdtemp()) / "tiny-llava")
    model = AutoModelForImageTextToText.from_pretrained(path).to(device).eval()
    return model, AutoProcessor.from_pretrained(path), "tiny-llava-random"


def flop_floor(model, prompt_tokens: int, suffix_tokens: float, n_yesno: int, n_desc: int, yn_new: int, desc_new: int,
               tflops: float) -> dict:
    """Images/s if the GPU did nothing but the matmuls (2 x params per token; attention and
    the vision tower's own cost included roughly as 2 x its params per patch)."""
    lm = sum(p.numel() for n, p in model.named_parameters() if "language_model" in n or "lm_head" in n)
    vis = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n or "projector" in n)
    patches = (getattr(model.config.vision_config, "image_size", 336) // 14) ** 2 + 1
    vis_flops = 2 * vis * patches
    per_q = [prompt_tokens + suffix_tokens + yn_new] * n_yesno + [prompt_tokens + suffix_tokens + desc_new] * n_desc
    unshared = sum(2 * lm * t + vis_flops for t in per_q)
    shared = (2 * lm * prompt_tokens + vis_flops + 2 * lm * (suffix_tokens * (n_yesno + n_desc) + desc_new * n_desc
                                                              + n_yesno))
    return {"lm_params": lm, "vision_params": vis, "tflops_assumed": tflops,
            "unshared_images_per_s": tflops * 1e12 / unshared, "shared_images_per_s": tflops * 1e12 / shared}


def run(backend, images, terms, sync) -> float:
    sync()
    t = time.perf_counter()
    backend.answer(images, [QUESTIONS] * len(images), terms)
    sync()
    return time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=[*LLAVA_SHAPES, "tiny"], default="llava-1.5-7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=256, help="images for the batched paths")
    ap.add_argument("--one-by-one-images", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--generate-batch", type=int, default=16, help="(image, question) pairs per batched generate")
    ap.add_argument("--generate-images", type=int, default=32)
    ap.add_argument("--yesno-new", type=int, default=8)
    ap.add_argument("--desc-new", type=int, default=48)
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tflops", type=float, default=790.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, processor, name = build_tiny(args.device) if args.arch == "tiny" else build_llava(args.device, args.arch)
    model.generation_config.eos_token_id = None  # full-length descriptions (see the module docstring)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (args.images, args.image_size, args.image_size, 3), dtype=np.uint8)
    common = dict(device=args.device, dtype="bf16" if cuda else "fp32", yesno_max_new_tokens=args.yesno_new,
                  describe_max_new_tokens=args.desc_new)

    def backend(**kw):
        be = VLMBackend((model, processor, name), **common, **kw)
        be.eos_ids = set()
        return be

    result = {"arch": name, "device": torch.cuda.get_device_name() if cuda else "cpu", "questions": len(QUESTIONS),
              "yesno_new_tokens": args.yesno_new, "desc_new_tokens": args.desc_new, "runs": []}

    def record(label, be, n, batch):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            run(be, images[:min(2, n)], [NEVER] * min(2, n), sync)  # warm-up
            secs = run(be, images[:n], [NEVER] * n, sync)
            row = {"path": label, "batch": batch, "images": n, "seconds": secs, "images_per_s": n / secs}
        except torch.cuda.OutOfMemoryError:
            row = {"path": label, "batch": batch, "images": n, "error": "out of memory"}
        if cuda:
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["stats"] = dict(be.stats)
        result["runs"].append(row)
        print(json.dumps(row), flush=True)

    record("one-by-one generate", backend(batch_size=1, prefix_sharing="off"), args.one_by_one_images, 1)
    record("batched generate", backend(batch_size=args.generate_batch, prefix_sharing="off"),
           min(args.generate_images, args.images), args.generate_batch)
    for bs in args.batch_sizes:
        record("shared prefix", backend(batch_size=bs, prefix_sharing="on"), min(args.images, max(bs * 2, bs)), bs)

    # the two paths on the same images in this precision: how often they agree
    n_chk = min(4, args.images)
    a = backend(batch_size=n_chk, prefix_sharing="on").answer(images[:n_chk], [QUESTIONS] * n_chk, [NEVER] * n_chk)
    b = backend(batch_size=8, prefix_sharing="off").answer(images[:n_chk], [QUESTIONS] * n_chk, [NEVER] * n_chk)
    same_first = [x.text.split()[:1] == y.text.split()[:1] for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    same_desc = [x.text == y.text for ra, rb in zip(a, b) for x, y, q in zip(ra, rb, QUESTIONS) if q.kind == "describe"]
    result["agreement"] = {"first_word": float(np.mean(same_first)), "full_descriptions": float(np.mean(same_desc))}

    be = backend(batch_size=1, prefix_sharing="on")
    plan = be._plan(images[0], {q.text for q in QUESTIONS})
    prompt_tokens = len(plan["prefix_ids"])
    suffix = float(np.mean([len(plan["suffix"][q.text]) for q in QUESTIONS]))
    result["prompt_prefix_tokens"], result["mean_suffix_tokens"] = prompt_tokens, suffix
    result["flop_floor"] = flop_floor(model, prompt_tokens, suffix, 4, 2, args.yesno_new, args.desc_new, args.tflops)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
