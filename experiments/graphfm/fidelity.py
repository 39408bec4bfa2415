"""GraphFM fidelity diagnosis (issue 14): where does MFT lose the node's own features on Cornell?

The library's MFT (``jaxfm.train.graphfm_finetune.finetune``) has a fixed recipe: features reduced
to ``feature_dim`` (128) SVD components, a ``F -> D -> D - P`` feature MLP, one decoded batch of
``batch_targets`` nodes per step, AdamW, validation selection once per epoch. This script re-runs
the same MFT from library pieces (``WholeGraphBatcher``, ``GraphFM``, ``transplant_pretrained``,
``make_optimizer``, ``loss_and_metrics``) with every one of those knobs exposed, so
each ablation is one row: trunk (pretrained / random init), features (SVD-128 / raw), feature-MLP
width, optimizer steps and lr, trunk dropout, input-feature dropout, neighbours / latents zeroed,
number of decoder neighbours. Rows that change something the library cannot express are labelled
"ablation" in the results; nothing in ``jaxfm/`` is monkeypatched except where a row says so.

Subcommands (from the repository root)::

    python experiments/graphfm/fidelity.py cornell --rows all            # the ablation table
    python experiments/graphfm/fidelity.py probe                         # feature-survival probe
    python experiments/graphfm/fidelity.py gcn-versions                  # Chameleon/Squirrel files

Results go to ``experiments/results/graphfm_fidelity/<subcommand>.json`` (rows merged by name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = Path("/work/shared/datasets")
if not SHARED.is_dir():
    SHARED = REPO.parent / "shared" / "datasets"
OUT = REPO / "experiments" / "results" / "graphfm_fidelity"
CORNELL = "geom-gcn/new_data/cornell"


# --------------------------------------------------------------------------- MFT, every knob
@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
    """One MFT variant. Defaults = what ``evaluate.py`` ran for the committed Cornell 62.2."""

    trunk: str = "pretrained"  # pretrained | random
    features: str = "svd"  # svd (feature_dim 128, the library) | raw (no reduction)
    feature_dim: int = 128  # SVD width when features == "svd"
    feature_hidden: int | None = None  # None: D (library default)
    pe_width: int | None = None  # None: D // 4 (library default); the trunk was trained with it
    steps_per_epoch: int = 1  # Cornell: 87 train nodes <= batch 128 -> 1 step per epoch
    epochs: int = 25
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch_targets: int = 128
    dropout: float = 0.0  # trunk dropout during MFT (config.dropout)
    input_dropout: float = 0.0  # dropout on the raw/SVD input features (ablation)
    neighbors: int | None = None  # None: the pretrained config's 8
    zero_neighbors: bool = False  # probe: no neighbour tokens in the decoder sequence
    zero_latents: bool = False  # probe: latents replaced by zeros (+ type embedding)
    init_gain: float = 1.0  # ablation: fresh feature MLP's output layer (kernel_1) scaled by this
    eval_every: int = 0  # 0: once per epoch (library; = every step on Cornell); k: every k steps


def _load(path: str):
    from jaxfm.data.registry import load_dataset

    return load_dataset(SHARED / path)


def _ridge_acc(feat, y, train, test, lam=1.0):
    """Ridge classifier (one-hot least squares, standardised inputs): train -> test accuracy."""
    mu, sd = feat[train].mean(0), feat[train].std(0) + 1e-6
    f = (feat - mu) / sd
    f = np.concatenate([f, np.ones((len(f), 1))], 1)
    c = int(y.max()) + 1
    t = np.eye(c)[y[train]]
    a = f[train]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ t)
    return float((np.argmax(f[test] @ w, 1) == y[test]).mean())


def _mft(ds, splits, seeds, row: Row, checkpoint: Path, probe: bool = False):
    """MFT ``row`` on every (split, seed); returns per-run dicts (with ``probe`` the
    feature-survival probe of the final params before and after training)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn

    from jaxfm.data.whole_graph import WholeGraphBatcher
    from jaxfm.graphfm import GraphFM, loss_and_metrics
    from jaxfm.graphfm.encoder import PerceiverEncoder
    from jaxfm.train.graphfm_finetune import (
        NEW_PARAMS,
        load_pretrained_graphfm,
        transplant_pretrained,
    )
    from jaxfm.train.optim import OptimizerConfig, make_optimizer

    base, pretrained = load_pretrained_graphfm(checkpoint)
    fdim = row.feature_dim if row.features == "svd" else int(ds.x.shape[1])
    over = dict(feature_dim=fdim, dropout=row.dropout)
    if row.feature_hidden is not None:
        over["feature_hidden"] = row.feature_hidden
    if row.pe_width is not None:
        over["pe_width"] = row.pe_width
    if row.neighbors is not None:
        over["num_neighbors"] = row.neighbors
    base = dataclasses.replace(base, **over)
    batcher = WholeGraphBatcher.for_model(ds, base, row.batch_targets, 0)
    cfg = dataclasses.replace(base, datasets=(batcher.spec,))
    model = GraphFM(cfg)
    y = np.asarray(ds.y)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if row.zero_latents and isinstance(context.module, PerceiverEncoder):
            if context.method_name == "__call__":
                return jnp.zeros_like(out)
        return out

    def apply(params, batch, train, key):
        with nn.intercept_methods(interceptor):
            return model.apply(
                {"params": params}, batch, deterministic=not train, rngs={"dropout": key}
            )

    def prep(batch, key, train):
        if row.zero_neighbors:
            batch = batch.replace(neighbor_mask=jnp.zeros_like(batch.neighbor_mask))
        if train and row.input_dropout > 0:
            keep = jax.random.bernoulli(key, 1 - row.input_dropout, batch.features.shape)
            batch = batch.replace(
                features=jnp.where(keep, batch.features / (1 - row.input_dropout), 0)
            )
        return batch

    def loss_fn(params, batch, key):
        k1, k2 = jax.random.split(key)
        batch = prep(batch, k1, True)
        return loss_and_metrics(apply(params, batch, True, k2), batch, cfg)[0]

    @jax.jit
    def predict(params, batch):
        batch = prep(batch, None, False)
        return jnp.argmax(apply(params, batch, False, jax.random.key(0))["logits"], -1)

    example, _ = batcher.batch(np.arange(1), 0)
    init = jax.jit(lambda k, b: model.init(k, b)["params"])
    tx_cache = {}

    def make_step(params):
        opt = OptimizerConfig(
            name="adamw", learning_rate=row.lr, weight_decay=row.weight_decay, clip_norm=None
        )
        tx = make_optimizer(opt, params, trainable=list(NEW_PARAMS))

        @jax.jit
        def step(params, opt_state, batch, key):
            loss, g = jax.value_and_grad(loss_fn)(params, batch, key)
            upd, opt_state = tx.update(g, opt_state, params)
            return optax.apply_updates(params, upd), opt_state, loss

        return tx, step

    # Evaluation batches are fixed per split (seeded neighbour samples, as the library's
    # ``accuracy(params, mask, seed)``).
    def eval_batches(mask, seed):
        nodes = np.flatnonzero(mask & (y >= 0))
        return [
            batcher.batch(nodes[s : s + row.batch_targets], [seed, s])
            for s in range(0, len(nodes), row.batch_targets)
        ]

    def acc(params, batches):
        hits = n = 0
        for b, ids in batches:
            pred = np.asarray(predict(params, b))[np.asarray(b.target_mask)]
            hits += int((pred == y[ids]).sum())
            n += len(ids)
        return hits / max(n, 1)

    @jax.jit
    def internals(params, batch):
        batch = prep(batch, None, False)
        with nn.intercept_methods(interceptor):
            out, st = model.apply(
                {"params": params}, batch, capture_intermediates=True, mutable=["intermediates"]
            )
        inter = st["intermediates"]
        tok = out["tokens"][batch.target_index]  # [Q, D] the self token z_i
        last = inter["decoder"][f"layer_{cfg.decoder_depth - 1}"]["__call__"][0][:, 0]  # pre-LN
        return tok, last, out["node_embedding"]

    all_batches = (
        [
            batcher.batch(np.arange(s, min(s + row.batch_targets, ds.num_nodes)), [3, s])
            for s in range(0, ds.num_nodes, row.batch_targets)
        ]
        if probe
        else []
    )
    pe_w = cfg.pe_channels

    def do_probe(params, split):
        tok = np.zeros((ds.num_nodes, cfg.dim))
        pre = np.zeros_like(tok)
        emb = np.zeros_like(tok)
        for b, ids in all_batches:
            t_, p_, e_ = (np.asarray(a)[np.asarray(b.target_mask)] for a in internals(params, b))
            tok[ids], pre[ids], emb[ids] = t_, p_, e_
        tr = split.train & (y >= 0)
        te = split.test & (y >= 0)
        x_in = np.asarray(batcher.unit.features)
        feat_part = tok[:, : cfg.dim - pe_w]
        return {
            "trunk_addition_over_self_norm": float(
                np.mean(np.linalg.norm(pre - tok, axis=1) / (np.linalg.norm(tok, axis=1) + 1e-9))
            ),
            "self_token_norm": float(np.mean(np.linalg.norm(tok, axis=1))),
            "ridge_acc_input": _ridge_acc(x_in, y, tr, te, lam=10.0),
            "ridge_acc_token_feature_part": _ridge_acc(feat_part, y, tr, te),
            "ridge_acc_decoder_output": _ridge_acc(emb, y, tr, te),
            "r2_token_from_output": float(_r2(emb, feat_part, tr, te)),
        }

    runs = []
    for split_index in splits:
        split = ds.splits[split_index]
        train_nodes = np.flatnonzero(split.train & (y >= 0))
        vb, tb = eval_batches(split.val, 1), eval_batches(split.test, 2)
        for seed in seeds:
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, split_index])
            key = jax.random.key(seed * 1009 + split_index)
            key, ik = jax.random.split(key)
            fresh = init(ik, example)
            if row.trunk == "pretrained":
                params, _ = transplant_pretrained(fresh, pretrained, str(checkpoint))
            else:
                params = fresh
            if row.init_gain != 1.0:
                mlp = dict(params["tokenizer"]["feature_mlp"])
                mlp["kernel_1"] = mlp["kernel_1"] * row.init_gain
                params = {**params, "tokenizer": {**params["tokenizer"], "feature_mlp": mlp}}
            if "step" not in tx_cache:
                tx_cache["tx"], tx_cache["step"] = make_step(params)
            tx, step = tx_cache["tx"], tx_cache["step"]
            opt_state = tx.init(params)
            probe_before = do_probe(params, split) if probe else None
            best = {"val_accuracy": -1.0}
            curve = []
            total = 0
            for epoch in range(row.epochs):
                order = rng.permutation(train_nodes)
                if row.steps_per_epoch > 0:
                    bs = min(max(1, -(-len(order) // row.steps_per_epoch)), row.batch_targets)
                else:  # the library's: batches of batch_targets
                    bs = row.batch_targets
                for s in range(0, len(order), bs):
                    batch, _ = batcher.batch(order[s : s + bs], [seed, epoch, s])
                    key, sk = jax.random.split(key)
                    params, opt_state, _ = step(params, opt_state, batch, sk)
                    total += 1
                    if row.eval_every and total % row.eval_every == 0:
                        best = _select(best, params, acc, vb, tb, epoch, total, curve)
                if not row.eval_every:
                    best = _select(best, params, acc, vb, tb, epoch, total, curve)
            best["split"], best["seed"] = split_index, seed
            best["seconds"] = round(time.perf_counter() - t0, 1)
            best["steps"] = total
            best["curve"] = curve
            if probe:
                best["probe_before"] = probe_before
                best["probe_after"] = do_probe(params, split)
            runs.append(best)
    return runs


def _r2(src, dst, train, test, lam=1.0):
    """R^2 on test nodes of a ridge map src -> dst fitted on train nodes."""
    mu, sd = src[train].mean(0), src[train].std(0) + 1e-6
    f = np.concatenate([(src - mu) / sd, np.ones((len(src), 1))], 1)
    a = f[train]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ dst[train])
    res = ((f[test] @ w - dst[test]) ** 2).sum()
    tot = ((dst[test] - dst[train].mean(0)) ** 2).sum()
    return 1 - res / max(tot, 1e-12)


def _select(best, params, acc, vb, tb, epoch, step, curve):
    val = acc(params, vb)
    test = acc(params, tb)  # computed every time only for the budget curve; selection is on val
    curve.append([step, round(val, 4), round(test, 4)])
    if val > best["val_accuracy"]:
        return {"val_accuracy": val, "test_accuracy": test, "best_epoch": epoch, "best_step": step}
    return best


def _summary(runs):
    t = np.array([r["test_accuracy"] for r in runs])
    s03 = np.array([r["test_accuracy"] for r in runs if r["split"] in (0, 1, 2)])
    return {
        "test_mean": float(t.mean()),
        "test_std": float(t.std()),
        "runs": len(runs),
        "test_mean_splits012": float(s03.mean()) if s03.size else None,
        "val_mean": float(np.mean([r["val_accuracy"] for r in runs])),
    }


# Ablation rows: name -> (Row, description). Budget "E x S" = epochs x steps per epoch.
ROWS = {
    "lib": (Row(), "library MFT as evaluate.py ran it: SVD-128, lr 3e-3, 25 epochs x 1 step"),
    "lib_random_trunk": (Row(trunk="random"), "same, random-init frozen trunk"),
    "raw": (Row(features="raw"), "raw 1703 features into the feature MLP (no SVD)"),
    "steps200": (
        Row(epochs=25, steps_per_epoch=8, eval_every=5),
        "200 steps (25 epochs x 8 batches of 11 nodes), val every step",
    ),
    "steps200_full": (
        Row(epochs=200, eval_every=5),
        "200 full-batch steps (= MLP baseline budget), val every step",
    ),
    "steps200_raw": (
        Row(epochs=200, features="raw", eval_every=5),
        "200 full-batch steps, raw features",
    ),
    "steps200_random": (
        Row(epochs=200, trunk="random", eval_every=5),
        "200 full-batch steps, random-init trunk",
    ),
    "steps200_raw_random": (
        Row(epochs=200, features="raw", trunk="random", eval_every=5),
        "200 full-batch steps, raw features, random-init trunk",
    ),
    "lr1e-2_200": (
        Row(epochs=200, lr=1e-2, eval_every=5),
        "200 full-batch steps, lr 1e-2",
    ),
    "lr1e-3_200": (
        Row(epochs=200, lr=1e-3, eval_every=5),
        "200 full-batch steps, lr 1e-3",
    ),
    "hidden128_200": (
        Row(epochs=200, feature_hidden=128, eval_every=5),
        "200 full-batch steps, feature-MLP hidden 128 (ablation; library: D = 32)",
    ),
    "indrop05_200": (
        Row(epochs=200, input_dropout=0.5, eval_every=5),
        "200 full-batch steps, input-feature dropout 0.5 (ablation; the MLP baseline has 0.5)",
    ),
    "raw_indrop05_200": (
        Row(epochs=200, features="raw", input_dropout=0.5, eval_every=5),
        "200 full-batch steps, raw features, input dropout 0.5",
    ),
    "dropout01_200": (
        Row(epochs=200, dropout=0.1, eval_every=5),
        "200 full-batch steps, trunk dropout 0.1 during MFT",
    ),
    "raw_noneighbors_200": (
        Row(epochs=200, features="raw", zero_neighbors=True, eval_every=5),
        "probe: raw, 200 steps, neighbour tokens removed from the decoder sequence",
    ),
    "raw_nolatents_200": (
        Row(epochs=200, features="raw", zero_latents=True, eval_every=5),
        "probe: raw, 200 steps, encoder latents zeroed (flax intercept_methods)",
    ),
    "raw_selfonly_200": (
        Row(epochs=200, features="raw", zero_latents=True, zero_neighbors=True, eval_every=5),
        "probe: raw, 200 steps, self token only (no neighbours, latents zeroed)",
    ),
    "nbr0_200": (
        Row(epochs=200, neighbors=0, eval_every=5),
        "200 steps, 0 decoder neighbours",
    ),
    "nbr16_200": (
        Row(epochs=200, neighbors=16, eval_every=5),
        "200 steps, 16 decoder neighbours",
    ),
    "raw_hidden128_200": (
        Row(epochs=200, features="raw", feature_hidden=128, eval_every=10),
        "raw, 200 steps, feature-MLP hidden 128 (library: D = 32)",
    ),
    "raw_lr1e-2_200": (
        Row(epochs=200, features="raw", lr=1e-2, eval_every=10),
        "raw, 200 steps, lr 1e-2",
    ),
    "raw_wd0_200": (
        Row(epochs=200, features="raw", weight_decay=0.0, eval_every=10),
        "raw, 200 steps, weight decay 0",
    ),
    "raw_dropout01_200": (
        Row(epochs=200, features="raw", dropout=0.1, eval_every=10),
        "raw, 200 steps, trunk dropout 0.1 during MFT",
    ),
    "raw_nbr16_200": (
        Row(epochs=200, features="raw", neighbors=16, eval_every=10),
        "raw, 200 steps, 16 decoder neighbours (pretrained with 8)",
    ),
    "raw_gain10": (
        Row(features="raw", init_gain=10.0),
        "raw, library budget (25 steps), fresh feature-MLP output layer x10 at init",
    ),
    "raw_gain30": (
        Row(features="raw", init_gain=30.0),
        "raw, library budget (25 steps), fresh feature-MLP output layer x30 at init",
    ),
    "svd_gain10": (
        Row(init_gain=10.0),
        "SVD-128, library budget (25 steps), feature-MLP output layer x10 at init",
    ),
    "raw_gain10_200": (
        Row(features="raw", init_gain=10.0, epochs=200, eval_every=10),
        "raw, 200 steps, feature-MLP output layer x10 at init",
    ),
    "raw_gain10_indrop05_200": (
        Row(features="raw", init_gain=10.0, input_dropout=0.5, epochs=200, eval_every=10),
        "raw, 200 steps, output layer x10 at init, input dropout 0.5 (the MLP baseline's)",
    ),
    "raw_gain10_h64_indrop05_200": (
        Row(
            features="raw",
            init_gain=10.0,
            input_dropout=0.5,
            feature_hidden=64,
            epochs=200,
            eval_every=10,
        ),
        "raw, 200 steps, x10 init, input dropout 0.5, feature-MLP hidden 64 (= MLP baseline)",
    ),
    "raw_gain10_lr1e-3": (
        Row(features="raw", init_gain=10.0, lr=1e-3),
        "raw, x10 init, library budget (25 steps), MFT lr 1e-3 (library default)",
    ),
    "raw_gain10_lr1e-2": (
        Row(features="raw", init_gain=10.0, lr=1e-2),
        "raw, x10 init, library budget (25 steps), MFT lr 1e-2",
    ),
    "raw_gain10_wd0": (
        Row(features="raw", init_gain=10.0, weight_decay=0.0),
        "raw, x10 init, library budget (25 steps), weight decay 0",
    ),
    "raw_selfonly_600": (
        Row(epochs=600, features="raw", zero_latents=True, zero_neighbors=True, eval_every=10),
        "probe: raw, 600 steps, self token only",
    ),
}


def _mlp_refs(ds, splits, seeds):
    """MLP baselines on the same splits: raw features, SVD-128 features, GraphFM-sized."""
    from jaxfm.data.corpus import reduce_features
    from jaxfm.train.node_baselines import BaselineConfig, train_node_baseline

    svd = reduce_features(ds.x, 128, seed=[0, 0, 0xF3], power_iters=4)
    out = {}
    variants = {
        "mlp_raw": (
            ds,
            BaselineConfig(model="mlp"),
            "MLP raw features (64 hidden, drop 0.5, 200 ep)",
        ),
        "mlp_svd128": (
            dataclasses.replace(ds, x=svd),
            BaselineConfig(model="mlp"),
            "MLP on the SVD-128 features GraphFM sees",
        ),
        "mlp_raw_h32_nodrop": (
            ds,
            BaselineConfig(
                model="mlp", hidden=32, dropout=0.0, learning_rate=3e-3, weight_decay=1e-2
            ),
            "MLP raw, hidden 32, no dropout, MFT's AdamW lr/wd, 200 ep",
        ),
        "mlp_svd_h32_nodrop": (
            dataclasses.replace(ds, x=svd),
            BaselineConfig(
                model="mlp", hidden=32, dropout=0.0, learning_rate=3e-3, weight_decay=1e-2
            ),
            "MLP SVD-128, hidden 32, no dropout, MFT's AdamW lr/wd, 200 ep",
        ),
        "mlp_svd_h32_nodrop_25ep": (
            dataclasses.replace(ds, x=svd),
            BaselineConfig(
                model="mlp",
                hidden=32,
                dropout=0.0,
                learning_rate=3e-3,
                weight_decay=1e-2,
                epochs=25,
            ),
            "MLP SVD-128, hidden 32, no dropout, MFT's lr/wd, 25 steps (MFT's budget)",
        ),
    }
    for name, (d, bc, desc) in variants.items():
        runs = []
        for seed in seeds:
            r = train_node_baseline(
                d, dataclasses.replace(bc, seed=seed), splits=splits, progress=False
            )
            for p in r["per_split"]:
                runs.append({**p, "seed": seed})
        out[name] = {"description": desc, **_summary(runs), "per_run": runs}
        print(
            json.dumps({name: {k: v for k, v in out[name].items() if k != "per_run"}}), flush=True
        )
    return out


def _probe_means(runs):
    if "probe_after" not in runs[0]:
        return {}
    keys = runs[0]["probe_after"].keys()
    return {
        f"probe_{when}_mean": {
            k: float(np.mean([r[f"probe_{when}"][k] for r in runs])) for k in keys
        }
        for when in ("before", "after")
    }


def _merge_write(path: Path, rows: dict, meta: dict):
    from jaxfm.model_dir import write_json_atomic

    old = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    old["rows"].update(rows)
    old["meta"] = {**old.get("meta", {}), **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, old)


def cmd_cornell(args):
    ds = _load(CORNELL)
    splits = [int(s) for s in args.splits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    ckpt = Path(args.checkpoint)
    names = list(ROWS) if args.rows == "all" else args.rows.split(",")
    path = OUT / f"{args.out}.json"
    meta = {
        "dataset": CORNELL,
        "splits": splits,
        "seeds": seeds,
        "checkpoint": str(ckpt),
        "command": " ".join(sys.argv),
    }
    if args.mlp:
        _merge_write(path, _mlp_refs(ds, splits, seeds), meta)
    for name in names:
        if name not in ROWS:
            raise SystemExit(f"unknown row {name}; choose from {list(ROWS)}")
        row, desc = ROWS[name]
        t0 = time.perf_counter()
        runs = _mft(ds, splits, seeds, row, ckpt, probe=args.probe)
        res = {
            "description": desc,
            "row": dataclasses.asdict(row),
            **_summary(runs),
            **_probe_means(runs),
            "seconds": round(time.perf_counter() - t0, 1),
            "per_run": runs,
        }
        print(
            json.dumps({name: {k: v for k, v in res.items() if k not in ("per_run", "row")}}),
            flush=True,
        )
        _merge_write(path, {name: res}, meta)
    return 0


GCN_FILES = {
    "chameleon": "heterophilous-graphs/data/chameleon.npz",
    "chameleon_directed": "heterophilous-graphs/data/chameleon_directed.npz",
    "chameleon_filtered": "heterophilous-graphs/data/chameleon_filtered.npz",
    "chameleon_filtered_directed": "heterophilous-graphs/data/chameleon_filtered_directed.npz",
    "squirrel": "heterophilous-graphs/data/squirrel.npz",
    "squirrel_directed": "heterophilous-graphs/data/squirrel_directed.npz",
    "squirrel_filtered": "heterophilous-graphs/data/squirrel_filtered.npz",
    "squirrel_filtered_directed": "heterophilous-graphs/data/squirrel_filtered_directed.npz",
}


def _geom_split_match(ds, stem):
    """Do the file's masks equal the Geom-GCN split files (geom-gcn/splits/<stem>_split_*)?"""
    out = []
    for i, sp_ in enumerate(ds.splits):
        f = SHARED / "geom-gcn" / "splits" / f"{stem}_split_0.6_0.2_{i}.npz"
        if not f.is_file():
            out.append(None)
            continue
        g = np.load(f)
        if g["train_mask"].shape[0] != ds.num_nodes:
            out.append(False)
            continue
        out.append(
            bool(
                (g["train_mask"].astype(bool) == sp_.train).all()
                and (g["val_mask"].astype(bool) == sp_.val).all()
                and (g["test_mask"].astype(bool) == sp_.test).all()
            )
        )
    return out


def cmd_gcn_versions(args):
    from jaxfm.train.node_baselines import BaselineConfig, train_node_baseline

    path = OUT / "gcn_versions.json"
    names = list(GCN_FILES) if args.files == "all" else args.files.split(",")
    models = args.models.split(",")
    for name in names:
        ds = _load(GCN_FILES[name])
        stem = name.split("_")[0]
        row = {
            "file": GCN_FILES[name],
            "nodes": int(ds.num_nodes),
            "features": int(ds.x.shape[1]),
            "splits": len(ds.splits),
            "masks_equal_geom_gcn_split_files": _geom_split_match(ds, stem),
        }
        for model in models:
            t0 = time.perf_counter()
            r = train_node_baseline(ds, BaselineConfig(model=model), progress=False)
            row[model] = {
                "test_mean": r["test_accuracy_mean"],
                "test_std": r["test_accuracy_std"],
                "per_split": r["per_split"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        print(
            json.dumps(
                {
                    name: {
                        k: (v if not isinstance(v, dict) else round(100 * v["test_mean"], 2))
                        for k, v in row.items()
                    }
                }
            ),
            flush=True,
        )
        _merge_write(
            path,
            {name: row},
            {
                "command": " ".join(sys.argv),
                "paper_gcn": {"chameleon": 38.44, "squirrel": 31.52},
                "paper_mlp": {"chameleon": 46.21, "squirrel": 28.77},
            },
        )
    return 0


PROBE_ROWS = ("lib", "steps200_full", "steps200_raw", "steps200_raw_random")


def cmd_probe(args):
    ds = _load(CORNELL)
    splits = [int(s) for s in args.splits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    path = OUT / "probe.json"
    for name in args.rows.split(","):
        row, desc = ROWS[name]
        runs = _mft(ds, splits, seeds, row, Path(args.checkpoint), probe=True)
        keys = runs[0]["probe_after"].keys()
        res = {
            "description": desc,
            **_summary(runs),
            "probe_before_mean": {
                k: float(np.mean([r["probe_before"][k] for r in runs])) for k in keys
            },
            "probe_after_mean": {
                k: float(np.mean([r["probe_after"][k] for r in runs])) for k in keys
            },
            "per_run": runs,
        }
        print(json.dumps({name: {k: v for k, v in res.items() if k != "per_run"}}), flush=True)
        _merge_write(
            path, {name: res}, {"command": " ".join(sys.argv), "splits": splits, "seeds": seeds}
        )
    return 0


def cmd_token_scale(args):
    """Self-token norm vs the frozen trunk's residual addition at decoder position 0, on
    pretraining graphs (their own trained feature MLPs) and on Cornell (a fresh MLP, as MFT
    starts)."""
    import jax

    from jaxfm.data.whole_graph import WholeGraphBatcher
    from jaxfm.graphfm import GraphFM
    from jaxfm.train.graphfm_finetune import load_pretrained_graphfm

    base, params = load_pretrained_graphfm(args.checkpoint)
    names = [d.name for d in base.datasets]
    model = GraphFM(base)
    out = {}

    @jax.jit
    def internals(p, batch):
        o, st = model.apply(
            {"params": p}, batch, capture_intermediates=True, mutable=["intermediates"]
        )
        tok = o["tokens"][batch.target_index]
        last = st["intermediates"]["decoder"][f"layer_{base.decoder_depth - 1}"]["__call__"][0][
            :, 0
        ]
        return tok, last

    for rel, name in (
        ("gnn-benchmark/data/npz/cora.npz", "gnn-benchmark/cora"),
        ("GraphData/datasets/blogcatalog.npz", "graphdata/blogcatalog"),
        ("heterophilous-graphs/data/minesweeper.npz", "heterophilous/minesweeper"),
    ):
        match = [i for i, n in enumerate(names) if n == name]
        if not match:
            out[name] = f"not in the checkpoint's table ({names[:5]}...)"
            continue
        ds = _load(rel)
        b = WholeGraphBatcher.for_model(ds, base, 512, 0)
        nodes = np.random.default_rng(0).choice(ds.num_nodes, min(512, ds.num_nodes), replace=False)
        batch, _ = b.batch(nodes, 0, dataset=match[0], num_datasets=len(names))
        tok, last = (np.asarray(a)[np.asarray(batch.target_mask)] for a in internals(params, batch))
        out[name] = {
            "self_token_norm": float(np.linalg.norm(tok, axis=1).mean()),
            "trunk_addition_norm": float(np.linalg.norm(last - tok, axis=1).mean()),
            "ratio": float(
                (np.linalg.norm(last - tok, axis=1) / np.linalg.norm(tok, axis=1)).mean()
            ),
        }
        print(json.dumps({name: out[name]}), flush=True)
    _merge_write(OUT / "token_scale.json", out, {"command": " ".join(sys.argv)})
    return 0


def cmd_table(args):
    """``results.md``: the Cornell ablation table and the GCN file-version table."""
    lines = []
    c = json.loads((OUT / "cornell.json").read_text())
    m = c["meta"]
    lines += [
        f"## Cornell MFT ablations ({len(m['splits'])} Geom-GCN splits x {len(m['seeds'])} seeds)",
        "",
        "| row | what changes | test acc. (%) | paired diff vs mlp_raw (± SE) | splits 0-2 | "
        "ratio before -> after | ridge(token) | ridge(decoder out) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref = {(r["split"], r["seed"]): r["test_accuracy"] for r in c["rows"]["mlp_raw"]["per_run"]}
    for k, v in c["rows"].items():
        dd = 100 * np.array(
            [r["test_accuracy"] - ref[(r["split"], r["seed"])] for r in v["per_run"]]
        )
        diff = (
            f"{dd.mean():+.1f} ± {dd.std(ddof=1) / np.sqrt(len(dd)):.1f}" if k != "mlp_raw" else "0"
        )
        pa, pb = v.get("probe_after_mean"), v.get("probe_before_mean")
        probe = ["-", "-", "-"]
        if pa:
            probe = [
                f"{pb['trunk_addition_over_self_norm']:.1f} -> "
                f"{pa['trunk_addition_over_self_norm']:.2f}",
                f"{100 * pa['ridge_acc_token_feature_part']:.1f}",
                f"{100 * pa['ridge_acc_decoder_output']:.1f}",
            ]
        lines.append(
            f"| {k} | {v['description']} | "
            f"{100 * v['test_mean']:.1f} ± {100 * v['test_std']:.1f} | "
            f"{diff} | {100 * v['test_mean_splits012']:.1f} | " + " | ".join(probe) + " |"
        )
    g = OUT / "gcn_versions.json"
    if g.is_file():
        gv = json.loads(g.read_text())["rows"]
        lines += [
            "",
            "## GCN / MLP on the Chameleon / Squirrel files (10 splits each; paper GCN 38.44 / "
            "31.52, MLP 46.21 / 28.77)",
            "",
            "| file | nodes | features | masks = Geom-GCN split files | GCN | MLP |",
            "|---|---|---|---|---|---|",
        ]
        for v in gv.values():
            eq = v["masks_equal_geom_gcn_split_files"]
            eqs = "all 10" if all(e is True for e in eq) else ("none" if not any(eq) else str(eq))
            cell = lambda r: f"{100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f}" if r else "-"
            lines.append(
                f"| {v['file']} | {v['nodes']} | {v['features']} | {eqs} | {cell(v.get('gcn'))} | "
                f"{cell(v.get('mlp'))} |"
            )
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


EVAL_FILES = {
    "Chameleon": "heterophilous-graphs/data/chameleon.npz",
    "Squirrel": "heterophilous-graphs/data/squirrel.npz",
    "Actor": "heterophilous-graphs/data/actor.npz",
    "Computers": "GraphData/datasets/amazon_cs.npz",
    "Physics": "GraphData/datasets/coauthor_phy.npz",
    "Cornell": CORNELL,
}


def cmd_mft(args):
    """Any row on any evaluation graph (public splits, else the library's seeded 60/20/20)."""
    from jaxfm.train.graphfm_finetune import splits_for

    ds = _load(EVAL_FILES[args.dataset])
    if not ds.splits:
        ds = dataclasses.replace(ds, splits=tuple(sp for _, sp in splits_for(ds, 3)))
    splits = [int(s) for s in args.splits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    path = OUT / f"mft_{args.dataset.lower()}.json"
    for name in args.rows.split(","):
        row, desc = ROWS[name]
        row = dataclasses.replace(row, batch_targets=args.batch_targets)
        if args.epochs:
            row = dataclasses.replace(row, epochs=args.epochs, steps_per_epoch=0, eval_every=0)
        t0 = time.perf_counter()
        runs = _mft(ds, splits, seeds, row, Path(args.checkpoint))
        res = {
            "description": desc,
            "row": dataclasses.asdict(row),
            **_summary(runs),
            "seconds": round(time.perf_counter() - t0, 1),
            "per_run": runs,
        }
        print(
            json.dumps({name: {k: v for k, v in res.items() if k not in ("per_run", "row")}}),
            flush=True,
        )
        _merge_write(path, {name: res}, {"command": " ".join(sys.argv), "dataset": args.dataset})
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cornell", help="MFT ablation rows on Cornell")
    c.add_argument("--rows", default="all")
    c.add_argument("--splits", default="0,1,2,3,4,5,6,7,8,9")
    c.add_argument("--seeds", default="0,1")
    c.add_argument("--checkpoint", default=str(REPO / "runs" / "graphfm_eval" / "model"))
    c.add_argument("--out", default="cornell")
    c.add_argument("--mlp", action="store_true", help="also the MLP reference rows")
    c.add_argument("--probe", action="store_true", help="feature-survival probe on every run")
    pr = sub.add_parser("probe", help="feature-survival probe through the frozen trunk")
    pr.add_argument("--rows", default=",".join(PROBE_ROWS))
    pr.add_argument("--splits", default="0,1,2,3,4")
    pr.add_argument("--seeds", default="0")
    pr.add_argument("--checkpoint", default=str(REPO / "runs" / "graphfm_eval" / "model"))
    ts = sub.add_parser("token-scale", help="self token vs trunk addition on pretraining graphs")
    ts.add_argument("--checkpoint", default=str(REPO / "runs" / "graphfm_eval" / "model"))
    sub.add_parser("table", help="write results.md from the JSON files")
    mf = sub.add_parser("mft", help="rows on another evaluation graph")
    mf.add_argument("--dataset", required=True, choices=sorted(EVAL_FILES))
    mf.add_argument("--rows", default="lib,raw_gain10")
    mf.add_argument("--splits", default="0")
    mf.add_argument("--seeds", default="0")
    mf.add_argument("--epochs", type=int, default=0, help="override: E epochs of batch_targets")
    mf.add_argument("--batch-targets", type=int, default=128)
    mf.add_argument("--checkpoint", default=str(REPO / "runs" / "graphfm_eval" / "model"))
    g = sub.add_parser("gcn-versions", help="GCN/MLP on every Chameleon/Squirrel file")
    g.add_argument("--files", default="all")
    g.add_argument("--models", default="gcn,mlp")
    args = ap.parse_args(argv)
    return {
        "cornell": cmd_cornell,
        "probe": cmd_probe,
        "gcn-versions": cmd_gcn_versions,
        "token-scale": cmd_token_scale,
        "table": cmd_table,
        "mft": cmd_mft,
    }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
