"""Host-side index computations for Qwen2-VL / Qwen2.5-VL (pure numpy, meant to run outside jit).

Everything here depends only on token types, attention masks and ``grid_thw`` (static shapes), and matches
transformers 5.23.0: ``Qwen2VLModel.get_rope_index`` / ``Qwen2_5_VLModel.get_rope_index`` (M-RoPE positions),
``vision_utils.get_vision_position_ids`` / ``get_vision_cu_seqlens`` / ``get_vision_window_index`` and the vision
rotary embedding. Inputs may be numpy arrays, torch (CPU) tensors or lists; outputs are numpy arrays.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

import numpy as np

__all__ = [
    "get_rope_index",
    "inv_freq",
    "vision_position_ids",
    "vision_rotary",
    "vision_segment_ids",
    "window_index",
    "segments_from_cu_seqlens",
]


def _np(x: Any) -> np.ndarray:
    """np.asarray that also takes torch tensors (without importing torch)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _grids(grid_thw: Any) -> np.ndarray:
    if grid_thw is None:
        return np.zeros((0, 3), np.int64)
    return _np(grid_thw).astype(np.int64).reshape(-1, 3)


def _temporal_positions(gt: int, tokens_per_second: Optional[float], sec: Any) -> np.ndarray:
    """``(arange(gt) * tokens_per_second * sec).long()`` with torch's dtype rules.

    torch multiplies ``arange`` by the interval in float32 unless the interval is an integer (exact) or a float64
    tensor element; a python float interval is rounded to float32 first. Truncation happens after the multiply.
    """
    ar = np.arange(gt, dtype=np.int64)
    if tokens_per_second is None:  # Qwen2-VL: interval 1
        return ar
    if isinstance(sec, np.generic):  # element of a tensor / array: product in the element's dtype
        if np.issubdtype(sec.dtype, np.integer) and isinstance(tokens_per_second, (int, np.integer)):
            return ar * int(tokens_per_second * int(sec))
        dt = np.float64 if sec.dtype == np.float64 else np.float32
        interval = dt(tokens_per_second) * sec.astype(dt)
    else:  # python scalar (list input, or the default of 1)
        interval = tokens_per_second * sec
        if isinstance(interval, (int, np.integer)):
            return ar * int(interval)
        dt = np.float32
        interval = np.float32(interval)
    return (ar.astype(dt) * interval).astype(np.int64)


def get_rope_index(
    input_ids: Any,
    mm_token_type_ids: Any,
    attention_mask: Any = None,
    image_grid_thw: Any = None,
    video_grid_thw: Any = None,
    second_per_grid_ts: Any = None,
    *,
    spatial_merge_size: int = 2,
    tokens_per_second: Optional[float] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """3D M-RoPE position ids ``(3, B, L)`` int64 and ``rope_deltas`` ``(B, 1)`` int64, as transformers 5.23.

    ``mm_token_type_ids``: 0 text, 1 image, 2 video. Runs of equal type among the valid (attention_mask=1) tokens
    are processed in order; every vision run consumes the next grid of its modality (across the whole batch).
    ``tokens_per_second=None`` is Qwen2-VL (temporal interval 1); a number is Qwen2.5-VL (video interval
    ``tokens_per_second * second_per_grid_ts[v]``, missing ``second_per_grid_ts`` -> 1). Padding positions are 0;
    ``rope_deltas[b] = max(positions[:, b]) + 1 - n_valid[b]``.

    With no grids at all this returns the text positions that ``generate`` uses (``attention_mask.cumsum - 1``,
    padding 0, or ``arange``) on 3 rows and zero deltas; ``mm_token_type_ids`` may then be None.
    """
    ids = _np(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    bsz, seq = ids.shape
    mask = np.ones((bsz, seq), bool) if attention_mask is None else _np(attention_mask).reshape(bsz, seq) != 0
    img, vid = _grids(image_grid_thw), _grids(video_grid_thw)
    types = None if mm_token_type_ids is None else _np(mm_token_type_ids).reshape(bsz, seq).astype(np.int64)

    if len(img) == 0 and len(vid) == 0:
        if types is not None and np.any(types[mask] != 0):
            raise ValueError("mm_token_type_ids marks vision tokens but no image/video grid was given")
        text = np.where(mask, np.cumsum(mask, axis=-1) - 1, 0).astype(np.int64)
        return np.broadcast_to(text, (3, bsz, seq)).copy(), np.zeros((bsz, 1), np.int64)
    if types is None:
        raise ValueError("mm_token_type_ids is required when image_grid_thw / video_grid_thw are given")

    if second_per_grid_ts is None:
        secs: Optional[list] = None
    elif isinstance(second_per_grid_ts, (list, tuple)):
        secs = list(second_per_grid_ts)
    else:
        secs = list(_np(second_per_grid_ts).reshape(-1))
    n_used = {1: 0, 2: 0}
    grids = {1: img, 2: vid}
    m = spatial_merge_size

    position_ids = np.zeros((3, bsz, seq), np.int64)
    deltas = np.zeros((bsz, 1), np.int64)
    for b in range(bsz):
        valid_types = types[b][mask[b]]
        if valid_types.size == 0:
            continue  # transformers errors on an all-padding row; here: positions 0, delta 0
        chunks, cur = [], 0
        for key, grp in itertools.groupby(valid_types.tolist()):
            n = len(list(grp))
            if key == 0:
                chunks.append(np.broadcast_to(cur + np.arange(n, dtype=np.int64), (3, n)))
                cur += n
                continue
            if key not in grids:
                raise ValueError(f"unknown mm_token_type_id {key}")
            k = n_used[key]
            if k >= len(grids[key]):
                raise ValueError(f"more {'image' if key == 1 else 'video'} runs than grids")
            t, h, w = (int(v) for v in grids[key][k])
            n_used[key] += 1
            gh, gw = h // m, w // m
            if n != t * gh * gw:
                raise ValueError(f"vision run of {n} tokens does not match grid {(t, h, w)} (merge {m})")
            if key == 2 and tokens_per_second is not None:
                sec = 1 if secs is None else secs[k]
                t_idx = _temporal_positions(t, tokens_per_second, sec)
            else:
                t_idx = np.arange(t, dtype=np.int64)
            tt, hh, ww = np.meshgrid(t_idx, cur + np.arange(gh), cur + np.arange(gw), indexing="ij")
            chunks.append(np.stack([tt.ravel() + cur, hh.ravel(), ww.ravel()]).astype(np.int64))
            cur += max(h, w) // m
        pos = np.concatenate(chunks, axis=1)
        position_ids[:, b, mask[b]] = pos
        deltas[b, 0] = pos.max() + 1 - pos.shape[1]
    return position_ids, deltas


def vision_position_ids(grid_thw: Any, spatial_merge_size: int) -> np.ndarray:
    """``(N, 2)`` int64 (row, col) of each patch in block-major (m x m merge block) order, tiled over t."""
    m = spatial_merge_size
    out = [np.zeros((0, 2), np.int64)]
    for t, h, w in _grids(grid_thw):
        hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        blocks = (h // m, m, w // m, m)
        hpos = hpos.reshape(blocks).transpose(0, 2, 1, 3).ravel()
        wpos = wpos.reshape(blocks).transpose(0, 2, 1, 3).ravel()
        out.append(np.tile(np.stack([hpos, wpos], -1), (int(t), 1)))
    return np.concatenate(out).astype(np.int64)


def inv_freq(dim: int, theta: float) -> np.ndarray:
    """``1 / theta ** (arange(0, dim, 2) / dim)`` in float32, bit-equal to torch's rotary ``inv_freq``.

    float32 exponents, a float64 power rounded to float32, a float32 reciprocal: exact for every
    ``dim <= 128`` (numpy's float32 ``pow`` is not); larger dims may differ by 1 ulp.
    """
    expo = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return np.float32(1.0) / (np.float64(theta) ** expo.astype(np.float64)).astype(np.float32)


def vision_rotary(grid_thw: Any, head_dim: int, spatial_merge_size: int, theta: float = 10000.0) -> np.ndarray:
    """Vision RoPE angles ``(N, head_dim)`` float32: ``cat([f_h, f_w, f_h, f_w], -1)``; the model uses cos/sin.

    ``inv_freq = 1 / theta ** (arange(0, head_dim/2, 2) / (head_dim/2))`` (length head_dim/4), in original (not
    window-permuted) patch order.
    """
    if head_dim % 4:
        raise ValueError(f"vision head_dim must be divisible by 4, got {head_dim}")
    pos = vision_position_ids(grid_thw, spatial_merge_size).astype(np.float32)
    freqs = pos[:, :, None] * inv_freq(head_dim // 2, theta)  # (N, 2, hd/4) float32
    f = np.concatenate([freqs[:, 0], freqs[:, 1]], axis=-1)
    return np.concatenate([f, f], axis=-1).astype(np.float32)


def vision_segment_ids(grid_thw: Any) -> np.ndarray:
    """Segment id ``(N,)`` int32 of every patch row for full attention: each frame of each image/video."""
    g = _grids(grid_thw)
    lens = np.repeat(g[:, 1] * g[:, 2], g[:, 0])
    return np.repeat(np.arange(len(lens), dtype=np.int32), lens)


def window_index(
    grid_thw: Any, *, window_size: int, patch_size: int, spatial_merge_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Qwen2.5-VL window order of merged tokens ``(N/m^2,)`` int64 and ``cu_window_seqlens`` int32 (patch units).

    Same as ``vision_utils.get_vision_window_index``: per (image, frame), the merged-token grid is padded up to
    whole ``vw x vw`` windows (``vw = window_size // m // patch_size``; a full empty window row/column is added when
    it divides evenly), windows are taken row-major, padding dropped; consecutive duplicate cu entries removed.
    """
    m = spatial_merge_size
    vw = window_size // m // patch_size
    idx_out, cu, offset = [np.zeros(0, np.int64)], [0], 0
    for t, h, w in _grids(grid_thw):
        gh, gw = int(h) // m, int(w) // m
        index = np.arange(int(t) * gh * gw, dtype=np.int64).reshape(int(t), gh, gw)
        pad_h, pad_w = vw - gh % vw, vw - gw % vw
        nh, nw = (gh + pad_h) // vw, (gw + pad_w) // vw
        padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
        padded = padded.reshape(int(t), nh, vw, nw, vw).transpose(0, 1, 3, 2, 4).reshape(int(t), nh * nw, vw * vw)
        seqlens = (padded != -100).sum(-1).reshape(-1)
        flat = padded.reshape(-1)
        idx_out.append(flat[flat != -100] + offset)
        cu.extend((np.cumsum(seqlens) * m * m + cu[-1]).tolist())
        offset += int(t) * gh * gw
    cu_arr = np.asarray(cu, np.int64)
    keep = np.concatenate([[True], cu_arr[1:] != cu_arr[:-1]])
    return np.concatenate(idx_out), cu_arr[keep].astype(np.int32)


def segments_from_cu_seqlens(cu_seqlens: Any, total: int) -> np.ndarray:
    """Segment id ``(total,)`` int32 per row from cumulative boundaries (duplicate entries are harmless).

    Ids are consecutive from 0; rows at or past the last boundary (if any) form one extra trailing segment.
    """
    cu = np.unique(_np(cu_seqlens).astype(np.int64).reshape(-1))
    return np.searchsorted(cu[1:], np.arange(total), side="right").astype(np.int32)
