"""Pretrained FIMP variants: on a graph of self-loops the grafted tokenizer + message creator are
exactly the foundation model applied to each node; surgery is strict; vocab mapping counts."""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from converters.brainlm import convert as convert_brainlm
from converters.scgpt import convert as convert_scgpt
from converters.vit import convert as convert_vit
from jaxfm.fimp import (
    FIMPConfig,
    FIMPTaskModel,
    FMRITokenizerConfig,
    GeneTokenizerConfig,
    ImageTokenizerConfig,
    MessageCreator,
    PretrainedConfig,
    ZeroShotEncoder,
)
from jaxfm.fimp.data import DataOptions, prepare_fimp_data
from jaxfm.fimp.model import tokenize_nodes
from jaxfm.fimp.pretrained import (
    FAMILY_SPECS,
    PretrainedLoadError,
    graft,
    graft_pairs,
    pretrained_fimp_config,
)
from jaxfm.fimp.serialization import config_from_dict, config_to_dict
from jaxfm.foundation.brainlm import BrainLM, BrainLMConfig
from jaxfm.foundation.registry import model_from_config
from jaxfm.foundation.scgpt import ScGPTConfig
from jaxfm.foundation.vit import ViTConfig
from jaxfm.params import flatten

TOL = 2e-5


@pytest.fixture(scope="module", autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


@functools.cache
def _convert(convert, path):
    return convert(path)


def _case(family, fixtures_dir):
    """(converted, foundation config, data tokenizer config, nodes, reference token outputs)."""
    rng = np.random.default_rng(0)
    if family == "vit":
        conv = _convert(convert_vit, fixtures_dir / "vit_hf_small")
        fcfg = ViTConfig.from_dict(conv.config)
        images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
        model = model_from_config(conv.config)
        ref = model.apply({"params": conv.params}, images)["last_hidden_state"]
        pre_final = model.apply({"params": conv.params}, images)["hidden_states"][-1]
        tok = ImageTokenizerConfig(image_size=32, patch_size=4, channels=3)
        return conv, fcfg, tok, {"image": images}, ref, pre_final
    if family == "scgpt":
        conv = _convert(convert_scgpt, fixtures_dir / "scgpt_small_torch")
        fcfg = ScGPTConfig.from_dict(conv.config)
        ids = rng.integers(0, fcfg.ntoken - 1, size=(4, 7))
        vals = rng.uniform(0, 5, size=(4, 7)).astype(np.float32)
        mask = np.ones((4, 7), bool)
        mask[1, 5:] = False
        mask[3, 2:] = False
        model = model_from_config(conv.config)
        out = model.apply(
            {"params": conv.params},
            np.where(mask, ids, fcfg.pad_token_id),
            np.where(mask, vals, fcfg.pad_value),
            ~mask,
        )["encoder_output"]
        tok = GeneTokenizerConfig(num_genes=fcfg.ntoken)
        nodes = {"gene_ids": ids, "values": vals, "token_mask": mask}
        return conv, fcfg, tok, nodes, out, out
    conv = _convert(convert_brainlm, fixtures_dir / "brainlm_small")
    fcfg = BrainLMConfig.from_dict(conv.config)
    sig = rng.normal(size=(5, 100)).astype(np.float32)
    xyz = (rng.normal(size=(5, 3)) * 30).astype(np.float32)
    model = BrainLM(fcfg)
    v = {"params": conv.params}
    tokens = model.apply(v, sig[None], xyz[None], method=BrainLM.embed_tokens)[0]  # [5, P, H]
    ref = model.apply(v, tokens, method=BrainLM.encode)  # encoder + final norm, per region
    pre_final, _, _ = model.apply(
        v, tokens, method=lambda m, t: m.vit.encoder(t, deterministic=True)
    )
    tok = FMRITokenizerConfig(patch_size=20, num_patches=5)
    return conv, fcfg, tok, {"signal": sig, "xyz": xyz}, ref, pre_final


@pytest.fixture(scope="module", params=["vit", "scgpt", "brainlm"])
def case(request, fixtures_dir):
    return (request.param, *_case(request.param, fixtures_dir))


def _config(family, fcfg, tok, **kw):
    pre = PretrainedConfig(family=family, foundation=fcfg)
    return pretrained_fimp_config(FIMPConfig(dim=32, tokenizer=tok, **kw), pre)


def _self_loops(n):
    return np.arange(n), np.arange(n)


def _tokens_close(got, ref, mask):
    got, ref = np.asarray(got), np.asarray(ref)
    return float(np.abs(got[mask] - ref[mask]).max())


def test_zero_shot_on_self_loops_is_the_foundation_model(case):
    family, conv, fcfg, tok, nodes, ref, _ = case
    cfg = _config(family, fcfg, tok)
    enc = ZeroShotEncoder(cfg)
    n = next(iter(nodes.values())).shape[0]
    s, r = _self_loops(n)
    params = enc.init(jax.random.key(0), nodes, s, r)["params"]
    norm = "final_norm" if FAMILY_SPECS[family].final_norm_eps(fcfg) else None
    pairs = graft_pairs(
        family, creators=["message"], num_layers=cfg.message.num_layers, final_norm=norm
    )
    params, report = graft(params, conv.params, pairs)
    # Every parameter of the zero-shot encoder is pretrained except BrainLM's mask token.
    flat = flatten(params)
    assert set(flat) - set(report.loaded) <= {"tokenizer/mask_token"}
    out = enc.apply({"params": params}, nodes, s, r)
    mask = np.asarray(out["token_mask"])
    assert _tokens_close(out["tokens"], ref, mask) < TOL
    m = mask[..., None]
    pooled = (np.asarray(ref) * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(out["node_embedding"], pooled, atol=TOL)
    # Sensitivity: a real graph (node 0 hears node 1) changes node 0 and only node 0.
    s2, r2 = np.r_[s, 1], np.r_[r, 0]
    out2 = enc.apply({"params": params}, nodes, s2, r2)
    assert _tokens_close(out2["tokens"][:1], ref[:1], mask[:1]) > 1e-3
    assert _tokens_close(out2["tokens"][1:], ref[1:], mask[1:]) < TOL


def test_task_model_creators_are_the_foundation_layers(case):
    """In a FIMP task model built with --init FAMILY, the tokenizer + every hop's creators (self
    and neighbour) applied on self-loops reproduce the foundation encoder's per-node states."""
    family, conv, fcfg, tok, nodes, _, pre_final = case
    cfg = _config(family, fcfg, tok, num_layers=2)
    task = {"image": "image", "genes": "celltype", "fmri": "fmri"}[FAMILY_SPECS[family].modality]
    model = FIMPTaskModel(cfg, task, num_classes=3 if task != "fmri" else None)
    n = next(iter(nodes.values())).shape[0]
    s, r = _self_loops(n)
    params = model.init(jax.random.key(1), nodes, s, r)["params"]
    creators = [f"fimp/layers_{i}/{c}" for i in range(2) for c in ("message", "self_message")]
    pairs = graft_pairs(
        family, tokenizer="fimp/tokenizer", creators=creators, num_layers=cfg.message.num_layers
    )
    params, report = graft(params, conv.params, pairs)
    assert report.loaded and all(p.startswith("fimp/") for p in report.loaded)
    combine = re.compile(r"^fimp/(layers_\d+/(norm|mlp|mlp_norm)|final_norm)/")
    assert not any(combine.match(p) for p in report.loaded)  # COMBINE stays fresh
    fimp = params["fimp"]

    class _Tok(nn.Module):
        @nn.compact
        def __call__(self, nodes):
            return tokenize_nodes(cfg, nodes)

    h, mask = _Tok().apply({"params": {"tokenizer": fimp["tokenizer"]}}, nodes)
    creator = MessageCreator(cfg.message, dim=cfg.dim, pretrained=cfg.pretrained)
    for name in creators:
        hop, kind = name.split("/")[1:]
        out = creator.apply(
            {"params": fimp[hop][kind]}, h, s, r, kv_mask=mask, edge_mask=np.ones(n, bool)
        )
        assert _tokens_close(out, pre_final, np.asarray(mask)) < TOL, name
    # The whole task model runs and its config round-trips through JSON-able dicts.
    res = model.apply({"params": params}, nodes, s, r)
    assert np.isfinite(np.asarray(res["predictions"])).all()
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_fewer_message_layers_load_the_first_ones(fixtures_dir):
    conv, fcfg, tok, nodes, _, _ = _case("vit", fixtures_dir)
    pre = PretrainedConfig(family="vit", foundation=fcfg)
    cfg = pretrained_fimp_config(FIMPConfig(dim=32, tokenizer=tok), pre, num_message_layers=1)
    enc = ZeroShotEncoder(cfg)
    s, r = _self_loops(3)
    params = enc.init(jax.random.key(0), nodes, s, r)["params"]
    pairs = graft_pairs("vit", creators=["message"], num_layers=1, final_norm="final_norm")
    params, _ = graft(params, conv.params, pairs)
    assert "layers_1" not in params["message"]
    np.testing.assert_array_equal(
        params["message"]["layers_0"]["attention"]["query"]["kernel"],
        conv.params["encoder"]["layer_0"]["attention"]["query"]["kernel"],
    )
    with pytest.raises(ValueError, match=r"num_message_layers must be in \[1, 2\]"):
        pretrained_fimp_config(FIMPConfig(dim=32, tokenizer=tok), pre, num_message_layers=3)


def test_graft_errors_name_the_paths(fixtures_dir):
    conv, fcfg, tok, nodes, _, _ = _case("vit", fixtures_dir)
    cfg = _config("vit", fcfg, tok)
    enc = ZeroShotEncoder(cfg)
    s, r = _self_loops(3)
    params = enc.init(jax.random.key(0), nodes, s, r)["params"]
    pairs = graft_pairs("vit", creators=["message"], num_layers=2, final_norm="final_norm")
    src = flatten(conv.params)

    broken = dict(src)
    del broken["encoder/layer_1/mlp/fc2/bias"]
    broken["encoder/layer_0/attention/renamed/kernel"] = src[
        "encoder/layer_0/attention/query/kernel"
    ]
    broken["encoder/layer_0/norm1/scale"] = np.ones(7, np.float32)
    with pytest.raises(PretrainedLoadError) as err:
        graft(params, broken, pairs)
    e = err.value
    # a mis-shaped tensor is reported once, as mis-shaped (not also as missing)
    assert [m.split(" ")[0] for m in e.missing] == ["message/layers_1/mlp/fc2/bias"]
    assert e.unexpected == [
        "encoder/layer_0/attention/renamed/kernel -> message/layers_0/attention/renamed/kernel"
    ]
    assert e.mismatched == [("message/layers_0/norm1/scale", (7,), (64,))]
    assert "message/layers_1/mlp/fc2/bias" in str(e)

    # A checkpoint of the wrong width is refused when the config is built.
    with pytest.raises(ValueError, match="dim 32 must equal the pretrained vit width 64"):
        FIMPConfig(
            dim=32, tokenizer=tok, pretrained=PretrainedConfig(family="vit", foundation=fcfg)
        )


def test_data_must_fit_the_checkpoint(fixtures_dir):
    fcfg = ViTConfig.from_dict(_convert(convert_vit, fixtures_dir / "vit_hf_small").config)
    pre = PretrainedConfig(family="vit", foundation=fcfg)
    small = ImageTokenizerConfig(image_size=16, patch_size=4, channels=3)
    with pytest.raises(ValueError, match=r"32x32 images with 3 channels.*16x16x3.*--image-size 32"):
        pretrained_fimp_config(FIMPConfig(dim=32, tokenizer=small), pre)
    with pytest.raises(ValueError, match="tokenizes image nodes"):
        pretrained_fimp_config(FIMPConfig(dim=32, tokenizer=GeneTokenizerConfig(num_genes=5)), pre)
    blm = BrainLMConfig.from_dict(_convert(convert_brainlm, fixtures_dir / "brainlm_small").config)
    bad = FMRITokenizerConfig(patch_size=10, num_patches=8)
    with pytest.raises(ValueError, match="patches of 20 timepoints"):
        pretrained_fimp_config(
            FIMPConfig(dim=32, tokenizer=bad), PretrainedConfig(family="brainlm", foundation=blm)
        )


def test_scgpt_vocab_mapping_counts(fixtures_dir):
    """Dataset genes are mapped to the checkpoint vocabulary (exact, then case-insensitive);
    unmapped genes are dropped from the token set and counted."""
    # tiny.h5ad genes: Gad2 Slc32a1 Gfap Mfge8 Plp1 Tmem2 Vip (mouse symbols).
    vocab = {"<pad>": 0, "GAD2": 7, "Gfap": 3, "PLP1": 11, "VIP": 4, "Vip": 5}
    data = prepare_fimp_data(
        "celltype",
        str(fixtures_dir / "spatial" / "tiny.h5ad"),
        DataOptions(knn=2, max_genes=8),
        gene_vocab=vocab,
    )
    meta = data.metadata
    assert meta["gene_mapping"]["genes"] == 7
    assert meta["gene_mapping"]["mapped"] == 4
    assert meta["gene_mapping"]["unmapped"] == 3
    assert meta["gene_mapping"]["unmapped_genes"] == ["Slc32a1", "Mfge8", "Tmem2"]
    assert meta["gene_names"] == ["Gad2", "Gfap", "Plp1", "Vip"]
    assert meta["gene_vocab_ids"] == [7, 3, 11, 5]  # exact 'Vip' beats case-folded 'VIP'
    assert data.tokenizer.num_genes == 4
    nodes = data.graphs[0].nodes
    assert nodes["gene_ids"][nodes["token_mask"]].max() < 4
    with pytest.raises(ValueError, match="none of its 7 genes is in the checkpoint vocabulary"):
        prepare_fimp_data(
            "celltype", str(fixtures_dir / "spatial" / "tiny.h5ad"), gene_vocab={"XYZ": 1}
        )


def test_scgpt_ids_through_the_vocab_table(fixtures_dir):
    conv = _convert(convert_scgpt, fixtures_dir / "scgpt_small_torch")
    fcfg = ScGPTConfig.from_dict(conv.config)
    table = (5, 9, 2)  # dataset gene g -> vocabulary id
    pre = PretrainedConfig(family="scgpt", foundation=fcfg, gene_vocab_ids=table)
    tok = GeneTokenizerConfig(num_genes=3)
    cfg = pretrained_fimp_config(FIMPConfig(dim=32, tokenizer=tok), pre)
    enc = ZeroShotEncoder(cfg)
    nodes = {
        "gene_ids": np.array([[0, 2, 1]]),
        "values": np.array([[1.0, 2.0, 3.0]], np.float32),
        "token_mask": np.ones((1, 3), bool),
    }
    params = enc.init(jax.random.key(0), nodes, [0], [0])["params"]
    pairs = graft_pairs("scgpt", creators=["message"], num_layers=2)
    params, _ = graft(params, conv.params, pairs)
    got = enc.apply({"params": params}, nodes, [0], [0])["tokens"]
    ref = model_from_config(conv.config).apply(
        {"params": conv.params}, np.array([[5, 2, 9]]), nodes["values"]
    )["encoder_output"]
    np.testing.assert_allclose(got, ref, atol=TOL)
    with pytest.raises(ValueError, match="gene_vocab_ids must lie in"):
        dataclasses.replace(pre, gene_vocab_ids=(fcfg.ntoken,))
