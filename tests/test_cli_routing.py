from jaxfm.cli import _route_embed


def test_embed_routes_fimp_models_to_fimp_embed_and_keeps_graphfm():
    fimp = _route_embed(["embed", "--model", "fimp-vit", "--checkpoint", "c", "--dataset", "d"])
    assert fimp == ["fimp", "embed", "--model", "fimp-vit", "--checkpoint", "c", "--data", "d"]
    assert _route_embed(["embed", "--model=fimp-scgpt", "--out", "o"])[:2] == ["fimp", "embed"]
    gfm = ["embed", "--checkpoint", "c", "--dataset", "d", "--out", "o"]
    assert _route_embed(gfm) == gfm
    assert _route_embed(["embed", "--model", "graphfm", *gfm[1:]]) == gfm
    assert _route_embed(["pretrain", "--model", "fimp-vit"]) == ["pretrain", "--model", "fimp-vit"]
