"""Speed of the clip detectors: image embedding throughput of an open_clip architecture (its
weights do not change the cost, so a randomly initialised model is timed: nothing is
downloaded) and the decision time of ``clip`` / ``clip_knn`` on N rows of D-dim embeddings.

    python benchmarks/clip_speed.py --arch ViT-B-32 --rows 256 --decide-rows 6000,50000      # CPU
    python benchmarks/clip_speed.py --arch ViT-B-32 --rows 20000 --device cuda --decide-rows 50000 \\
        --json $OUT/clip.json                                                        # GPU

Quality needs a pretrained model, which this machine does not have: see docs/clip.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def embed_speed(arch: str, rows: int, device: str, batch_size: int, data: Path | None) -> dict:
    import open_clip

    from cleansers.clip.embed import embed_images
    from cleansers.clip.model import ClipModel, _pick_dtype
    from open_clip.model import get_model_preprocess_cfg

    dev = torch.device(device)
    dtype = _pick_dtype("auto", dev)
    net = open_clip.create_model(arch, device=dev).eval().to(dtype)  # random weights, same cost
    pp = get_model_preprocess_cfg(net)
    size = pp.get("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    clip = ClipModel(net, open_clip.get_tokenizer(arch), dev, dtype, size, tuple(pp["mean"]), tuple(pp["std"]),
                     "bench", arch)
    if data is not None:
        from pipelines.loaders import load_dataset

        ds = load_dataset(data)
        images = ds.images[np.linspace(0, len(ds) - 1, rows).round().astype(int)]
    else:
        images = np.random.default_rng(0).integers(0, 255, (rows, 32, 32, 3), dtype=np.uint8)
    embed_images(clip, images[:min(rows, batch_size)], batch_size)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    emb = embed_images(clip, images, batch_size)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    return {"arch": arch, "device": str(dev), "dtype": str(dtype).replace("torch.", ""), "rows": rows,
            "input": f"{size[0]}x{size[1]}", "dim": int(emb.shape[1]), "seconds": round(sec, 3),
            "images_per_second": round(rows / sec, 1)}


def decide_speed(n: int, dim: int = 512, k: int = 10) -> dict:
    from cleansers.clip.scoring import knn_decision, zero_shot_decision

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    true = np.arange(n) % 10
    emb = centres[true] + rng.normal(size=(n, dim)) / np.sqrt(dim)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    given = true.copy()
    wrong = rng.random(n) < 0.1
    given[wrong] = (true[wrong] + rng.integers(1, 10, wrong.sum())) % 10
    t0 = time.perf_counter()
    z = zero_shot_decision(emb, centres.astype(np.float32), given, 100.0)
    t_zero = time.perf_counter() - t0
    t0 = time.perf_counter()
    kn = knn_decision(emb, given, 10, k=k)
    t_knn = time.perf_counter() - t0
    return {"rows": n, "dim": dim, "clip_seconds": round(t_zero, 2), "clip_knn_seconds": round(t_knn, 2),
            "planted_tpr_clip": round(float(z.flag[wrong].mean()), 3),
            "planted_tpr_clip_knn": round(float(kn.flag[wrong].mean()), 3),
            "planted_fpr_clip": round(float(z.flag[~wrong].mean()), 4),
            "planted_fpr_clip_knn": round(float(kn.flag[~wrong].mean()), 4)}


def main(argv: list[str] | None = None) -> dict:
    """Run with ``argv`` (the command line's options); print the tables; return the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--rows", type=int, default=256, help="images to embed (0 = skip)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", type=Path, default=None, help="a Parquet file to take the images from")
    p.add_argument("--decide-rows", default="6000", help="comma-separated row counts for the decision timing")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    out: dict = {"threads": torch.get_num_threads()}
    if a.rows:
        out["embed"] = embed_speed(a.arch, a.rows, a.device, a.batch_size, a.data)
        e = out["embed"]
        print(f"embed  {e['arch']} {e['input']} on {e['device']} ({e['dtype']}): {e['rows']} images in "
              f"{e['seconds']} s = {e['images_per_second']} images/s")
    out["decide"] = [decide_speed(int(n)) for n in a.decide_rows.split(",") if n]
    print("| rows | clip s | clip_knn s | planted TPR clip / knn | planted FPR clip / knn |")
    print("|---|---|---|---|---|")
    for d in out["decide"]:
        print(f"| {d['rows']} | {d['clip_seconds']} | {d['clip_knn_seconds']} | {d['planted_tpr_clip']} / "
              f"{d['planted_tpr_clip_knn']} | {d['planted_fpr_clip']} / {d['planted_fpr_clip_knn']} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
    raise SystemExit(0)
