"""Parity of grlhf.models.qwen_vl.rope (numpy) with transformers 5.23 (torch), run side by side.

Tiny configs from the port spec §7a; models are built locally (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig  # noqa: E402
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLVisionRotaryEmbedding  # noqa: E402
from transformers.vision_utils import (  # noqa: E402
    get_vision_cu_seqlens,
    get_vision_position_ids,
    get_vision_window_index,
)

from grlhf.models.qwen_vl.rope import (  # noqa: E402
    get_rope_index,
    segments_from_cu_seqlens,
    vision_position_ids,
    vision_rotary,
    vision_segment_ids,
    window_index,
)

IMAGE, VIDEO, VSTART, VEND, PAD = 1000, 1001, 1002, 1003, 2
TEXT_CFG = dict(
    vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=2048,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    bos_token_id=0, eos_token_id=1, pad_token_id=PAD,
)
IDS = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND)
WIN = dict(window_size=56, patch_size=14, spatial_merge_size=2)


@pytest.fixture(scope="module")
def qwen2():
    cfg = Qwen2VLConfig(text_config=TEXT_CFG, vision_config=dict(
        depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14, temporal_patch_size=2,
        spatial_merge_size=2), **IDS)
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def qwen25():
    cfg = Qwen2_5_VLConfig(text_config=TEXT_CFG, vision_config=dict(
        depth=4, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, window_size=56,
        fullatt_block_indexes=[1, 3], tokens_per_second=2), **IDS)
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def n_tokens(grid, m=2):
    t, h, w = grid
    return t * (h // m) * (w // m)


def img(grid):
    return [VSTART] + [IMAGE] * n_tokens(grid) + [VEND]


def vid(grid):
    return [VSTART] + [VIDEO] * n_tokens(grid) + [VEND]


def batch(rows, left_pad=True):
    """Pad rows to one length; returns input_ids, attention_mask, mm_token_type_ids (torch int64)."""
    L = max(map(len, rows))
    ids = torch.full((len(rows), L), PAD)
    am = torch.zeros((len(rows), L), dtype=torch.long)
    for b, r in enumerate(rows):
        sl = slice(L - len(r), L) if left_pad else slice(0, len(r))
        ids[b, sl] = torch.tensor(r)
        am[b, sl] = 1
    types = (ids == IMAGE).long() + 2 * (ids == VIDEO).long()
    return ids, am, types


def check(model, ids, types, am=None, ig=None, vg=None, sec=None, tps=None):
    """Our get_rope_index vs HF's, exact; returns ours."""
    kw = {} if sec is None else {"second_per_grid_ts": sec}
    hp, hd = model.model.get_rope_index(
        input_ids=ids, mm_token_type_ids=types, image_grid_thw=ig, video_grid_thw=vg, attention_mask=am, **kw)
    p, d = get_rope_index(ids, types, am, ig, vg, sec, spatial_merge_size=2, tokens_per_second=tps)
    assert p.dtype == np.int64 and d.dtype == np.int64
    assert p.shape == tuple(hp.shape) and d.shape == tuple(hd.shape) == (ids.shape[0], 1)
    np.testing.assert_array_equal(p, hp.numpy())
    np.testing.assert_array_equal(d, hd.numpy())
    return p, d


# ----------------------------------------------------------------------------------- get_rope_index


def test_text_only(qwen2):
    ids, am, types = batch([[5, 6, 7, 8, 9], [5, 6, 7]])
    p, d = check(qwen2, ids, types, am)
    # what generate() builds when there are no grids: (4, B, L) = [text; 3 x text], rope_deltas zeros
    gen = qwen2._prepare_position_ids_for_generation(ids, {"input_ids": ids, "attention_mask": am})
    np.testing.assert_array_equal(p, gen[1:].numpy())
    np.testing.assert_array_equal(d, qwen2.model.rope_deltas.numpy())
    assert qwen2.model.rope_deltas.shape == (2, 1) and qwen2.model.rope_deltas.dtype == torch.int64
    # mm_token_type_ids may be omitted without grids; no mask -> arange
    p2, d2 = get_rope_index(ids, None, am)
    np.testing.assert_array_equal(p2, p)
    p3, _ = get_rope_index(ids, None)
    np.testing.assert_array_equal(p3, np.broadcast_to(np.arange(5), (3, 2, 5)))


def test_one_image_worked_example(qwen2, qwen25):
    g = [1, 8, 8]
    row = [5, 6, 7, 8, 9] + img(g) + [10] * 233  # L = 256
    ids, am, types = batch([row])
    ig = torch.tensor([g])
    for model, tps in [(qwen2, None), (qwen25, 2)]:
        p, d = check(model, ids, types, am, ig, tps=tps)
    assert d.item() == -12
    hw = np.repeat(np.arange(6, 10), 4), np.tile(np.arange(6, 10), 4)
    np.testing.assert_array_equal(p[0, 0, :25], np.r_[np.arange(6), [6] * 16, 10, 11, 12])
    np.testing.assert_array_equal(p[1, 0, :25], np.r_[np.arange(6), hw[0], 10, 11, 12])
    np.testing.assert_array_equal(p[2, 0, :25], np.r_[np.arange(6), hw[1], 10, 11, 12])


def test_two_images_one_row(qwen2, qwen25):
    g1, g2 = [1, 8, 8], [1, 6, 10]
    ids, am, types = batch([[5, 6] + img(g1) + [7] + img(g2) + [8, 9]])
    ig = torch.tensor([g1, g2])
    check(qwen2, ids, types, am, ig)
    check(qwen25, ids, types, am, ig, tps=2)
    check(qwen2, ids, types, None, ig)  # no attention mask at all


def test_left_padded_batch(qwen2, qwen25):
    g1, g2 = [1, 4, 6], [1, 10, 4]
    ids, am, types = batch([[5] + img(g1) + [6, 7, 8, 9, 10, 11], [5, 6, 7] + img(g2) + [8]])
    ig = torch.tensor([g1, g2])
    p, d = check(qwen2, ids, types, am, ig)
    check(qwen25, ids, types, am, ig, tps=2)
    assert (p[:, am.numpy() == 0] == 0).all()


def test_right_padded_and_text_row_in_batch(qwen2):
    g = [1, 6, 6]
    ids, am, types = batch([[5, 6, 7, 8], [5] + img(g) + [6]], left_pad=False)
    check(qwen2, ids, types, am, torch.tensor([g]))


def test_video_qwen2(qwen2):
    g = [6, 4, 4]
    ids, am, types = batch([[5, 6] + [VIDEO] * n_tokens(g) + [7, 8]])
    p, _ = check(qwen2, ids, types, am, vg=torch.tensor([g]))
    # spec §4b: temporal row reaches 2 + 5 = 7, but the next text only advances by max(h, w) // m
    assert p[0, 0, 2 + n_tokens(g) - 1] == 7 and p[0, 0, 2 + n_tokens(g)] == 4


@pytest.mark.parametrize("sec_kind", ["none", "f32", "f64", "list", "int"])
def test_video_qwen25_second_per_grid(qwen25, sec_kind):
    g1, g2 = [8, 4, 4], [40, 2, 2]
    ids, am, types = batch([[5] + vid(g1) + [6], [7, 8] + vid(g2) + [9, 10, 11]])
    vals = [0.7, 2.05]  # 2 * 2.05 * k truncates differently in float32 and float64
    sec = {"none": None, "f32": torch.tensor(vals), "f64": torch.tensor(vals, dtype=torch.float64),
           "list": vals, "int": torch.tensor([1, 3])}[sec_kind]
    check(qwen25, ids, types, am, vg=torch.tensor([g1, g2]), sec=sec, tps=2)


def test_video_float_dtype_matters(qwen25):
    g = [40, 2, 2]
    ids, am, types = batch([[5] + vid(g) + [6]])
    a, _ = check(qwen25, ids, types, am, vg=torch.tensor([g]), sec=torch.tensor([2.05]), tps=2)
    b, _ = check(qwen25, ids, types, am, vg=torch.tensor([g]), sec=torch.tensor([2.05], dtype=torch.float64), tps=2)
    assert not np.array_equal(a, b)


def test_image_and_video_one_row(qwen2, qwen25):
    gi, gv1, gv2 = [1, 6, 8], [4, 4, 6], [2, 8, 4]
    rows = [[5] + img(gi) + [6] + vid(gv1) + [7, 8], [9] + vid(gv2) + [10] + img([1, 4, 4]) + [11]]
    ids, am, types = batch(rows)
    ig, vg = torch.tensor([gi, [1, 4, 4]]), torch.tensor([gv1, gv2])
    check(qwen2, ids, types, am, ig, vg)
    check(qwen25, ids, types, am, ig, vg, sec=torch.tensor([0.5, 1.5]), tps=2)
    check(qwen25, ids, types, am, ig, vg, tps=2)


def test_errors():
    ids = np.array([[5] + [IMAGE] * 4 + [6]])
    types = (ids == IMAGE).astype(np.int64)
    with pytest.raises(ValueError):
        get_rope_index(ids, None, image_grid_thw=[[1, 4, 4]])
    with pytest.raises(ValueError):
        get_rope_index(ids, types, image_grid_thw=[[1, 4, 6]])  # 6 tokens expected, 4 given
    with pytest.raises(ValueError):
        get_rope_index(ids, types)  # vision tokens but no grid


@settings(max_examples=40)
@given(st.data())
def test_random_layouts(qwen2, qwen25, data):
    grids = st.sampled_from([[1, 2, 2], [1, 4, 6], [1, 6, 2], [2, 4, 4], [3, 2, 6]])
    n_rows = data.draw(st.integers(1, 3))
    rows, ig, vg = [], [], []
    for _ in range(n_rows):
        row = [5] * data.draw(st.integers(0, 3))
        for _ in range(data.draw(st.integers(0, 3))):
            g = data.draw(grids)
            is_image = data.draw(st.booleans())
            row += img(g) if is_image else vid(g)
            (ig if is_image else vg).append(g)
            row += [6] * data.draw(st.integers(0, 2))
        rows.append(row or [7])
    ids, am, types = batch(rows, left_pad=data.draw(st.booleans()))
    ig_t = torch.tensor(ig) if ig else None
    vg_t = torch.tensor(vg) if vg else None
    if not ig and not vg:
        am = am if data.draw(st.booleans()) else None
    if data.draw(st.booleans()):
        check(qwen2, ids, types, am, ig_t, vg_t)
    else:
        sec = torch.tensor(data.draw(st.lists(st.floats(0.125, 3.0, width=32), min_size=len(vg), max_size=len(vg))))
        check(qwen25, ids, types, am, ig_t, vg_t, sec=sec if vg and data.draw(st.booleans()) else None, tps=2)


# ----------------------------------------------------------------------------------- generation


def test_decode_positions_match_generate(qwen2):
    """Decode positions: generate() appends position_ids[..., -1:] + 1 on every row (spec §5), which
    for left-padded prompts is the last valid position + 1 per M-RoPE row (the JAX sampler's rule)."""
    gi, gv = [1, 8, 8], [6, 4, 4]
    # row 1 ends shortly after a video whose temporal row (up to 8) runs past the text (5, 6): next is 7, not 9
    ids, am, types = batch([[5, VSTART] + [IMAGE] * 16 + [VEND, 7, 8], [5, 6] + vid(gv) + [9]])
    seen = []
    hook = qwen2.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            qwen2.generate(input_ids=ids, attention_mask=am, mm_token_type_ids=types,
                           pixel_values=torch.randn(64, 1176), image_grid_thw=torch.tensor([gi]),
                           pixel_values_videos=torch.randn(96, 1176), video_grid_thw=torch.tensor([gv]),
                           max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        hook.remove()
    p, d = get_rope_index(ids, types, am, [gi], [gv])
    np.testing.assert_array_equal(p, seen[0][1:].numpy())
    nxt = p[:, :, -1] + 1  # [3, B]
    assert nxt.tolist() == [[9, 7]] * 3
    for step, pos in enumerate(seen[1:]):
        np.testing.assert_array_equal(pos[1:, :, 0].numpy(), nxt + step)
    assert (p.max(axis=(0, 2)) + 1).tolist() == [9, 9]  # max + 1 (the rope_deltas path) differs on row 1
    np.testing.assert_array_equal(d, qwen2.model.rope_deltas.numpy())


# ----------------------------------------------------------------------------------- vision tower


GRIDS = [[1, 8, 8], [1, 6, 10], [2, 4, 6], [3, 10, 4], [1, 2, 2]]


def test_vision_position_ids():
    g = torch.tensor(GRIDS)
    np.testing.assert_array_equal(vision_position_ids(g, 2), get_vision_position_ids(g, 2).numpy())
    pos = vision_position_ids([[1, 4, 4]], 2)  # spec §3c example
    np.testing.assert_array_equal(pos[:, 0], [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3])
    np.testing.assert_array_equal(pos[:, 1], [0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 0, 1, 2, 3, 2, 3])
    assert vision_position_ids(np.zeros((0, 3), int), 2).shape == (0, 2)


def test_vision_rotary_models(qwen2, qwen25):
    g = torch.tensor(GRIDS)
    for rot in (qwen2.model.visual.rotary_pos_emb, qwen25.model.visual.rotary_pos_emb):
        pos = get_vision_position_ids(g, 2)
        emb_hf = rot.recomposition_frequencies(pos[..., None].float() * rot.inv_freq)
        cos, sin = rot(torch.zeros(1), pos)
        emb = vision_rotary(g, 8, 2)
        assert emb.dtype == np.float32 and emb.shape == (pos.shape[0], 8)
        np.testing.assert_array_equal(emb, emb_hf.numpy())
        np.testing.assert_allclose(np.cos(emb), cos.numpy(), atol=1e-6)
        np.testing.assert_allclose(np.sin(emb), sin.numpy(), atol=1e-6)


@pytest.mark.parametrize("head_dim", [16, 64, 80, 128])
def test_vision_rotary_head_dims(head_dim):
    rot = Qwen2VLVisionRotaryEmbedding(Qwen2VLVisionConfig(embed_dim=head_dim * 2, num_heads=2))
    g = torch.tensor([[1, 40, 62], [2, 6, 10]])
    pos = get_vision_position_ids(g, 2)
    emb_hf = rot.recomposition_frequencies(pos[..., None].float() * rot.inv_freq)
    np.testing.assert_array_equal(vision_rotary(g, head_dim, 2), emb_hf.numpy())


def test_vision_segments():
    g = torch.tensor(GRIDS)
    cu = get_vision_cu_seqlens(g).numpy()
    seg = vision_segment_ids(g)
    assert seg.dtype == np.int32 and seg.shape == (cu[-1],)
    np.testing.assert_array_equal(seg, segments_from_cu_seqlens(cu, int(cu[-1])))
    np.testing.assert_array_equal(np.bincount(seg), np.diff(cu))  # one segment per frame
    np.testing.assert_array_equal(segments_from_cu_seqlens([0, 2, 2, 5, 5, 6], 6), [0, 0, 1, 1, 1, 2])


@pytest.mark.parametrize("grids", [[[1, 8, 8]], [[1, 6, 10]], GRIDS, [[2, 8, 12], [1, 16, 4]]])
def test_window_index_vs_hf(grids):
    g = torch.tensor(grids)
    wi, cu = window_index(g, **WIN)
    hwi, hcu = get_vision_window_index(g, spatial_merge_size=2, window_size=56, patch_size=14)
    np.testing.assert_array_equal(wi, hwi.numpy())
    np.testing.assert_array_equal(cu, hcu.numpy())
    assert cu.dtype == np.int32 and hcu.dtype == torch.int32
    np.testing.assert_array_equal(np.sort(wi), np.arange(sum(n_tokens(x) for x in grids)))
    # window segments never cross full-attention (per-frame) segments
    full = vision_segment_ids(g).reshape(-1, 4)[wi, 0]
    win = segments_from_cu_seqlens(cu, int(cu[-1])).reshape(-1, 4)[:, 0]
    assert all(len(set(full[win == s])) == 1 for s in np.unique(win))


def test_window_index_worked_examples():
    wi, cu = window_index([[1, 8, 8]], **WIN)
    np.testing.assert_array_equal(wi, [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])
    np.testing.assert_array_equal(cu, [0, 16, 32, 48, 64])
    wi, cu = window_index([[1, 6, 10]], **WIN)
    np.testing.assert_array_equal(wi, [0, 1, 5, 6, 2, 3, 7, 8, 4, 9, 10, 11, 12, 13, 14])
    np.testing.assert_array_equal(cu, [0, 16, 32, 40, 48, 56, 60])


def test_window_index_model_config(qwen25):
    v = qwen25.model.visual
    g = torch.tensor(GRIDS)
    wi, cu = window_index(g, window_size=v.window_size, patch_size=v.patch_size, spatial_merge_size=v.spatial_merge_size)
    hwi, hcu = get_vision_window_index(g, v.spatial_merge_size, v.window_size, v.patch_size)
    np.testing.assert_array_equal(wi, hwi.numpy())
    np.testing.assert_array_equal(cu, hcu.numpy())
