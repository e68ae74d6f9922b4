"""The shared train step: loss and gradients against a direct computation, exact micro-batch accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from grlhf.models.qwen_vl import from_pretrained
from grlhf.models.qwen_vl.inputs import ModelInputs
from grlhf.trainer.step import (LossConfig, TrainBatch, accumulate_and_update, compute_logprobs, loss_sums,
                                micro_grads, response_positions)
from tests.models.qwen_vl import tiny

AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.save(tiny.hf_model("qwen2_vl", scale=1.0), tmp_path_factory.mktemp("step"))


def _text_inputs(rows: int = 3, length: int = 24, seed: int = 0) -> dict:
    """Right-padded text rows of different lengths (row-splittable: no shared vision inputs)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(20, 100, (rows, length))
    mask = np.zeros((rows, length), np.int64)
    for row in range(rows):
        mask[row, : length - 3 * row] = 1
    return dict(input_ids=np.where(mask > 0, ids, tiny.PAD), attention_mask=mask)


def _batch(model, case: str, seed: int = 0, old_noise: float = 0.3) -> TrainBatch:
    inputs = model.prepare(**(_text_inputs() if case == "text_rows" else tiny.make_inputs(case)))
    rng = np.random.default_rng(seed)
    rows, length = inputs.input_ids.shape
    mask = np.zeros((rows, length - 1), np.float32)
    for row in range(rows):  # a response of a few tokens at the end of each row, one row empty of them
        start = rng.integers(length // 2, length - 2)
        mask[row, start:] = 1.0 if row != rows - 1 or rows == 1 else 0.0
    mask *= np.asarray(inputs.attention_mask[:, 1:], np.float32)
    current = np.asarray(compute_logprobs(model, inputs, 0.7))
    old = current + rng.normal(0, old_noise, current.shape).astype(np.float32)
    ref = current + rng.normal(0, old_noise, current.shape).astype(np.float32)
    adv = rng.normal(0, 1, rows).astype(np.float32)
    return TrainBatch(inputs, mask, adv, old * mask, ref * mask)


def _direct_loss(model, batch: TrainBatch, cfg: LossConfig):
    """PPO-clip + k3 KL - entropy bonus, token-mean, written out from the formulas (verl's)."""
    logits = model.forward(*batch.inputs)[:, :-1] / cfg.temperature
    targets = jnp.asarray(batch.inputs.input_ids)[:, 1:]
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    mask = jnp.asarray(batch.loss_mask)
    adv = jnp.asarray(batch.advantages)[:, None]
    ratio = jnp.exp(jnp.clip(logp - batch.old_logprobs, -20, 20))
    pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high))
    pg = jnp.where(adv < 0, jnp.minimum(pg, -adv * cfg.dual_clip), pg)
    d = jnp.clip(batch.ref_logprobs - logp, -20, 20)
    kl = jnp.clip(jnp.exp(d) - d - 1, -10, 10)
    per_token = pg + cfg.kl_coef * kl - cfg.entropy_coef * ent
    return jnp.sum(per_token * mask) / jnp.sum(mask)


@pytest.mark.parametrize("case", ["one_image", "left_padded"])
def test_loss_and_gradients_equal_a_direct_computation(model_dir, case):
    model = from_pretrained(model_dir)
    cfg = LossConfig(kind="ppo", temperature=0.7, kl_coef=0.05, kl_type="low_var_kl", entropy_coef=0.01)
    batch = _batch(model, case)
    grads, denom, sums = micro_grads(model, batch, cfg)
    expected_loss, expected_grads = nnx.value_and_grad(lambda m: _direct_loss(m, batch, cfg))(model)
    np.testing.assert_allclose(float(sums["loss"]) / float(denom), float(expected_loss), rtol=1e-5, atol=1e-6)
    ours = jax.tree.leaves(jax.tree.map(lambda g: g / denom, grads))
    theirs = jax.tree.leaves(expected_grads)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def _rows(batch: TrainBatch, rows: slice) -> TrainBatch:
    inputs = batch.inputs
    assert inputs.vision is None  # text rows split freely; image rows carry their own patches
    part = ModelInputs(inputs.input_ids[rows], inputs.attention_mask[rows], inputs.position_ids[:, rows], None)
    return TrainBatch(part, batch.loss_mask[rows], batch.advantages[rows], batch.old_logprobs[rows],
                      batch.ref_logprobs[rows])


def _params_after_update(model_dir, batches, cfg):
    model = from_pretrained(model_dir)
    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    result = accumulate_and_update(model, optimizer, batches, cfg)
    assert result.applied
    return jax.tree.leaves(nnx.state(model, nnx.Param)), result.metrics


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("kind", ["ppo", "sft"])
def test_micro_batches_accumulate_exactly(model_dir, agg, kind):
    cfg = LossConfig(kind=kind, temperature=0.7, agg=agg, kl_coef=0.1, entropy_coef=0.01, agg_scale=8.0)
    whole = _batch(from_pretrained(model_dir), "text_rows")
    rows = whole.inputs.input_ids.shape[0]
    single, single_metrics = _params_after_update(model_dir, [whole], cfg)
    split, split_metrics = _params_after_update(model_dir, [_rows(whole, slice(i, i + 1)) for i in range(rows)], cfg)
    for a, b in zip(single, split):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for key in ("loss", "grad_norm", "entropy"):
        np.testing.assert_allclose(split_metrics[key], single_metrics[key], rtol=1e-5, atol=1e-7)


def test_non_finite_loss_skips_the_update(model_dir):
    model = from_pretrained(model_dir)
    batch = _batch(model, "one_image")
    batch = batch._replace(advantages=np.full_like(batch.advantages, np.nan))
    before = [np.asarray(x).copy() for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    result = accumulate_and_update(model, optimizer, [batch], LossConfig(kind="ppo"))
    assert not result.applied and not np.isfinite(result.metrics["loss"])
    for a, b in zip(before, jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_sft_loss_is_the_token_mean_nll(model_dir):
    model = from_pretrained(model_dir)
    batch = _batch(model, "one_image")
    _, denom, sums = micro_grads(model, batch, LossConfig(kind="sft"))
    logp = np.asarray(compute_logprobs(model, batch.inputs, 1.0))
    expected = -(logp * batch.loss_mask).sum() / batch.loss_mask.sum()
    np.testing.assert_allclose(float(sums["loss"]) / float(denom), expected, rtol=1e-5)


def _pair_batch(model, rows: slice = slice(None)) -> TrainBatch:
    """Text rows as reward-model pairs: rows ``[c_1, c_2, r_1, r_2]`` of ``_text_inputs(4)``, sliced pairwise."""
    inputs = model.prepare(**_text_inputs(rows=4, seed=1))
    pick = np.r_[np.arange(2)[rows], 2 + np.arange(2)[rows]]
    part = ModelInputs(inputs.input_ids[pick], inputs.attention_mask[pick], inputs.position_ids[:, pick], None)
    unused = np.zeros(len(pick), np.float32)
    return TrainBatch(part, unused, unused, unused, unused)


def _reward_model(model_dir):
    from grlhf.models.qwen_vl.reward_model import QwenVLRewardModel

    return QwenVLRewardModel(from_pretrained(model_dir), rngs=nnx.Rngs(0), init_std=0.5)


def test_bradley_terry_loss_and_gradients_equal_a_direct_computation(model_dir):
    model = _reward_model(model_dir)
    batch = _pair_batch(model)
    grads, denom, sums = micro_grads(model, batch, LossConfig(kind="bt"))

    def direct(m):
        scores = m(batch.inputs)
        return jnp.mean(-jax.nn.log_sigmoid(scores[:2] - scores[2:]))

    expected_loss, expected_grads = nnx.value_and_grad(direct)(model)
    assert float(denom) == 2.0 and float(sums["tokens"]) == 2.0
    np.testing.assert_allclose(float(sums["loss"]) / float(denom), float(expected_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda g: g / denom, grads)), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)  # float32, O(1) entries
    assert float(np.abs(np.asarray(grads.score.kernel[...])).max()) > 0  # the head learns


def test_bradley_terry_pairs_accumulate_exactly(model_dir):
    def update(batches):
        model = _reward_model(model_dir)
        optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
        result = accumulate_and_update(model, optimizer, batches, LossConfig(kind="bt"))
        return jax.tree.leaves(nnx.state(model, nnx.Param)), result.metrics

    whole_model = _reward_model(model_dir)
    single, single_metrics = update([_pair_batch(whole_model)])
    split, split_metrics = update([_pair_batch(whole_model, slice(0, 1)), _pair_batch(whole_model, slice(1, 2))])
    for a, b in zip(single, split):  # after an SGD step of lr 1: float32 sums in another order
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    for key in ("loss", "grad_norm", "accuracy", "margin"):
        np.testing.assert_allclose(split_metrics[key], single_metrics[key], rtol=1e-5, atol=1e-7)


# ---- response windows and the fused head ----------------------------------------------------------------


def test_response_positions_cover_every_masked_column_once():
    mask = np.zeros((4, 20), np.float32)
    mask[0, 3:9] = 1  # 6 tokens
    mask[1, 15:20] = 1  # at the very end: the window moves left to fit
    mask[2, 10:11] = 1
    positions = response_positions(mask, width=8)
    assert positions.shape == (4, 8) and positions.dtype == np.int32
    assert positions[0, 0] == 3 and positions[1, -1] == 19 and positions[3, 0] == 0  # an empty row: columns 0..
    for row in range(4):
        assert len(set(positions[row])) == 8 and positions[row].min() >= 0 and positions[row].max() < 20
        np.testing.assert_array_equal(np.take_along_axis(mask[row], positions[row], 0).sum(), mask[row].sum())
    assert response_positions(mask).shape == (4, 16)  # the longest (6) rounded up to a power of two, at least 16
    assert response_positions(np.ones((2, 10))).shape == (2, 10)  # never wider than the row
    with pytest.raises(ValueError, match="cannot hold a response of 6"):
        response_positions(mask, width=4)


def _with_windows(batch: TrainBatch) -> TrainBatch:
    return batch._replace(positions=jnp.asarray(response_positions(np.asarray(batch.loss_mask))))


@pytest.mark.parametrize("head_chunk", [0, 100, 8192])  # the window's logits at once; chunks with a remainder; one
@pytest.mark.parametrize("kind,agg", [("ppo", "token-mean"), ("ppo", "seq-mean-token-sum-norm"),
                                      ("sft", "seq-mean-token-mean")])
def test_response_windows_give_the_whole_rows_loss_and_gradients(model_dir, head_chunk, kind, agg):
    """Logits at the response positions only (fused head or not): the loss, its metrics and gradients equal
    the whole rows' computation, float32 (rtol 1e-5)."""
    model = from_pretrained(model_dir)
    batch = _batch(model, "text_rows")
    cfg = LossConfig(kind=kind, temperature=0.7, agg=agg, kl_coef=0.1, entropy_coef=0.01, agg_scale=8.0,
                     head_chunk=head_chunk)
    g_full, d_full, s_full = micro_grads(model, batch, cfg)
    g_win, d_win, s_win = micro_grads(model, _with_windows(batch), cfg)
    np.testing.assert_allclose(float(d_win), float(d_full), rtol=1e-6)
    for key in s_full:
        np.testing.assert_allclose(float(s_win[key]), float(s_full[key]), rtol=1e-5, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(g_win), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_windowed_logprobs_fill_the_response_columns(model_dir):
    model = from_pretrained(model_dir)
    batch = _with_windows(_batch(model, "one_image"))
    full = np.asarray(compute_logprobs(model, batch.inputs, 0.7))
    windowed = np.asarray(compute_logprobs(model, batch.inputs, 0.7, batch.positions, 100))
    mask = np.asarray(batch.loss_mask) > 0
    np.testing.assert_allclose(windowed[mask], full[mask], rtol=1e-5, atol=1e-6)
    outside = np.ones_like(mask)
    np.put_along_axis(outside, np.asarray(batch.positions), False, axis=1)
    assert np.all(windowed[outside] == 0.0)


def test_the_fused_step_holds_no_whole_row_logits(model_dir):
    """XLA's temporaries of the compiled gradient step fall by more than the float32 logits of the rows when
    only a 32-token response window's logits exist, a vocabulary chunk at a time (8 rows x 256 tokens,
    V=1024: 8 MiB of logits)."""
    model = from_pretrained(model_dir)
    rows, length, window = 8, 256, 32
    inputs = model.prepare(input_ids=np.random.default_rng(0).integers(20, 100, (rows, length)),
                           attention_mask=np.ones((rows, length), np.int64))
    mask = np.zeros((rows, length - 1), np.float32)
    mask[:, -window:] = 1.0
    batch = TrainBatch(inputs, mask)
    graphdef, state = nnx.split(model)

    def temporaries(batch, cfg):
        def grads(state, batch):
            return jax.grad(lambda s: loss_sums(nnx.merge(graphdef, s), batch, cfg)[0])(state)
        return jax.jit(grads).lower(state, batch).compile().memory_analysis().temp_size_in_bytes

    full = temporaries(batch, LossConfig(kind="sft"))
    fused = temporaries(_with_windows(batch), LossConfig(kind="sft", head_chunk=256))
    logits = rows * (length - 1) * model.config.text.vocab_size * 4
    assert full - fused > logits, (full, fused, logits)
