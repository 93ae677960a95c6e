"""Activation clustering (Chen et al., 2018), on the shared detection model.

Per class: penultimate features reduced to ``dims`` (10) dimensions, 2-means. Which cluster
is the poisoned one is decided from clean reference rows, not from cluster size: at 10%
BadNets the poisoned rows are about half of the target class, so the original "smaller
cluster" rule often flags the clean half (specs/detectors.md). The reference rows are
``ctx.trusted`` (projected into the class's reduced space) when given, else the same
stand-ins AGPD uses (:func:`cleansers.detection_model.reference_rows`). The cluster holding
most reference rows is clean; the other is flagged when the class's split is real:
silhouette >= ``silhouette`` and the suspicious cluster is at most ``max_fraction`` of the
class. With no reference majority (a tie) the smaller cluster is the suspect.

Defaults: ``dims`` 10 and PCA are the Adversarial Robustness Toolbox's defaults (the paper
used ICA; PCA is deterministic and as good here); ``silhouette`` 0.25 and ``max_fraction``
0.75 were chosen on CIFAR-10 slices (clean classes' 2-means silhouettes measured 0.08-0.2
with the small CNN; see docs/benchmarks.md).

Score: silhouette of the class times the row's relative closeness to the suspicious
centroid, (d_clean - d_suspect) / (d_clean + d_suspect), mapped to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from pipelines.dataset import ImageDataset

from .base import DETECTORS, AuditContext, Detector, DetectorResult
from .detection_model import (ModelSpec, features_of, get_detection_model, model_features, model_logits,
                              reference_rows, trusted_reference)


@dataclass
class ACConfig:
    dims: int = 10
    silhouette: float = 0.25
    max_fraction: float = 0.75
    n_ref: int = 10
    ref_quantile: float = 0.25
    arch: str = "auto"
    epochs: int | None = None
    silhouette_sample: int = 2000


@DETECTORS.register("activation_clustering")
class ActivationClustering(Detector):
    name = "activation_clustering"
    kind = "ranker"
    Config = ACConfig

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        cfg: ACConfig = self.config
        dm = get_detection_model(data, ctx, ModelSpec.from_options(cfg.arch, cfg.epochs))
        feats = model_features(data, dm, ctx).astype(np.float64)
        auto = reference_rows(data, model_logits(data, dm, ctx), cfg.n_ref, cfg.ref_quantile)
        trusted_feats, trusted_rows = None, {}
        if ctx.trusted is not None and len(ctx.trusted):
            trusted, trusted_rows = trusted_reference(ctx.trusted, dm, cfg.n_ref)
            trusted_feats = features_of(dm.model, trusted.images, dm.device).astype(np.float64)
        rng = np.random.default_rng([ctx.seed, 50])
        score = np.zeros(len(data))
        flag = np.zeros(len(data), dtype=bool)
        per_class = {}
        for k in range(data.num_classes):
            rows = np.flatnonzero(data.labels == k)
            if len(rows) < max(4, cfg.dims + 1):
                continue
            pca = PCA(n_components=min(cfg.dims, len(rows) - 1), random_state=ctx.seed).fit(feats[rows])
            z = pca.transform(feats[rows])
            km = KMeans(n_clusters=2, n_init=5, random_state=ctx.seed).fit(z)
            assign = km.labels_
            if len(set(assign.tolist())) < 2:
                continue
            sample = rng.choice(len(z), size=min(cfg.silhouette_sample, len(z)), replace=False)
            sil = float(silhouette_score(z[sample], assign[sample])) if len(set(assign[sample].tolist())) == 2 else 0.0
            if trusted_feats is not None and len(trusted_rows.get(k, [])):
                ref_assign = km.predict(pca.transform(trusted_feats[trusted_rows[k]]))
                source = "trusted"
            else:
                pos = np.searchsorted(rows, auto[k])
                ref_assign = assign[pos]
                source = "auto"
            votes = np.bincount(ref_assign, minlength=2)
            sizes = np.bincount(assign, minlength=2)
            suspect = int(np.argmin(votes)) if votes[0] != votes[1] else int(np.argmin(sizes))
            d = np.linalg.norm(z[:, None, :] - km.cluster_centers_[None], axis=2)
            d_clean, d_sus = d[:, 1 - suspect], d[:, suspect]
            rel = (d_clean - d_sus) / np.maximum(d_clean + d_sus, 1e-12)  # [-1, 1]
            score[rows] = max(sil, 0.0) * (rel + 1.0) / 2.0
            frac = sizes[suspect] / len(rows)
            fires = sil >= cfg.silhouette and frac <= cfg.max_fraction
            if fires:
                flag[rows[assign == suspect]] = True
            per_class[data.class_names[k]] = {"silhouette": round(sil, 4), "suspect_fraction": round(float(frac), 4),
                                              "reference": source, "flagged": bool(fires)}
        return DetectorResult(self.name, score, flag, None, {"model": dm.describe(), "per_class": per_class})
