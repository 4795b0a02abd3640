"""`blobs`: structure in the joint distribution of encoder/decoder weight pairs.

For an input j -> hidden i -> output j path the pair is (W1[i, j], W2[j, i]), where W1 is
the encoder weight [h, d] and W2 the decoder weight [d, h]. A fixed, seeded sample of pairs
(or all of them) is clustered with DBSCAN. With `eps: auto` both coordinates are
standardised and eps is set from the data (a multiple of the median distance to the
`min_samples`-th neighbour), so the result does not change when the weights are rescaled;
a number gives an absolute radius on the raw weights instead.
"""

import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..engine.hooks import Hook
from ..errors import SpecError
from ..options import Strict
from ..plugin import register_probe
from ..engine.hooks import steps_every as probe_every


class BlobsOptions(Strict):
    encoder: str = Field("fc1.weight", description="encoder weight W1, shape [h, d]")
    decoder: str = Field("fc2.weight", description="decoder weight W2, shape [d, h]")
    pairs: int = Field(5000, ge=0, description="pairs sampled once per trial (seeded); 0 = all h*d pairs")
    method: Literal["dbscan", "hdbscan"] = Field("dbscan", description="dbscan (one density), or hdbscan (clusters "
                                                                        "of different densities, standardised pairs)")
    eps: float | Literal["auto"] = Field("auto", description="DBSCAN radius, or auto (scale-free)")
    eps_scale: float = Field(3.0, gt=0, description="auto: eps = eps_scale x median k-th neighbour distance")
    min_samples: int = Field(10, ge=2, description="DBSCAN: neighbours that make a core point")
    min_cluster_size: int = Field(25, ge=2, description="HDBSCAN: the smallest group that counts as a cluster")
    silhouette_sample: int = Field(2000, ge=10, description="points the silhouette is computed on")
    gmm: bool = Field(False, description="also count Gaussian-mixture components by BIC")
    gmm_max_components: int = Field(6, ge=1)


def pair_indices(h: int, d: int, pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the pairs a trial follows: all h*d, or a seeded sample of `pairs` of them.
    Offline diagnostics draw the same sample from the same seed."""
    if pairs == 0 or pairs >= h * d:
        flat = torch.arange(h * d)
    else:
        flat = torch.randperm(h * d, generator=torch.Generator().manual_seed(seed))[:pairs].sort().values
    return flat // d, flat % d


@torch.no_grad()
def weight_pairs(w1: torch.Tensor, w2: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> np.ndarray:
    """[n, 2] array of (W1[i, j], W2[j, i]) for the chosen (i, j)."""
    return torch.stack([w1[rows, cols], w2[cols, rows]], dim=1).double().cpu().numpy()


def dbscan_labels(x: np.ndarray, options: dict) -> tuple[np.ndarray, float, np.ndarray]:
    """(features clustered, DBSCAN's eps or None, label per pair; -1 = noise)."""
    from sklearn.cluster import DBSCAN, HDBSCAN
    from sklearn.neighbors import NearestNeighbors

    standardised = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    if options.get("method") == "hdbscan":
        # One density threshold cannot see a dense centre and sparse outer blobs at once; HDBSCAN
        # keeps the groups that persist across every threshold (one group too: one blob is a result).
        if len(x) <= options["min_cluster_size"]:
            return standardised, None, np.full(len(x), -1)
        clusterer = HDBSCAN(min_cluster_size=options["min_cluster_size"], allow_single_cluster=True, copy=True)
        return standardised, None, clusterer.fit_predict(standardised)
    if options["eps"] == "auto":
        features = standardised
        k = min(options["min_samples"], len(x) - 1)
        distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
        eps = options["eps_scale"] * float(np.median(distances[:, -1])) or 1e-12
    else:
        features, eps = x, float(options["eps"])
    return features, eps, DBSCAN(eps=eps, min_samples=options["min_samples"]).fit_predict(features)


def blob_metrics(x: np.ndarray, options: dict, seed: int) -> dict:
    """Cluster statistics of pairs x [n, 2] (encoder, decoder)."""
    from sklearn.metrics import silhouette_score  # imported here: scikit-learn is slow to import
    from sklearn.mixture import GaussianMixture

    started = time.perf_counter()
    corr = float(np.corrcoef(x[:, 0], x[:, 1])[0, 1]) if len(x) > 1 and x.std(0).min() > 0 else 0.0
    out = {"correlation": corr, "mean_encoder": float(x[:, 0].mean()), "mean_decoder": float(x[:, 1].mean()),
           "std_encoder": float(x[:, 0].std()), "std_decoder": float(x[:, 1].std()), "pairs": int(len(x))}
    features, eps, labels = dbscan_labels(x, options)
    clustered = labels >= 0
    sizes = np.bincount(labels[clustered]) if clustered.any() else np.array([], dtype=int)
    out.update({"eps": eps, "clusters": int((sizes > 0).sum()), "noise": int((~clustered).sum()), "silhouette": None})
    if out["clusters"] >= 2:
        try:
            out["silhouette"] = float(silhouette_score(
                features[clustered], labels[clustered], random_state=seed % 2**32,
                sample_size=min(options["silhouette_sample"], int(clustered.sum()))))
        except ValueError:  # the sample drew a single cluster (a small one missed): undefined, not an error
            out["silhouette"] = None
    largest = np.argsort(sizes)[::-1][:3]
    out["centres"] = [[float(v) for v in x[labels == c].mean(0)] for c in largest if sizes[c] > 0]
    out["cluster_sizes"] = [int(sizes[c]) for c in largest if sizes[c] > 0]
    if options["gmm"]:
        bics = [GaussianMixture(k, random_state=seed % 2**32).fit(features).bic(features)
                for k in range(1, options["gmm_max_components"] + 1)]
        out["gmm_components"] = int(np.argmin(bics) + 1)
    out["seconds"] = time.perf_counter() - started
    return out


class BlobsProbe(Hook):
    def __init__(self, options: dict):
        self.o = options
        self.rows = self.cols = None

    def on_start(self, trial):
        self.every = probe_every(trial, self.o["every"])
        params = dict(trial.arms[0].model.named_parameters())
        for field in ("encoder", "decoder"):
            if self.o[field] not in params:
                raise SpecError(f"probes[blobs].{field}", f"no parameter {self.o[field]!r} "
                                                         f"(allowed: {', '.join(params)})")
        w1, w2 = params[self.o["encoder"]], params[self.o["decoder"]]
        if w1.ndim != 2 or w2.shape != w1.shape[::-1]:
            raise SpecError("probes[blobs]", f"encoder {tuple(w1.shape)} and decoder {tuple(w2.shape)} must be "
                                             "[h, d] and [d, h]")
        rows, cols = pair_indices(*w1.shape, self.o["pairs"], trial.seed_for("blobs"))
        self.rows, self.cols = rows.to(trial.device), cols.to(trial.device)
        self.measure(trial, 0)

    def on_step_end(self, trial, step):
        if step % self.every == 0 or step == trial.total_steps:
            self.measure(trial, step)

    @torch.no_grad()
    def pairs(self, arm) -> np.ndarray:
        params = dict(arm.model.named_parameters())
        return weight_pairs(params[self.o["encoder"]], params[self.o["decoder"]], self.rows, self.cols)

    def measure(self, trial, step):
        for arm in trial.arms:
            if arm.alive:
                metrics = blob_metrics(self.pairs(arm), self.o, trial.seed_for("blobs-metrics"))
                trial.log({"kind": "probe", "probe": "blobs", "arm": arm.name, "step": step, **metrics})


register_probe("blobs", BlobsProbe, Options=BlobsOptions, doc="weight-pair clusters (DBSCAN), correlation, GMM")
